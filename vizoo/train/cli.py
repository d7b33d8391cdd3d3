"""The Lightning CLI behind ``vizoo fit|validate|test|predict``.

``vizoo fit -c configs/demo/digits.yaml`` trains; ``--ckpt_path last`` (or a path) resumes. The data module's
class count and names are linked into the model, so configs state them once. Defaults every run gets:
a RichProgressBar, ModelCheckpoint (best on ``val/acc`` plus ``last.ckpt``), a LearningRateMonitor, CSV +
TensorBoard loggers under ``logs/<run_name>/version_N``, and for ``predict`` a writer of ``predictions.csv``.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from vizoo.data import ImageDataModule
from vizoo.train.callbacks import PredictionWriter
from vizoo.train.module import ImageClassifier


class VizooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.add_argument("--run_name", default="run", help="folder name under logs/ for this run")

    def _instantiate_trainer(self, config, callbacks):
        if config.get("logger") in (True, None):  # not set by the user: CSV + TensorBoard under logs/<run_name>
            root = self.config[self.subcommand] if self.subcommand else self.config
            csv = CSVLogger("logs", name=root["run_name"])
            tensorboard = TensorBoardLogger("logs", name=root["run_name"], version=csv.version, default_hp_metric=False)
            config = dict(config, logger=[csv, tensorboard])
        return super()._instantiate_trainer(config, callbacks)


def trainer_defaults() -> dict:
    return {
        "callbacks": [
            RichProgressBar(),
            ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, filename="best-{epoch}-{step}"),
            LearningRateMonitor(logging_interval="step"),
            PredictionWriter("predictions.csv"),
        ],
        "log_every_n_steps": 10,
    }


def cli_main(args: list[str] | None = None, run: bool = True) -> VizooCLI:
    return VizooCLI(
        ImageClassifier,
        ImageDataModule,
        args=args,
        run=run,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True},
    )

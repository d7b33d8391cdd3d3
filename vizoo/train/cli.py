"""The Lightning CLI behind ``vizoo fit|validate|test|predict``.

``vizoo fit -c configs/demo/digits.yaml`` trains; ``--ckpt_path last`` (or a path) resumes. The data module's
class count and names are linked into the model, so configs state them once. Defaults every run gets:
a RichProgressBar, ModelCheckpoint (best on ``val/acc`` plus ``last.ckpt``), a LearningRateMonitor, CSV +
TensorBoard loggers under ``logs/<run_name>/version_N``, and for ``predict`` a writer of ``predictions.csv``.
A config whose ``model`` has a ``class_path`` (configs/scanpath/) names its own LightningModule and data module;
it gets the progress bar, learning-rate monitor and loggers, and its module's ``configure_callbacks``.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from vizoo.data import ImageDataModule
from vizoo.train.callbacks import PredictionWriter
from vizoo.train.module import ImageClassifier


class VizooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        if not self.subclass_mode_model:  # ImageClassifier/ImageDataModule: class count and names flow from the data
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


def names_model_class(args: list[str] | None) -> bool:
    """Whether the command line or one of its ``-c``/``--config`` files gives ``model.class_path`` (e.g.
    configs/scanpath/): then any LightningModule/LightningDataModule pair named by class_path is used, and the
    module brings its own checkpoint callbacks (``configure_callbacks``); otherwise ImageClassifier/ImageDataModule."""
    import sys

    import yaml

    args = list(sys.argv[1:] if args is None else args)
    for i, arg in enumerate(args):
        if arg.startswith(("--model.class_path", "--model=")) or arg == "--model":
            return True
        path = None
        if arg in ("-c", "--config") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path and Path(path).is_file():
            config = yaml.safe_load(Path(path).read_text())
            if isinstance(config, dict) and isinstance(config.get("model"), dict) and "class_path" in config["model"]:
                return True
    return False


def cli_main(args: list[str] | None = None, run: bool = True) -> VizooCLI:
    if names_model_class(args):
        return VizooCLI(
            None, None, subclass_mode_model=True, subclass_mode_data=True, args=args, run=run,
            trainer_defaults={"callbacks": [RichProgressBar(), LearningRateMonitor()], "log_every_n_steps": 10},
            save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": True},
        )
    return VizooCLI(
        ImageClassifier,
        ImageDataModule,
        args=args,
        run=run,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True},
    )

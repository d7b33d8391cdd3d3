"""The Lightning CLI behind ``vizoo fit|validate|test|predict``.

``vizoo fit -c configs/demo/digits.yaml`` trains; ``--ckpt_path last`` resumes the newest ``last.ckpt`` of the
same ``run_name`` (``logs/<run_name>/version_*/checkpoints/last.ckpt``), a path resumes that file. A resumed run
continues exactly: step, epoch, optimizer, LR schedule and the random number generators (saved by
:class:`~vizoo.train.callbacks.RngState`). Its logs go to a new ``version_N`` folder, Lightning's convention, so
nothing of the interrupted run is overwritten.

The model's hyperparameters come from the checkpoint. A model option given on the command line or in a config
that differs from the checkpoint's is refused with a message naming it, unless ``--allow_hparam_changes true``
says the new value is meant (it then wins over the checkpoint's; the weights still load strictly).

The data module's class count and names are linked into the model, so configs state them once. Defaults every run
gets: a RichProgressBar, ModelCheckpoint (best on ``val/acc``), ``last.ckpt`` after every epoch (atomic), a
LearningRateMonitor, CSV +
TensorBoard loggers under ``logs/<run_name>/version_N`` (not for ``predict``, which writes only
``--predictions_file``), and the RNG state in every checkpoint. A run that fails before it wrote a checkpoint or a
metric leaves no ``version_N`` folder behind.

A config whose ``model`` has a ``class_path`` (configs/scanpath/) names its own LightningModule and data module;
it gets the progress bar, learning-rate monitor, loggers, ``last.ckpt`` with the RNG state, and its module's
``configure_callbacks``.

Bad input (unreadable YAML, a missing or corrupt checkpoint, a GPU accelerator without a GPU, an output file that
exists) is a ``ValueError`` with one line that says what was wrong; ``vizoo`` prints it without a traceback.
"""
from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from vizoo.data import ImageDataModule
from vizoo.train.callbacks import LastCheckpoint, PredictionWriter, RngState
from vizoo.train.module import ImageClassifier

LOG_ROOT = "logs"
# model options the data module sets (linked), never compared against the checkpoint
LINKED_MODEL_KEYS = ("num_classes", "class_names")
# what a run writes before it has produced anything worth keeping
SCAFFOLD_FILES = ("config.yaml", "hparams.yaml")

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class _NoAdverts(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def find_last_checkpoint(run_name: str, log_root: str | Path = LOG_ROOT) -> Path:
    """The newest ``last.ckpt`` under ``<log_root>/<run_name>/version_*/checkpoints/``.

    Raises:
        ValueError: there is none (naming the folder that was searched).
    """
    found = sorted(Path(log_root, run_name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(
            f"--ckpt_path last: no last.ckpt under {Path(log_root, run_name)}/version_*/checkpoints/ "
            f"(run_name {run_name!r}); start a new run without --ckpt_path, or give a checkpoint file"
        )
    return found[-1]


def read_checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The ``hyper_parameters`` of a Lightning checkpoint, with a one-line error for a missing or damaged file."""
    from vizoo.hub.checkpoints import load_file

    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint of `vizoo fit` (no state_dict)")
    return dict(ckpt.get("hyper_parameters") or {})


def hparam_conflicts(given: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``model.KEY: given X, checkpoint Y`` for every model option set explicitly that differs from the checkpoint."""
    out = []
    for key, value in sorted(given.items()):
        if key in LINKED_MODEL_KEYS or key not in saved:
            continue
        if _plain(value) != _plain(saved[key]):
            out.append(f"model.{key}: given {_plain(value)!r}, checkpoint {_plain(saved[key])!r}")
    return out


def _plain(value: Any) -> Any:
    """Namespaces, tuples and dicts as plain comparable Python values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class VizooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        if not self.subclass_mode_model:  # ImageClassifier/ImageDataModule: class count and names flow from the data
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.add_argument("--run_name", default="run", help="folder name under logs/ for this run")
        parser.add_argument(
            "--allow_hparam_changes", type=bool, default=False,
            help="with --ckpt_path: let model options that differ from the checkpoint's take effect "
                 "(default: refuse them)",
        )
        parser.add_argument("--predictions_file", default="predictions.csv", help="predict: the CSV to write")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="predict: replace an existing --predictions_file")

    def parse_arguments(self, parser, args) -> None:
        self._args = list(sys.argv[1:] if args is None else args)
        try:
            self.config = parser.parse_args(self._args)
        except ArgumentError as err:
            raise ValueError(_bad_config_file(self._args) or " ".join(str(err).split())) from None

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``, check the file, refuse silent hyperparameter changes, then let Lightning apply the
        checkpoint's hyperparameters (only to options the user did not set, when changes are allowed)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            ckpt_path = str(find_last_checkpoint(config["run_name"]))
            config["ckpt_path"] = ckpt_path
            print(f"resuming from {ckpt_path}", file=sys.stderr)
        elif ckpt_path in ("best", "hpc", "registry"):
            return  # Lightning's own names (of the current trainer's callbacks)
        saved = read_checkpoint_hparams(ckpt_path)
        given = self._explicit_model_options(subcommand)
        conflicts = hparam_conflicts(given, saved)
        if conflicts and not config.get("allow_hparam_changes"):
            raise ValueError(
                f"{ckpt_path} was trained with other model options than this command gives: "
                + "; ".join(conflicts)
                + ". Drop them to continue with the checkpoint's, or pass --allow_hparam_changes true to apply them"
            )
        super()._parse_ckpt_path()  # the checkpoint's hyperparameters fill the model options
        if conflicts:  # allowed: the explicitly given values win
            for key, value in given.items():
                if key not in LINKED_MODEL_KEYS:
                    self.config[subcommand]["model"][key] = value

    def _explicit_model_options(self, subcommand: str) -> dict[str, Any]:
        """Model options set by a config file or the command line (defaults left out)."""
        explicit = self.parser.parse_args(self._args, defaults=False)
        model = explicit.get(subcommand, {}).get("model") or {}
        return _plain(model) if model else {}

    def _instantiate_trainer(self, config, callbacks):
        root = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "predict":
            config = dict(config, logger=False)
            self.save_config_callback = None  # nothing to log beside the predictions file
            _check_output_file(root["predictions_file"], root["overwrite"])
            callbacks = list(callbacks) + [PredictionWriter(root["predictions_file"])]
        elif config.get("logger") in (True, None):  # not set by the user: CSV + TensorBoard under logs/<run_name>
            csv = CSVLogger(LOG_ROOT, name=root["run_name"])
            tensorboard = TensorBoardLogger(LOG_ROOT, name=root["run_name"], version=csv.version,
                                            default_hp_metric=False)
            config = dict(config, logger=[csv, tensorboard])
        if config.get("enable_progress_bar") is False:  # the default progress bar would contradict it
            defaults = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, RichProgressBar)]
            self.trainer_defaults = dict(self.trainer_defaults, callbacks=defaults)
        try:
            return super()._instantiate_trainer(config, callbacks)
        except MisconfigurationException as err:
            raise ValueError(f"trainer settings: {err}") from None

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.loggers:
                remove_empty_run(self.trainer.log_dir)
            raise


def _bad_config_file(args: list[str]) -> str | None:
    """A one-line message naming the ``-c`` file that is not valid YAML, if one is not (jsonargparse names none)."""
    import yaml

    for flag, value in zip(args, args[1:] + [""]):
        if flag.startswith("--config="):
            value = flag.split("=", 1)[1]
        elif flag not in ("-c", "--config"):
            continue
        try:
            yaml.safe_load(Path(value).read_text())
        except OSError as err:
            return f"config file {value}: {err.strerror}"
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            return f"config file {value} is not valid YAML: {problem}{where}"
    return None


def _check_output_file(path: str | Path, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --predictions_file NEW.csv, or --overwrite true to replace it")
    if path.is_dir():
        raise ValueError(f"--predictions_file {path} is a folder; give a .csv file path")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not _writable(parent):
        raise ValueError(f"cannot write {path}: {parent} is not writable")


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def remove_empty_run(log_dir: str | Path | None) -> bool:
    """Delete a run folder that holds nothing but what every run writes at its start (config, hparams, empty
    TensorBoard file, empty checkpoints folder). Returns whether it was removed."""
    if log_dir is None or not Path(log_dir).is_dir():
        return False
    folder = Path(log_dir)
    for item in folder.rglob("*"):
        if item.is_dir():
            continue
        scaffold = item.parent == folder and (item.name in SCAFFOLD_FILES or _empty_events(item))
        if not scaffold:
            return False
    shutil.rmtree(folder)
    return True


def _empty_events(path: Path) -> bool:
    """A TensorBoard events file with only its header record (a run that logged nothing)."""
    return path.name.startswith("events.out.tfevents.") and path.stat().st_size <= 128


def trainer_defaults(own_model: bool = False) -> dict:
    """The callbacks every run gets; a module named by ``class_path`` (``own_model``) brings its own
    ModelCheckpoint through ``configure_callbacks``."""
    best = [] if own_model else [ModelCheckpoint(monitor="val/acc", mode="max", filename="best-{epoch}-{step}")]
    return {
        "callbacks": [RichProgressBar(), *best, LastCheckpoint(), LearningRateMonitor(logging_interval="step"),
                      RngState()],
        "log_every_n_steps": 10,
    }


def names_model_class(args: list[str] | None) -> bool:
    """Whether the command line or one of its ``-c``/``--config`` files gives ``model.class_path`` (e.g.
    configs/scanpath/): then any LightningModule/LightningDataModule pair named by class_path is used; otherwise
    ImageClassifier/ImageDataModule. A config that cannot be read counts as not naming one (the parser reports it)."""
    import yaml

    args = list(sys.argv[1:] if args is None else args)
    for flag, value in zip(args, args[1:] + [""]):
        if flag.startswith(("--model.class_path", "--model=")) or flag == "--model":
            return True
        if flag.startswith("--config="):
            value = flag.split("=", 1)[1]
        elif flag not in ("-c", "--config"):
            continue
        try:
            config = yaml.safe_load(Path(value).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict) and isinstance(config.get("model"), dict) and "class_path" in config["model"]:
            return True
    return False


def cli_main(args: list[str] | None = None, run: bool = True) -> VizooCLI:
    own_model = names_model_class(args)
    classes = dict(model_class=None, datamodule_class=None, subclass_mode_model=True, subclass_mode_data=True) \
        if own_model else dict(model_class=ImageClassifier, datamodule_class=ImageDataModule)
    return VizooCLI(
        **classes,
        args=args,
        run=run,
        trainer_defaults=trainer_defaults(own_model),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True, "exit_on_error": False,
                       **{name: {"exit_on_error": False} for name in ("fit", "validate", "test", "predict")}},
    )

"""``vizoo probe``: evaluate a frozen backbone with many probing heads at once.

Examples::

    vizoo probe                                   # the main job: the shipped demo backbone (configs/probe/demo.yaml)
    vizoo probe -c configs/probe/ep.yaml --model vit_base_patch16_224.mae --root /data/x
    vizoo probe --model resnet50.a1_in1k --dataset folder --root /data/pets \\
        --heads '[linear, "ep:num_queries=16"]' --train.lrs '[1e-3, 3e-3, 1e-2]' --train.epochs 30 \\
        --layers '[-1, -2]' --norm true
    vizoo probe --print_config                    # the demo's settings as YAML, a starting point for a config
    vizoo probe --list_heads

Settings are the fields of :class:`~vizoo.probe.pipeline.ProbeJob` (optimisation under ``train:``, the fields of
:class:`~vizoo.probe.engine.TrainConfig`), parsed by jsonargparse as LightningCLI parses training configs:
``-c/--config`` YAML files (several stack, later ones win), then dotted command-line overrides
(``--train.epochs 5``), ``--print_config`` to see the result. Without ``--model`` and ``-c`` the main job's
config (``vizoo/assets/probe_demo.yaml``, linked as ``configs/probe/demo.yaml``) is loaded first, so
``vizoo probe`` runs the main job and ``vizoo probe --train.device cuda --amp true`` runs it on a GPU.

Outputs: a rich table on the terminal, ``<output_dir>/results.json`` and ``<output_dir>/results.png``. The output
folder is checked before any work: it must be writable, and results that another run (other settings) wrote there
are never replaced unless ``--overwrite true`` is given. When the folder comes from a config or the defaults
rather than ``--output_dir``, a run with other settings goes to ``<folder>-<hash of its settings>`` instead, so a
variant of the demo never replaces the demo's results.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from vizoo.probe.demo import DEMO_YAML

# settings that do not change the results: two runs that differ only in these are the same run
RUN_ONLY = ("output_dir", "overwrite", "progress", "cache_dir", "num_workers", "extract_batch_size")
_NOT_SETTINGS = ("config", "list_heads", "print_config", "__path__")


def build_parser():
    """The jsonargparse parser of ``vizoo probe``: the fields of ProbeJob plus the run options."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from vizoo.probe.pipeline import ProbeJob

    p = ArgumentParser(
        prog="vizoo probe",
        description="Probe a frozen timm/vizoo backbone with linear and attentive heads (many at once). "
        "Without --model or -c, runs the main job on the shipped demo backbone (other options apply to it).",
        exit_on_error=False,
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="YAML file of settings (see configs/probe/)")
    p.add_argument("--list_heads", action="store_true", help="list the probing heads and their options")
    p.add_class_arguments(ProbeJob, fail_untyped=True)
    p.add_argument("--output_dir", type=Optional[str], default=None, help="where results.json and results.png go")
    p.add_argument("--overwrite", type=bool, default=False,
                   help="replace results another run wrote in --output_dir (default: refuse)")
    return p


def resolve_settings(argv: list[str]) -> tuple[dict[str, Any], bool]:
    """The settings (a plain dict, ``train`` nested) and whether ``--output_dir`` was given on the command line.

    Without ``--model`` and ``-c`` the main job's config is loaded first.
    """
    argv = list(argv)
    named = {a.split("=")[0] for a in argv}
    if not named & {"-c", "--config", "--model"}:
        argv = ["--config", str(DEMO_YAML), *argv]
    cfg = build_parser().parse_args(argv)
    settings = {k: v for k, v in cfg.as_dict().items() if k not in _NOT_SETTINGS}
    return json.loads(json.dumps(settings)), "--output_dir" in named  # plain JSON types (tuples as lists)


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings a YAML config gives (unknown keys, wrong types: ValueError naming them)."""
    settings, _ = resolve_settings(["--config", str(path)])
    return settings


def job_from_settings(settings: dict[str, Any]):
    """A :class:`ProbeJob` from resolved settings."""
    from vizoo.probe.demo import expand_model_name
    from vizoo.probe.engine import TrainConfig
    from vizoo.probe.pipeline import ProbeJob

    names = {f.name for f in fields(ProbeJob)}
    values = {k: v for k, v in settings.items() if k in names}
    values["model"] = expand_model_name(values["model"])
    values["train"] = TrainConfig(**values["train"])
    return ProbeJob(**values)


def _result_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RUN_ONLY}


def _settings_of(results: Path) -> dict[str, Any] | None:
    """The settings recorded in a results.json (None if it cannot be read)."""
    import json

    try:
        recorded = json.loads(results.read_text())["meta"]["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _result_settings(recorded) if isinstance(recorded, dict) else None


def choose_output_dir(settings: dict[str, Any], explicit: bool) -> Path:
    """Where this run writes its results, checked before any work (see the module docstring).

    Raises:
        ValueError: the folder is a file or not writable, or (``explicit``) it holds another run's results and
            ``overwrite`` is not set.
    """
    import hashlib
    import json

    out = Path(settings["output_dir"] or _default_output_dir(settings))
    mine = json.loads(json.dumps(_result_settings(settings), default=str))
    recorded = _settings_of(out / "results.json") if (out / "results.json").exists() else None
    if (out / "results.json").exists() and recorded != mine and not settings.get("overwrite"):
        if explicit:
            differ = sorted(k for k in set(mine) | set(recorded or {}) if (recorded or {}).get(k) != mine.get(k))
            raise ValueError(
                f"{out / 'results.json'} holds the results of another run (settings that differ: "
                f"{', '.join(differ[:8]) or 'unreadable file'}); pass --overwrite to replace them, or another "
                "--output-dir"
            )
        digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:8]
        out = out.with_name(f"{out.name}-{digest}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file; give a folder")
    _check_writable(out)
    return out


def _check_writable(folder: Path) -> None:
    """Create ``folder`` (removed again if it was new) and a file in it: the only sure test, root included."""
    import tempfile

    created = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"cannot write results to {folder} ({err.strerror}); give another --output-dir") from None
    finally:
        for path in created:  # deepest first
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _accepted() -> list[str]:
    from vizoo.probe.engine import TrainConfig
    from vizoo.probe.pipeline import ProbeJob

    names = [f.name for f in fields(ProbeJob) if f.name != "train"]
    return sorted(names + ["output_dir", "overwrite"]) + [f"train.{f.name}" for f in fields(TrainConfig)]


def _list_heads() -> None:
    from rich.console import Console
    from rich.table import Table

    from vizoo.heads import get_head_class, head_options, list_heads

    table = Table(title="probing heads (vizoo probe --heads NAME[:key=value,...])")
    table.add_column("name")
    table.add_column("prefix tokens")
    table.add_column("options (defaults)")
    for name in list_heads():
        opts = ", ".join(f"{k}={v!r}" for k, v in head_options(name).items())
        table.add_row(name, str(get_head_class(name).uses_prefix), opts)
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point of ``vizoo probe`` (``argv`` without the subcommand name). Returns the results dict."""
    from jsonargparse import ArgumentError

    from vizoo.probe.report import print_table, write_json, write_plot

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list_heads" in argv:
        _list_heads()
        return None
    try:
        settings, explicit = resolve_settings(argv)
        job = job_from_settings(settings)
        out = choose_output_dir(settings, explicit=explicit)
        from vizoo.probe.pipeline import run_probe

        report = run_probe(job)
    except (ValueError, FileNotFoundError, ArgumentError) as err:
        message = " ".join(str(err).split())
        if "is not accepted" in message:
            message += f"; accepted settings: {', '.join(_accepted())}"
        print(f"vizoo probe: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    import os

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return report  # DDP workers: rank 0 reports
    report["meta"]["settings"] = settings
    print_table(report)
    json_path = write_json(report, out / "results.json")
    png_path = write_plot(report, out / "results.png")
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else " (matplotlib missing: no plot)"))
    return report


def _default_output_dir(settings: dict[str, Any]) -> Path:
    import re

    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(settings["model"])).name)
    return Path("vizoo_probe") / f"{model}-{settings['dataset']}-{settings['protocol']}"


if __name__ == "__main__":
    main()

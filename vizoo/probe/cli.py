"""``vizoo probe``: evaluate a frozen backbone with many probing heads at once.

Examples::

    vizoo probe                                   # the main job: the shipped demo backbone, see demo.py
    vizoo probe -c configs/probe/ep.yaml --model vit_base_patch16_224.mae --dataset folder --root /data/x
    vizoo probe --model resnet50.a1_in1k --dataset folder --root /data/pets \\
        --heads linear ep:num_queries=16 \\
        --lrs 1e-3 3e-3 1e-2 --epochs 30 --layers -1 -2 --norm
    vizoo probe --list-heads

Settings come from, in increasing priority: built-in defaults, the YAML file given with ``-c`` (keys are the
long option names with underscores), and explicit command-line options. Without ``--model`` and ``-c`` the
main job's settings (``vizoo.probe.demo.DEMO_CONFIG``, mirrored in ``configs/probe/demo.yaml``) take the place
of the defaults, so ``vizoo probe`` runs the main job and ``vizoo probe --device cuda --amp`` runs it on a GPU.

Outputs: a rich table on the terminal, ``<output_dir>/results.json`` and ``<output_dir>/results.png``. The output
folder is checked before any work: it must be writable, and results that another run (other settings) wrote there
are never replaced unless ``--overwrite`` is given. When the folder comes from a config or the defaults rather than
``--output-dir``, a run with other settings goes to ``<folder>-<hash of its settings>`` instead, so a variant of the
demo never replaces the demo's results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from vizoo.utils import ArgumentParser

DEFAULTS: dict[str, Any] = dict(
    model=None,
    model_kwargs={},
    pretrained=True,
    checkpoint=None,
    dataset="digits",
    root=None,
    dataset_kwargs={},
    image_size=None,
    heads=["linear", "ep"],
    head_kwargs={},
    lrs=[1e-3],
    epochs=30,
    batch_size=128,
    optimizer="adamw",
    weight_decay=0.0,
    warmup_epochs=0.0,
    scale_lr=False,
    seed=0,
    protocol="cached",
    layers=None,
    inputs=None,
    norm=False,
    k_shot=None,
    seeds=[0],
    output_dir=None,
    cache_dir=None,
    device=None,
    amp=False,
    extract_batch_size=256,
    num_workers=0,
    scale=[0.08, 1.0],
    hflip=0.5,
    devices=1,
    progress=True,
    overwrite=False,
)
# settings that do not change the results: two runs that differ only in these are the same run
RUN_ONLY = ("output_dir", "overwrite", "progress", "cache_dir", "num_workers", "extract_batch_size")


def _json_arg(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise argparse.ArgumentTypeError(f"not valid JSON/YAML ({problem}): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="vizoo probe",
        argument_default=argparse.SUPPRESS,
        description="Probe a frozen timm/vizoo backbone with linear and attentive heads (many at once). "
        "Without --model or -c, runs the main job on the shipped demo backbone (other options apply to it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", help="YAML file of settings (see configs/probe/)")
    p.add_argument("--list-heads", action="store_true", help="list the probing heads and their options")
    g = p.add_argument_group("backbone")
    g.add_argument("--model", help="timm model name (vizoo's, timm's, hf-hub:..., local-dir:...)")
    g.add_argument(
        "--model-kwargs", type=_json_arg, help="JSON dict for timm.create_model, e.g. '{\"img_size\": 32}'"
    )
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random weights")
    g.add_argument("--checkpoint", help="state-dict file to load into the backbone")
    g.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="blocks to probe, negative from the end (several: layer-wise mode); default: the last",
    )
    g.add_argument(
        "--inputs",
        nargs="+",
        help="DINOv2 multi-block inputs instead of --layers (cached protocol, linear heads): cls1 cls1+avg "
        "cls4 cls4+avg = class tokens of the last n blocks concatenated [+ last block's patch mean]",
    )
    g.add_argument(
        "--norm",
        action=argparse.BooleanOptionalAction,
        help="apply the final norm to the tokens (DINOv2 style) or not (MAE style, default)",
    )
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 backbone on CUDA")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help="digits | mnist5k | shapes | folder (with --root)")
    d.add_argument("--root", help="image folder with train/ and val/ (and optionally test/) sub-folders")
    d.add_argument("--dataset-kwargs", type=_json_arg, help="JSON dict of dataset options")
    d.add_argument("--image-size", type=int, help="input size (default: the model's)")
    d.add_argument("--k-shot", type=int, help="low-shot mode: k training images per class")
    d.add_argument("--seeds", type=int, nargs="+", help="low-shot seeds (default 0)")
    h = p.add_argument_group("heads and training")
    h.add_argument(
        "--heads",
        nargs="+",
        help="head names, optionally with options: ep:num_queries=8,d_out=2; 'all' = every registered head",
    )
    h.add_argument(
        "--head-kwargs", type=_json_arg, help='JSON dict name -> options, e.g. \'{"ep": {"num_queries": 8}}\''
    )
    h.add_argument("--lrs", type=float, nargs="+", help="learning rates to sweep (each head trained at each)")
    h.add_argument("--epochs", type=int)
    h.add_argument("--batch-size", type=int)
    h.add_argument("--optimizer", choices=["adamw", "lars", "sgd"])
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--warmup-epochs", type=float)
    h.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, help="lr = base lr * batch / 256")
    h.add_argument("--seed", type=int)
    h.add_argument(
        "--protocol",
        choices=["cached", "augmented"],
        help="cached: features extracted once (fast); augmented: RandomResizedCrop + backbone every step",
    )
    h.add_argument("--scale", type=float, nargs=2, help="RandomResizedCrop scale (augmented protocol)")
    h.add_argument("--hflip", type=float, help="flip probability (augmented protocol)")
    o = p.add_argument_group("run")
    o.add_argument("--output-dir", help="where results.json and results.png go")
    o.add_argument("--cache-dir", help="feature cache root (default ~/.cache/vizoo/features or $VIZOO_CACHE)")
    o.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    o.add_argument(
        "--devices",
        type=int,
        help="processes for the augmented protocol (several: DDP through Lightning; GPUs, or CPU processes "
        "with --device cpu)",
    )
    o.add_argument("--extract-batch-size", type=int)
    o.add_argument("--num-workers", type=int)
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--overwrite", action="store_true",
                   help="replace results another run wrote in --output-dir (default: refuse)")
    return p


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file; unknown keys are a ValueError listing the accepted ones."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a probe config must be a mapping of settings")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; accepted: {', '.join(sorted(DEFAULTS))}")
    return data


def parse_heads(items: list[Any], head_kwargs: dict[str, dict[str, Any]]):
    """Head specs from strings (``ep`` or ``ep:num_queries=8,d_out=2``), dicts or ``all``."""
    from vizoo.heads import list_heads
    from vizoo.probe.multiblock import head_class
    from vizoo.probe.trainer import HeadSpec

    specs = []
    for item in items:
        if isinstance(item, dict):
            name, kwargs, label = item.get("name"), dict(item.get("kwargs") or {}), item.get("label", "")
        elif isinstance(item, str) and item == "all":
            specs += [HeadSpec(n, dict(head_kwargs.get(n, {}))) for n in list_heads()]
            continue
        elif isinstance(item, str):
            name, _, opts = item.partition(":")
            kwargs, label = {}, ""
            for pair in filter(None, opts.split(",")):
                key, eq, value = pair.partition("=")
                if not eq:
                    raise ValueError(f"head option {pair!r} in {item!r} must look like key=value")
                kwargs[key.strip()] = yaml.safe_load(value)
        else:
            raise ValueError(f"a head must be a name, 'name:key=value,...' or a mapping; got {item!r}")
        head_class(name)  # unknown names: ValueError listing the valid ones
        merged = {**head_kwargs.get(name, {}), **kwargs}
        specs.append(HeadSpec(name, merged, label))
    return specs


def resolve_settings(argv: list[str]) -> tuple[dict[str, Any], argparse.Namespace]:
    """Defaults, then the config file, then explicit options (the main job's settings replace the defaults
    when neither ``--model`` nor ``-c`` is given)."""
    from vizoo.probe.demo import DEMO_CONFIG

    args = build_parser().parse_args(argv)
    settings = dict(DEFAULTS)
    if not hasattr(args, "model") and not getattr(args, "config", None):
        settings.update(DEMO_CONFIG)
    if getattr(args, "config", None):
        settings.update(load_config(args.config))
    settings.update({k: v for k, v in vars(args).items() if k not in ("config", "list_heads")})
    return settings, args


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


def job_from_settings(settings: dict[str, Any]):
    """A :class:`ProbeJob` from resolved settings."""
    import torch

    from vizoo.probe.demo import expand_model_name
    from vizoo.probe.pipeline import ProbeJob
    from vizoo.probe.trainer import TrainConfig

    s = settings
    if not s["model"]:
        raise ValueError(
            "no model given: pass --model NAME (any timm/vizoo name, hf-hub:..., local-dir:...) "
            "or leave out both --model and -c for the demo"
        )
    device = s["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    heads = parse_heads(list(s["heads"]), dict(s["head_kwargs"] or {}))
    train = TrainConfig(
        epochs=int(s["epochs"]),
        batch_size=int(s["batch_size"]),
        lrs=[float(v) for v in s["lrs"]],
        optimizer=s["optimizer"],
        weight_decay=float(s["weight_decay"]),
        warmup_epochs=float(s["warmup_epochs"]),
        scale_lr=bool(s["scale_lr"]),
        seed=int(s["seed"]),
        device=device,
    )
    layers = s["layers"]
    if isinstance(layers, int):
        layers = [layers]
    return ProbeJob(
        model=expand_model_name(s["model"]),
        model_kwargs=dict(s["model_kwargs"] or {}),
        pretrained=bool(s["pretrained"]),
        checkpoint=s["checkpoint"],
        dataset=s["dataset"],
        root=s["root"],
        dataset_kwargs=dict(s["dataset_kwargs"] or {}),
        image_size=s["image_size"],
        heads=heads,
        train=train,
        protocol=s["protocol"],
        layers=layers,
        inputs=[s["inputs"]] if isinstance(s["inputs"], str) else s["inputs"],
        norm=bool(s["norm"]),
        k_shot=s["k_shot"],
        seeds=[int(v) for v in s["seeds"]],
        cache_dir=s["cache_dir"],
        extract_batch_size=int(s["extract_batch_size"]),
        num_workers=int(s["num_workers"]),
        amp=bool(s["amp"]),
        scale=tuple(s["scale"]),
        hflip=float(s["hflip"]),
        devices=int(s["devices"]),
        progress=bool(s["progress"]),
    )


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
    table.add_row("plain_linear", "optional", "pool='auto'  (DINOv2: Linear only, no BatchNorm; vizoo.probe)")
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point of ``vizoo probe`` (``argv`` without the subcommand name). Returns the results dict."""
    from vizoo.probe.report import print_table, write_json, write_plot

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, args = resolve_settings(argv)
        if getattr(args, "list_heads", False):
            _list_heads()
            return None
        job = job_from_settings(settings)
        out = choose_output_dir(settings, explicit=hasattr(args, "output_dir"))
        from vizoo.probe.pipeline import run_probe

        report = run_probe(job)
    except (ValueError, FileNotFoundError) as err:
        print(f"vizoo probe: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    import os

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return report  # DDP workers of the augmented protocol: rank 0 reports
    report["meta"]["settings"] = {k: v for k, v in settings.items()}
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

"""The Hub commands: ``vizoo hub export|push|pull|verify`` move models between timm, ``vizoo fit`` checkpoints and
the Hugging Face Hub (:func:`main`); ``vizoo convert`` turns an official checkpoint into an export folder
(:func:`convert_main`). The work itself is in :mod:`vizoo.hub`; this module parses arguments and prints results."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from vizoo.hub.checkpoints import is_lightning_checkpoint, lightning_state_dict, load_file, read_state_dict
from vizoo.hub.convert import convert_checkpoint
from vizoo.hub.export import export_model
from vizoo.hub.folder import check_output_folder
from vizoo.hub.loading import create_model, load_strict, verify_folder
from vizoo.hub.publish import pull, push_folder
from vizoo.utils import ArgumentParser


def add_card_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-names", help="file with one class name per line, or a JSON list")
    parser.add_argument("--metrics", help="JSON dict (inline or a file) of metrics for the model card")
    parser.add_argument("--repo-id", help="the Hub repository the folder is meant for (for the model card)")


def read_label_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_metrics(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--metrics must be a JSON dict or a JSON file, got {value!r}: {err}") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"--metrics must be a JSON dict, got {type(metrics).__name__}.")  # noqa: TRY004
    return metrics


def model_from_source(
    source: str,
    checkpoint: str | None = None,
    ema: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, list[str] | None, str, dict[str, Any]]:
    """Build the model an export starts from.

    Args:
        source: a model name (``name``, ``name.tag``, ``hf-hub:...``, ``local-dir:...``) whose weights are loaded
            (pretrained, or from ``checkpoint``), or the path of a ``vizoo fit`` Lightning checkpoint.
        checkpoint: a weights file (state dict, safetensors) for a model name.
        ema: from a Lightning checkpoint, take the EMA weights.
        model_kwargs: extra constructor kwargs for a model name.

    Returns:
        (model in eval mode, class names or None, a line saying where the weights come from, pretrained cfg
        entries for the export). For weights trained by the user (a ``vizoo fit`` checkpoint or ``checkpoint``)
        those entries clear the architecture's license (the user gives one with ``--license``) and, from a
        ``vizoo fit`` checkpoint, set the input size, mean, std, interpolation and crop that training used.
    """
    import timm


    path = Path(source)
    if path.is_file():
        ckpt = load_file(path)
        if not is_lightning_checkpoint(ckpt):
            raise ValueError(
                f"{path} is not a `vizoo fit` checkpoint (no hyper_parameters['model_name']). For a bare state "
                "dict, give the architecture: `vizoo hub export MODEL OUT --checkpoint FILE`, or for an official "
                "checkpoint `vizoo convert --model MODEL --checkpoint FILE --out DIR`."
            )
        hp = ckpt["hyper_parameters"]
        kwargs = dict(hp.get("model_kwargs") or {})
        if hp.get("num_classes") is not None:
            kwargs["num_classes"] = int(hp["num_classes"])
        import vizoo  # noqa: F401

        model = create_model(str(hp["model_name"]), pretrained=False, **kwargs)
        prefix = "ema.module" if ema else "model"
        load_strict(model, lightning_state_dict(ckpt, ema=ema), source=f"{path.name} ({prefix}.*)")
        names = hp.get("class_names")
        where = f"trained with `vizoo fit` (`{path.name}`"
        for key in ("epoch", "global_step"):
            if isinstance(ckpt.get(key), int):
                where += f", {key} {ckpt[key]}"
        where += ", EMA weights)" if ema else ")"
        cfg = {"license": None, **{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in (ckpt.get("data_config") or {}).items()}}
        return model.eval(), (list(names) if names else None), where, cfg
    if checkpoint is not None:
        model = create_model(source, pretrained=False, **(model_kwargs or {}))
        try:
            load_strict(model, read_state_dict(checkpoint, ema=ema), source=checkpoint)
        except ValueError as err:
            raise ValueError(f"{err} (--checkpoint takes weights in vizoo/timm's own layout; convert an official "
                             "checkpoint with `vizoo convert --model MODEL --checkpoint FILE --out DIR`.)") from err
        return model.eval(), None, f"loaded from `{Path(checkpoint).name}`", {"license": None}
    looks_like_file = path.suffix in (".ckpt", ".pth", ".pt", ".safetensors", ".bin")
    if looks_like_file and ":" not in source and not timm.is_model(source.split(".", 1)[0]):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    model = create_model(source, pretrained=True, **(model_kwargs or {}))
    names = model.pretrained_cfg.get("label_names")
    return model.eval(), (list(names) if names else None), f"pretrained weights of `{source}`", {}


def json_dict(text: str) -> dict[str, Any]:
    """argparse type: a JSON object, with an error that shows what was given."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"img_size\": 64}}', got {text!r}")
    return value


def _error(command: str, err: Exception | str) -> None:
    print(f"vizoo hub {command}: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def cmd_export(args: argparse.Namespace) -> None:
    check_output_folder(args.out_dir, args.overwrite)  # before the model is built
    model, names, where, cfg_update = model_from_source(args.source, args.checkpoint, args.ema, args.model_kwargs)
    label_names = read_label_names(args.label_names) or names
    cfg_update.update({k: v for k, v in (("tag", args.tag), ("license", args.license)) if v})
    if Path(args.source).is_file():
        cfg_update.setdefault("tag", "vizoo_fit")  # the architecture's default tag names other weights
    out = export_model(model, args.out_dir, label_names=label_names, metrics=read_metrics(args.metrics),
                       pretrained_cfg=cfg_update or None, source=where, repo_id=args.repo_id,
                       overwrite=args.overwrite)
    print(f"exported {model.pretrained_cfg.get('architecture')} ({where}) to {out}")


def cmd_push(args: argparse.Namespace) -> None:
    url = push_folder(args.folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                      commit_message=args.message)
    print(f"pushed {args.folder} to {args.repo_id}: {url}")


def cmd_pull(args: argparse.Namespace) -> None:
    folder = pull(args.repo_id, args.out_dir, revision=args.revision, cache_dir=args.cache_dir,
                  overwrite=args.overwrite)
    print(folder)


def cmd_verify(args: argparse.Namespace) -> None:
    model = verify_folder(args.folder)
    config = json.loads((Path(args.folder) / "config.json").read_text())
    check = ("reproduces its forward check" if (config.get("vizoo") or {}).get("forward_check")
             else "no forward check recorded")
    print(f"{args.folder}: OK ({model.pretrained_cfg.get('architecture')} loads strictly; {check})")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vizoo hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write config.json + model.safetensors + README.md for a model")
    p.add_argument("source", metavar="MODEL_OR_CKPT",
                   help="a model name with weights (name, name.tag, hf-hub:ORG/REPO, local-dir:DIR) or a "
                        "`vizoo fit` checkpoint file")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--checkpoint", help="weights file for MODEL (a state dict or safetensors)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a `vizoo fit` checkpoint")
    p.add_argument("--model-kwargs", type=json_dict, default=None, help="JSON dict of constructor kwargs")
    p.add_argument("--tag", help="pretrained tag to record (e.g. digits_ft; default for a `vizoo fit` checkpoint: "
                                 "vizoo_fit)")
    p.add_argument("--license", help="license to record in the config and card (e.g. apache-2.0)")
    add_card_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="verify an export folder, then upload it to the Hub")
    p.add_argument("folder", metavar="OUT_DIR")
    p.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("pull", help="download and verify a Hub repository (into the cache, or OUT_DIR)")
    p.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME[@REV]")
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="copy the files here (default: cache only)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--cache-dir", help="Hub cache (default: HF_HUB_CACHE)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("verify", help="check that an export folder loads back exactly")
    p.add_argument("folder", metavar="DIR")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as err:  # OSError: missing files, and huggingface_hub's HTTP and token errors
        _error(args.command, err)
    except Exception as err:
        if type(err).__module__.split(".")[0] not in ("huggingface_hub", "httpx", "httpx2", "requests"):
            raise
        _error(args.command, f"{type(err).__name__}: {err} (is the Hub reachable? HF_ENDPOINT, network, token)")


def build_convert_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vizoo convert", description="Convert an official checkpoint into a "
                                     "vizoo export folder (config.json + model.safetensors + README.md).")
    parser.add_argument("--model", required=True, help="vizoo architecture, optionally with a tag (nat_tiny.in1k)")
    parser.add_argument("--checkpoint", required=True, help="the official checkpoint file")
    parser.add_argument("--out", required=True, help="the export folder to write")
    parser.add_argument("--ema", action="store_true", help="use the file's EMA weights")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: read from the checkpoint)")
    parser.add_argument("--model-kwargs", type=json_dict, default=None, help="JSON dict of constructor kwargs")
    parser.add_argument("--allow-missing", action="append", default=[], metavar="GLOB",
                        help="accept model keys absent from the file (repeatable)")
    parser.add_argument("--allow-unexpected", action="append", default=[], metavar="GLOB",
                        help="drop file keys the model does not have (repeatable)")
    add_card_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return parser


def convert_main(argv: list[str] | None = None) -> None:
    """``vizoo convert``: one-line errors (exit code 2) for bad input."""
    args = build_convert_parser().parse_args(argv)
    try:
        check_output_folder(args.out, args.overwrite)  # before the checkpoint is read
        _, report = convert_checkpoint(
            args.model, args.checkpoint, args.out, ema=args.ema, num_classes=args.num_classes,
            model_kwargs=args.model_kwargs, allow_missing=args.allow_missing,
            allow_unexpected=args.allow_unexpected, label_names=read_label_names(args.label_names),
            metrics=read_metrics(args.metrics), repo_id=args.repo_id, overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"vizoo convert: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report.summary())


if __name__ == "__main__":
    main()

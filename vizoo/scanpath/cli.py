"""``vizoo scanpath predict|evaluate|synthesize|bench``: run a trained OAT checkpoint, score it and the
baselines against the human scanpaths, write the synthetic world to disk, measure throughput.

* ``predict``: ``predictions.json`` (``{scene id: [scanpath, ...]}``) and PNGs of predicted against human
  scanpaths over each scene.
* ``evaluate``: ``metrics.json`` and ``metrics.md`` (OAT and every baseline, one row each; also printed as a
  table), plus the PNGs. The scenes are the checkpoint's own data split unless ``--data`` names a vizoo
  scanpath folder.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from vizoo.utils import atomic_write_text

TABLE_COLUMNS = [
    ("sequence_score", "SS ↑"), ("edit_distance", "edit ↓"), ("scanmatch", "ScanMatch ↑"),
    ("multimatch_vector", "MM vec ↑"), ("multimatch_direction", "MM dir ↑"), ("multimatch_length", "MM len ↑"),
    ("multimatch_position", "MM pos ↑"), ("behavioural_error", "Δ ↓"), ("behaviour_target_found", "found"),
    ("behaviour_length", "length"),
]


def load_module(checkpoint: str | Path, device: str = "cpu"):
    """A trained :class:`~vizoo.scanpath.ScanpathModule` (eval mode) and its checkpoint's data hyper-parameters."""
    from vizoo.scanpath.train import ScanpathModule

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "oat" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(f"{checkpoint} is not a `vizoo fit` checkpoint of a ScanpathModule (configs/scanpath/)")
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # e.g. the CLI's _class_path
    module = ScanpathModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    data = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    return module.to(device).eval(), data


def load_split(data_hparams: dict[str, Any], data: str | None, split: str):
    """The scenes to run on: a vizoo scanpath folder (``data``, all scenes) or the checkpoint's own split."""
    from vizoo.scanpath.data import load_scenes
    from vizoo.scanpath.train import ScanpathDataModule

    if data:
        return load_scenes(data)
    if not data_hparams:
        raise ValueError("the checkpoint records no data module; give --data FOLDER (a vizoo scanpath folder)")
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    return ScanpathDataModule(**data_hparams).scenes(split)


@torch.no_grad()
def predict_scenes(module, scenes, batch_size: int = 64, samples: int = 1, seed: int = 0,
                   max_length: int | None = None) -> list[list[list[int]]]:
    """``samples`` scanpaths per scene (greedy when ``samples == 1``, else sampled), decoded in batches."""
    from vizoo.scanpath.data import collate_scenes, scene_tensors

    model = module.model
    device = next(model.parameters()).device
    max_length = max_length or module.hparams.max_length
    generator = torch.Generator(device=device).manual_seed(seed) if samples > 1 else None
    out: list[list[list[int]]] = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        batch = collate_scenes([scene_tensors(s, model.crop_size) for s in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        if samples == 1:
            out.extend([p] for p in model.generate(batch, max_length))
            continue
        repeated = {k: v.repeat_interleave(samples, 0) for k, v in batch.items()}
        paths = model.generate(repeated, max_length, sample=True, generator=generator)
        out.extend(paths[i * samples:(i + 1) * samples] for i in range(len(chunk)))
    return out


def evaluate_methods(scenes, methods: dict[str, Sequence[Sequence[int]]]) -> dict[str, dict[str, float]]:
    from vizoo.scanpath.metrics import score_scanpaths

    return {
        name: score_scanpaths(paths, [s.scanpaths for s in scenes], [s.centres for s in scenes],
                              [s.target for s in scenes], [s.size for s in scenes])
        for name, paths in methods.items()
    }


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| method | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
             "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for name, row in results.items():
        cells = ["nan" if math.isnan(row[k]) else f"{row[k]:.3f}" for k, _ in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, dict[str, float]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("method")
    for _, header in TABLE_COLUMNS:
        table.add_column(header, justify="right")
    for name, row in results.items():
        table.add_row(name, *(f"{row[k]:.3f}" for k, _ in TABLE_COLUMNS))
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # pipes and logs get the whole table


def _write_plots(scenes, methods: dict[str, list[list[list[int]]]], out: Path, count: int) -> None:
    from vizoo.scanpath.plots import plot_scanpaths

    for i, scene in enumerate(scenes[:count]):
        name = scene.scene_id.replace("/", "_")
        plot_scanpaths(scene, {m: paths[i] for m, paths in methods.items()}, out / "plots" / f"{i:04d}_{name}.png")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a `vizoo fit` checkpoint of configs/scanpath/")
    parser.add_argument("--data", default=None, help="a vizoo scanpath folder (default: the checkpoint's data split)")
    parser.add_argument("--split", default="test", help="train, val or test of the checkpoint's data (default test)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-length", type=int, default=None, help="longest scanpath (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plots", type=int, default=8, help="PNGs for the first N scenes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vizoo scanpath", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="predict scanpaths with a trained OAT")
    _common(predict)
    predict.add_argument("--samples", type=int, default=1, help="sampled scanpaths per scene (1: greedy)")
    evaluate = sub.add_parser("evaluate", help="score OAT and the baselines against the human scanpaths")
    _common(evaluate)
    evaluate.add_argument("--baselines", default="random,centre,similarity")
    synth = sub.add_parser("synthesize", help="write scenes of the synthetic world as a vizoo scanpath folder")
    synth.add_argument("--out", required=True)
    synth.add_argument("--num-scenes", type=int, default=400)
    synth.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="throughput of batched OAT inference and training (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from vizoo.scanpath.bench import main as bench_main

        bench_main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "synthesize":
        from vizoo.scanpath.data import save_scenes
        from vizoo.scanpath.synthetic import make_scenes

        print(f"wrote {save_scenes(make_scenes(args.num_scenes, args.seed), args.out)}")
        return
    if args.batch_size < 1 or args.plots < 0 or (args.max_length is not None and args.max_length < 1):
        raise ValueError("--batch-size and --max-length must be >= 1 and --plots >= 0")
    module, data_hparams = load_module(args.checkpoint, args.device)
    scenes = load_split(data_hparams, args.data, args.split)
    max_length = args.max_length or module.hparams.max_length
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "predict":
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        paths = predict_scenes(module, scenes, args.batch_size, args.samples, args.seed, max_length)
        atomic_write_text(out / "predictions.json",
                          json.dumps({s.scene_id: p for s, p in zip(scenes, paths)}, indent=1))
        _write_plots(scenes, {"OAT": paths}, out, args.plots)
        print(f"wrote {out / 'predictions.json'} and {min(args.plots, len(scenes))} plots under {out / 'plots'}")
        return
    from vizoo.scanpath.baselines import baseline_scanpaths

    methods = {"OAT": [p[0] for p in predict_scenes(module, scenes, args.batch_size, 1, args.seed, max_length)]}
    for name in [b for b in args.baselines.split(",") if b]:
        methods[name] = baseline_scanpaths(name, scenes, max_length, args.seed)
    results = evaluate_methods(scenes, methods)
    report = {"checkpoint": str(args.checkpoint), "data": args.data or f"checkpoint split {args.split!r}",
              "num_scenes": len(scenes), "max_length": max_length, "methods": results}
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1))
    atomic_write_text(out / "metrics.md", markdown_table(results))
    _write_plots(scenes, {k: [[p] for p in v] for k, v in methods.items()}, out, args.plots)
    print_table(results, f"{len(scenes)} scenes, {report['data']}")
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and {min(args.plots, len(scenes))} plots")


if __name__ == "__main__":
    main()

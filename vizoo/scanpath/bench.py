"""Throughput of OAT: batched greedy inference (scanpaths per second) and the training step time.

    python -m vizoo.scanpath.bench --device cuda             # OAT's widths, 27 objects (3x9 shelf), batch 256
    vizoo scanpath bench --device cpu --batch-size 32 --iters 3

Inputs are synthetic displays of ``--rows x --cols`` objects with random crops, so no data is needed. Inference
decodes exactly ``--max-length`` steps (stopping is masked out) so that every run does the same work; the time
is the median over ``--iters`` runs after ``--warmup`` runs, with CUDA synchronised around each. One JSON line
per measurement is printed, then a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vizoo.scanpath.model import OAT


def random_batch(batch_size: int, objects: int, crop_size, device, max_length: int, generator) -> dict:
    rows = int(objects**0.5)
    cols = -(-objects // rows)
    index = torch.arange(objects)
    centres = torch.stack([(index % cols + 0.5) / cols, (index // cols + 0.5) / rows], -1)
    return {
        "crops": torch.rand(batch_size, objects, 3, *crop_size, generator=generator).to(device),
        "centres": centres.expand(batch_size, -1, -1).to(device),
        "valid": torch.ones(batch_size, objects, dtype=torch.bool, device=device),
        "target": torch.randint(objects, (batch_size,), generator=generator).to(device),
        "scanpath": torch.randint(objects, (batch_size, max_length), generator=generator).to(device),
    }


def _timed(fn, device: str, warmup: int, iters: int) -> float:
    times = []
    for i in range(warmup + iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fixed_length_generate(model: OAT, batch: dict, max_length: int) -> None:
    """Greedy decoding for exactly ``max_length`` steps (the stop class masked), the work of the longest case."""
    state = model.encode(batch)
    fixations = torch.zeros(len(batch["target"]), 0, dtype=torch.long, device=batch["target"].device)
    for _ in range(max_length):
        logits = model.decode(state, fixations)[:, -1]
        logits[:, 0] = float("-inf")
        fixations = torch.cat([fixations, logits.argmax(-1, keepdim=True) - 1], 1)


def run(args) -> list[dict]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA device; use --device cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = OAT(crop_size=tuple(args.crop_size), max_steps=args.max_length + 1).to(device)
    batch = random_batch(args.batch_size, args.objects, args.crop_size, device, args.max_length, generator)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    results = []
    model.eval()
    with torch.no_grad(), autocast:
        seconds = _timed(lambda: _fixed_length_generate(model, batch, args.max_length), device, args.warmup, args.iters)
    results.append({"what": "inference (greedy)", "device": device, "dtype": args.dtype, "batch": args.batch_size,
                    "objects": args.objects, "steps": args.max_length, "seconds": seconds,
                    "scanpaths_per_s": args.batch_size / seconds})
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with autocast:
            loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _timed(step, device, args.warmup, args.iters)
    results.append({"what": "train step", "device": device, "dtype": args.dtype, "batch": args.batch_size,
                    "objects": args.objects, "steps": args.max_length + 1, "seconds": seconds,
                    "scanpaths_per_s": args.batch_size / seconds})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vizoo scanpath bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--objects", type=int, default=27, help="objects per display (OAT's shelves: 22 or 27)")
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--crop-size", type=int, nargs=2, default=[150, 93], help="crop height width (OAT: 150 93)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.objects, args.max_length, args.iters) < 1 or args.objects < 2:
        raise ValueError("--batch-size, --max-length and --iters must be >= 1 and --objects >= 2")
    results = run(args)
    for row in results:
        print(json.dumps(row))
    print("\n| what | device | dtype | batch | objects | steps | ms | scanpaths/s |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['what']} | {r['device']} | {r['dtype']} | {r['batch']} | {r['objects']} | {r['steps']} | "
              f"{r['seconds'] * 1e3:.1f} | {r['scanpaths_per_s']:.1f} |")


if __name__ == "__main__":
    main()

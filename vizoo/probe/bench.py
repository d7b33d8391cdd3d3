"""Throughput of the probing engine: all heads in one pass vs one at a time, and streaming a large cache.

Meant for a GPU (``python3 -m vizoo.probe.bench --device cuda``); the tests run it on the CPU at toy sizes only
to check that it works. Everything goes through the engine as a real run does (a feature cache written in the
cache's own format, read by the token sources, trained and validated by ``vizoo.probe.engine``):

* :func:`bench_heads` - a synthetic cache of random fp16 tokens (default ViT-B/16 at 224: N=196, D=768, C=1000, 16384
  training samples, 4 epochs of 16 steps) held in host memory; the time of one engine run per head type (each head
  alone) against one run with all head types together. The speed-up is ``sum of alone times / joint time``: what one
  pass saves (each batch gathered, copied to the GPU and converted once; one optimizer step, one backward for all).
* :func:`bench_stream` - a synthetic cache on disk that the engine streams shard by shard; the rate of a
  training epoch (bytes of the cache read per second) against a plain sequential read of the same files, both after
  evicting the files from the page cache (``posix_fadvise(DONTNEED)``; a plain read of files still in memory
  would measure memory, not the disk). Epochs per hour are extrapolated to ImageNet-1k (1,281,167 images).
* :func:`bench_protocols` - one epoch of heads on stored tokens vs one epoch of the frozen backbone run every
  step (the augmented protocol's cost), for one timm model on random images.

Timings synchronise CUDA before reading the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from vizoo.probe.engine import HeadSpec, TrainConfig

DEFAULT_HEADS = ("linear", "ep", "mhca", "simpool", "siglip", "cae")
IMAGENET_TRAIN = 1_281_167


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def write_synthetic_cache(
    directory: str | Path,
    num_samples: int,
    num_tokens: int = 196,
    dim: int = 768,
    num_prefix: int = 1,
    num_classes: int = 1000,
    shard_size: int = 4096,
    seed: int = 0,
) -> Path:
    """A complete feature cache of random fp16 tokens (one layer, key 0) in the cache's own format.

    Shards are filled from a pool of random rows (generating 300 MB of normal samples per shard would take
    longer than the benchmark); every shard gets its own random labels and checksum.
    """
    from vizoo.probe.cache import cache_key, write_manifest, write_shard

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(min(shard_size, 1024), num_tokens + num_prefix, dim, generator=g).half()
    side = int(num_tokens**0.5)
    grid = (side, side) if side * side == num_tokens else None
    shapes = {"0": dict(num_tokens=num_tokens, dim=dim, num_prefix=num_prefix, grid=grid)}
    payload = dict(synthetic=True, seed=seed, layers=[0], norm=False, num_samples=num_samples, model="synthetic",
                   shape=[num_tokens, dim, num_prefix, num_classes, shard_size])
    key = cache_key(payload)
    manifest = directory / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("key") == key:
        return directory  # written by an earlier run with the same settings
    for i, start in enumerate(range(0, num_samples, shard_size)):
        count = min(shard_size, num_samples - start)
        rows = pool[torch.randint(0, len(pool), (count,), generator=g)]
        tensors = {
            "tokens.0": rows[:, num_prefix:].contiguous(),
            "prefix.0": rows[:, :num_prefix].contiguous(),
            "labels": torch.randint(0, num_classes, (count,), generator=g),
        }
        write_shard(directory / f"shard-{i:05d}.safetensors", tensors, key, start, count, shapes)
    write_manifest(directory, payload, num_samples, shard_size, shapes)
    return directory


def evict(directory: str | Path) -> None:
    """Drop a cache's files from the page cache (clean pages only; no privileges needed)."""
    for path in Path(directory).iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read_rate(directory: str | Path, chunk: int = 16 << 20) -> float:
    """Bytes per second of one sequential read of every shard file, 16 MiB at a time, after :func:`evict`."""
    evict(directory)
    files = sorted(Path(directory).glob("shard-*.safetensors"))
    total = 0
    start = time.perf_counter()
    buffer = bytearray(chunk)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total / (time.perf_counter() - start)


def _run(splits, heads, num_classes, config, amp) -> float:
    from vizoo.probe.pipeline import train_probes

    _sync(config.device)
    start = time.perf_counter()
    train_probes(splits, [0], heads, num_classes, config, amp=amp, progress=False)
    _sync(config.device)
    return time.perf_counter() - start


def bench_heads(
    heads: Sequence[str] = DEFAULT_HEADS,
    num_samples: int = 16384,
    num_tokens: int = 196,
    dim: int = 768,
    num_classes: int = 1000,
    batch_size: int = 1024,
    epochs: int = 4,
    device: str = "cuda",
    amp: bool = True,
    workdir: str | Path = "vizoo_bench",
) -> dict[str, Any]:
    """Seconds of one engine run per head type alone vs all head types together (see the module docstring).

    Returns:
        ``{"setting": ..., "alone_seconds": {head: s}, "together_seconds": s, "speedup": sum(alone) / together}``.
    """
    from vizoo.probe.cache import load_split

    workdir = Path(workdir)
    splits = {
        name: load_split(write_synthetic_cache(workdir / f"heads-{name}", n, num_tokens, dim, 1, num_classes,
                                               seed=seed))
        for name, n, seed in (("train", num_samples, 0), ("val", batch_size, 1))
    }
    specs = [HeadSpec.parse(h) for h in heads]
    config = TrainConfig(epochs=epochs, batch_size=batch_size, eval_batch_size=batch_size, lrs=[1e-3],
                         device=device)
    _run(dict(train=splits["val"], val=splits["val"]), specs, num_classes, config, amp)  # warm-up
    alone = {s.label: _run(splits, [s], num_classes, config, amp) for s in specs}
    together = _run(splits, specs, num_classes, config, amp)
    return dict(
        setting=dict(num_samples=num_samples, num_tokens=num_tokens, dim=dim, num_classes=num_classes,
                     batch_size=batch_size, epochs=epochs, device=str(device), amp=amp, heads=list(heads),
                     source="feature cache in host memory"),
        alone_seconds=alone,
        together_seconds=together,
        sum_alone_seconds=sum(alone.values()),
        speedup=sum(alone.values()) / together,
    )


def bench_stream(
    heads: Sequence[str] = ("ep:num_queries=32", "linear:pool=cls"),
    lrs: Sequence[float] = (0.1,),
    optimizer: str = "lars",
    num_samples: int = 65536,
    num_tokens: int = 196,
    dim: int = 768,
    num_classes: int = 1000,
    batch_size: int = 4096,
    readers: int = 6,
    epochs: int = 2,
    device: str = "cuda",
    amp: bool = True,
    workdir: str | Path = "vizoo_bench",
) -> dict[str, Any]:
    """One streamed epoch of the engine against a plain read of the same cache files (module docstring).

    The defaults are the grid of ``configs/probe/ep.yaml`` (EP with 32 queries and the linear probe, LARS,
    one lr, batch 4096) on ViT-B/16 tokens. The files are evicted from the page cache before every epoch; the
    rate is the last epoch's (training part), so that setup and warm-up of the first do not count.
    """
    from vizoo.probe.engine import HeadBank, ProbeData, Stream, fit_heads
    from vizoo.probe.sources import ShardStream

    workdir = Path(workdir)
    dirs = {
        "train": write_synthetic_cache(workdir / "stream-train", num_samples, num_tokens, dim, 1, num_classes),
        "val": write_synthetic_cache(workdir / "stream-val", min(batch_size, 4096), num_tokens, dim, 1,
                                     num_classes, seed=1),
    }
    nbytes = {k: sum(p.stat().st_size for p in d.glob("shard-*.safetensors")) for k, d in dirs.items()}
    plain = plain_read_rate(dirs["train"])
    side = int(num_tokens**0.5)
    stream = Stream("0", 0, num_tokens, dim, 1, (side, side) if side * side == num_tokens else None)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, eval_batch_size=batch_size, lrs=list(lrs),
                         optimizer=optimizer, scale_lr=True, device=device)

    def make_loader(split, training, world, rank):
        return ShardStream(dirs[split], {"0": 0}, batch_size, training, 0, world, rank, workers=readers)

    specs = [HeadSpec.parse(h) for h in heads]
    clock = _EpochClock(dirs.values())
    bank = HeadBank(specs, [stream], num_classes, config)
    fit_heads(bank, ProbeData(make_loader, has_test=False), amp=amp, progress=False, callbacks=[clock])
    seconds = clock.train_seconds[-1]  # the last epoch: steady state, after setup and warm-up
    rate = nbytes["train"] / seconds
    per_sample = nbytes["train"] / num_samples
    return dict(
        setting=dict(heads=list(heads), lrs=list(lrs), optimizer=optimizer, num_samples=num_samples,
                     num_tokens=num_tokens, dim=dim, batch_size=batch_size, readers=readers, device=str(device),
                     amp=amp, epochs=epochs, cache_gb=round(nbytes["train"] / 1e9, 2)),
        plain_read_gb_per_s=plain / 1e9,
        engine_gb_per_s=rate / 1e9,
        fraction_of_plain_read=rate / plain,
        train_epoch_seconds=clock.train_seconds,
        imagenet_epochs_per_hour=3600 * rate / (per_sample * IMAGENET_TRAIN),
        imagenet_cache_gb=per_sample * IMAGENET_TRAIN / 1e9,
    )


class _EpochClock(L.Callback):
    """Evicts the cache files before every training epoch and times the epoch's training part (from its start to
    the start of its validation)."""

    def __init__(self, directories):
        self.directories, self.train_seconds, self.started = list(directories), [], 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        for d in self.directories:
            evict(d)
        _sync(pl_module.device.type)
        self.started = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            _sync(pl_module.device.type)
            self.train_seconds.append(time.perf_counter() - self.started)


def bench_protocols(
    model_name: str = "vit_base_patch16_224",
    model_kwargs: dict | None = None,
    image_size: int = 224,
    num_images: int = 2048,
    batch_size: int = 256,
    heads: Sequence[str] = ("linear", "ep"),
    num_classes: int = 1000,
    epochs: int = 90,
    device: str = "cuda",
    amp: bool = True,
) -> dict[str, Any]:
    """Per-epoch time of heads on stored tokens vs heads behind a frozen backbone run every step.

    Args:
        model_name: timm model (random weights: the speed does not depend on them).
        model_kwargs: extra ``create_model`` arguments.
        image_size: input size.
        num_images: images per epoch.
        batch_size: batch size of both.
        heads: head types trained (one lr each).
        num_classes: C.
        epochs: epochs over which the speed-up (extraction included) is reported.
        device: where everything runs.
        amp: bfloat16 autocast on CUDA.
    """
    from vizoo.probe.engine import HeadBank, Stream, build_optimizer
    from vizoo.probe.features import BackboneSpec, create_backbone, extract_tokens, resolve_layers

    model = create_backbone(BackboneSpec(model_name, dict(model_kwargs or {}), pretrained=False)).to(device)
    layers = resolve_layers(model, None)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    steps = max(1, num_images // batch_size)
    use_amp = amp and str(device).startswith("cuda")
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)  # noqa: E731
    with autocast():
        out = extract_tokens(model, images, layers, norm=False)[0]
    stream = Stream("0", layers[0], out.tokens.shape[1], out.tokens.shape[2], out.prefix.shape[1], out.grid)
    config = TrainConfig(lrs=[1e-3], device=device)
    cached = HeadBank([HeadSpec.parse(h) for h in heads], [stream], num_classes, config).to(device)
    behind = HeadBank([HeadSpec.parse(h) for h in heads], [stream], num_classes, config, backbone=model).to(device)
    tokens = ({"0": out.tokens.half()}, {"0": out.prefix.half()}, labels)

    def stepper(bank, batch):
        opt = build_optimizer("adamw", [dict(params=list(bank.heads.parameters()), lr=1e-3)], 0.0)

        def step():
            with autocast():
                loss = bank.training_step(batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def timed(fn) -> float:
        fn()  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        return time.perf_counter() - start

    def extract_step():
        with autocast():
            extract_tokens(model, images, layers, norm=False)[0].tokens.half().cpu()

    extract = timed(extract_step)
    augmented = timed(stepper(behind, (images, labels)))
    on_tokens = timed(stepper(cached, tokens))
    return dict(
        setting=dict(model=model_name, image_size=image_size, num_images=steps * batch_size, batch_size=batch_size,
                     heads=list(heads), num_tokens=stream.num_tokens, dim=stream.dim, device=str(device),
                     amp=use_amp, epochs=epochs),
        extract_seconds=extract,
        augmented_epoch_seconds=augmented,
        cached_epoch_seconds=on_tokens,
        speedup_per_epoch=augmented / on_tokens,
        speedup_over_epochs=(epochs * augmented) / (extract + epochs * on_tokens),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python3 -m vizoo.probe.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=["heads", "stream", "protocols"], nargs="+",
                   default=["heads", "stream", "protocols"])
    p.add_argument("--num-samples", type=int, default=16384, help="training samples of the heads benchmark")
    p.add_argument("--stream-samples", type=int, default=65536, help="training samples of the streamed cache")
    p.add_argument("--readers", type=int, default=6, help="reader threads of the streamed cache")
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workdir", default="vizoo_bench", help="where the synthetic caches are written")
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    result: dict[str, Any] = dict(torch=torch.__version__,
                                  gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    if "heads" in args.only:
        result["heads"] = bench_heads(num_samples=args.num_samples, device=args.device, workdir=args.workdir)
    if "stream" in args.only:
        result["stream"] = bench_stream(num_samples=args.stream_samples, readers=args.readers, device=args.device,
                                        workdir=args.workdir)
    if "protocols" in args.only:
        result["protocols"] = bench_protocols(args.model, num_images=args.num_images, batch_size=args.batch_size,
                                              device=args.device)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from vizoo.utils import atomic_write_text

        atomic_write_text(args.out, text)
    return result


if __name__ == "__main__":
    main()

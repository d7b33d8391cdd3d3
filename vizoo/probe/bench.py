"""Throughput of probing: many heads at once vs one at a time, and the cached vs augmented protocol.

Meant for a GPU (``python3 -m vizoo.probe.bench --device cuda``); the tests run it on the CPU at toy sizes
only to check that it works. Two measurements:

* :func:`bench_cached_heads` - random cached features (default N=196 tokens of D=768, ViT-B/16 at 224) and
  C classes; for each head type, training samples/s when it is trained alone, and when all head types are
  trained together in one pass (``vizoo.probe.trainer``). The speed-up is ``sum of alone times / joint time``
  (what one pass over the features saves: reading and converting each batch once).
* :func:`bench_protocols` - one epoch of the cached protocol (heads on stored tokens) vs one epoch of the
  augmented protocol (frozen backbone forward every step, then the heads) on random images through a timm
  model (default ViT-B/16). The cached protocol pays one extraction pass up front; the report gives the
  per-epoch times, the extraction time and the speed-up over E epochs. Image decoding and augmentation on the
  CPU are not included (they only make the augmented protocol slower).

Timings synchronise CUDA before reading the clock; each measurement runs after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import torch

from vizoo.probe.cache import CachedSplit
from vizoo.probe.trainer import HeadSpec, TrainConfig, train_probes

DEFAULT_HEADS = ("linear", "ep", "mhca", "simpool", "siglip", "cae")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def random_split(
    num_samples: int,
    num_tokens: int,
    dim: int,
    num_classes: int,
    num_prefix: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> CachedSplit:
    """A cached split of random fp16 tokens (kept on ``device`` so that transfer does not dominate)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(num_samples, num_tokens, dim, generator=g).half().to(device)
    prefix = torch.randn(num_samples, num_prefix, dim, generator=g).half().to(device)
    labels = torch.randint(0, num_classes, (num_samples,), generator=g).to(device)
    side = int(num_tokens**0.5)
    grid = (side, side) if side * side == num_tokens else None
    return CachedSplit([0], {0: tokens}, {0: prefix}, {0: grid}, labels, {})


def _time_training(
    train: CachedSplit,
    val: CachedSplit,
    heads: Sequence[HeadSpec],
    num_classes: int,
    config: TrainConfig,
    device: str,
) -> float:
    _sync(device)
    start = time.perf_counter()
    train_probes(train, val, None, 0, heads, num_classes, config, progress=False)
    _sync(device)
    return time.perf_counter() - start


def bench_cached_heads(
    heads: Sequence[str] = DEFAULT_HEADS,
    num_samples: int = 8192,
    num_tokens: int = 196,
    dim: int = 768,
    num_classes: int = 1000,
    batch_size: int = 1024,
    epochs: int = 1,
    device: str = "cuda",
) -> dict[str, Any]:
    """Samples/s per head type trained alone vs all trained together on random cached features.

    Returns:
        ``{"setting": ..., "alone": {head: samples/s}, "together_samples_per_s": x, "speedup": y}``, where
        samples/s counts training samples per head per second (epochs x num_samples / time).
    """
    specs = [HeadSpec(h) for h in heads]
    train = random_split(num_samples, num_tokens, dim, num_classes, device=device)
    val = random_split(min(num_samples, batch_size), num_tokens, dim, num_classes, device=device, seed=1)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lrs=[1e-3],
        device=device,
        time_heads=False,
        eval_batch_size=batch_size,
    )
    warm = TrainConfig(epochs=1, batch_size=batch_size, lrs=[1e-3], device=device, time_heads=False)
    _time_training(
        random_split(batch_size, num_tokens, dim, num_classes, device=device),
        val,
        specs,
        num_classes,
        warm,
        device,
    )
    samples = epochs * num_samples
    alone = {s.label: samples / _time_training(train, val, [s], num_classes, config, device) for s in specs}
    together = _time_training(train, val, specs, num_classes, config, device)
    sum_alone = sum(samples / v for v in alone.values())
    return dict(
        setting=dict(
            num_samples=num_samples,
            num_tokens=num_tokens,
            dim=dim,
            num_classes=num_classes,
            batch_size=batch_size,
            epochs=epochs,
            device=str(device),
        ),
        alone=alone,
        together_samples_per_s=samples / together,
        together_seconds=together,
        sum_alone_seconds=sum_alone,
        speedup=sum_alone / together,
    )


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
    """Per-epoch time of the cached protocol vs the augmented protocol for one timm backbone.

    Args:
        model_name: timm model (random weights: the speed does not depend on them).
        model_kwargs: extra ``create_model`` arguments.
        image_size: input size.
        num_images: images per epoch.
        batch_size: batch size of both protocols.
        heads: head types trained (one lr each).
        num_classes: C.
        epochs: epochs over which the speed-up (extraction included) is reported.
        device: where everything runs.
        amp: bfloat16 autocast for the backbone on CUDA.
    """
    from vizoo.heads import create_head
    from vizoo.probe.features import BackboneSpec, create_backbone, extract_tokens, resolve_layers

    model = create_backbone(BackboneSpec(model_name, dict(model_kwargs or {}), pretrained=False)).to(device)
    layers = resolve_layers(model, None)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    steps = max(1, num_images // batch_size)
    use_amp = amp and str(device).startswith("cuda")

    def backbone_pass():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return extract_tokens(model, images, layers, norm=False)[0]

    out = backbone_pass()
    num_tokens, dim, num_prefix = out.tokens.shape[1], out.tokens.shape[2], out.prefix.shape[1]
    head_modules = [create_head(h, dim, num_classes).to(device) for h in heads]
    opts = [torch.optim.AdamW(h.parameters(), lr=1e-3) for h in head_modules]

    def head_step(tokens, prefix):
        for h, opt in zip(head_modules, opts):
            loss = torch.nn.functional.cross_entropy(h(tokens, prefix=prefix, grid=out.grid), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def timed(fn) -> float:
        fn()  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        return time.perf_counter() - start

    def augmented_step():
        o = backbone_pass()
        head_step(o.tokens.float(), o.prefix.float() if num_prefix else None)

    cached_tokens = out.tokens.half()
    cached_prefix = out.prefix.half()

    def cached_step():
        head_step(cached_tokens.float(), cached_prefix.float() if num_prefix else None)

    def extract_step():
        o = backbone_pass()
        o.tokens.half().cpu()

    extract = timed(extract_step)
    augmented = timed(augmented_step)
    cached = timed(cached_step)
    return dict(
        setting=dict(
            model=model_name,
            image_size=image_size,
            num_images=steps * batch_size,
            batch_size=batch_size,
            heads=list(heads),
            num_tokens=num_tokens,
            dim=dim,
            device=str(device),
            amp=use_amp,
            epochs=epochs,
        ),
        extract_seconds=extract,
        augmented_epoch_seconds=augmented,
        cached_epoch_seconds=cached,
        speedup_per_epoch=augmented / cached,
        speedup_over_epochs=(epochs * augmented) / (extract + epochs * cached),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python3 -m vizoo.probe.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-samples", type=int, default=8192)
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    result = dict(
        cached_heads=bench_cached_heads(num_samples=args.num_samples, device=args.device),
        protocols=bench_protocols(
            args.model, num_images=args.num_images, batch_size=args.batch_size, device=args.device
        ),
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from vizoo.utils import atomic_write_text

        atomic_write_text(args.out, text)
    return result


if __name__ == "__main__":
    main()

"""Where one eager training step of a timm model spends its GPU time: wall ms per step, summed kernel time, peak
memory, and the top kernels (``torch.profiler``), for vizoo's models and timm's alike.

The step is what timm's ``benchmark.py --bench train`` times: bf16 autocast, default NCHW input at 224, forward,
cross-entropy, backward and an SGD step. Run on a GPU:

    PYTHONPATH=. python3 tools/profile_step.py nat_tiny,swin_tiny_patch4_window7_224 [--batch 256] [--top 22] \
        [--compile]

``--compile`` profiles the step of ``torch.compile(model)`` instead (the warm-up steps compile it), as timm's
``benchmark.py --torchcompile`` runs it.
"""
import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import vizoo  # noqa: F401  (registers vizoo's models with timm)


def _self_time(event) -> float:
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def profile_step(name: str, batch: int, top: int, steps: int = 3, compile: bool = False) -> None:
    model = timm.create_model(name).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, model.num_classes, (batch,), device="cuda")

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 10
    torch.cuda.reset_peak_memory_stats()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=_self_time, reverse=True)
    gpu = sum(_self_time(e) for e in events) / steps / 1e3
    label = f"{name} (compiled)" if compile else name
    print(f"== {label}, batch {batch}: wall {wall * 1e3:.1f} ms/step = {batch / wall:.0f} img/s; GPU {gpu:.1f} "
          f"ms/step; peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    for e in events[:top]:
        print(f"  {_self_time(e) / steps / 1e3:8.2f} ms  x{e.count // steps:4d}  {e.key[:110]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", help="comma-separated timm names")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--top", type=int, default=22, help="kernels to list per model")
    parser.add_argument("--compile", action="store_true", help="profile the torch.compile'd model's step")
    args = parser.parse_args()
    for name in args.models.split(","):
        profile_step(name, args.batch, args.top, compile=args.compile)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Host (CPU) time per call of the eager ``na2d_av(..., backend="triton")`` path: forward, and forward+backward
(``torch.autograd.grad`` of the output w.r.t. attn and v, and w.r.t. v alone), at OverLoCK's small shapes where the
op is host-bound on a GPU (batch 128, 16 channels per head).

Without CUDA the kernels are stubbed out: ``vizoo.kernels.contmix.triton``'s kernels are replaced by fakes whose
"compiled kernel" is a no-op, so every line of Python and aten work still runs (argument checks, the autograd
Function, tables, allocations, ``vizoo.kernels._backend.launch`` and its direct-launch cache lookup) except the
driver call itself. CPU tensors pass the triton backend's device check through ``TRITON_INTERPRET=1``, set after
the kernels were built (the interpreter never runs). With CUDA nothing is stubbed: the real calls are timed
(wall per call over a batch of calls, so where the GPU is the slower side this measures the GPU). On a CPU, an
allocation past glibc's mmap threshold maps fresh pages every call (d_attn at 14x14 k=13 is 68 MB: about 8 us for
``torch.empty_like`` alone), which CUDA's caching allocator does not: part of that shape's CPU time is this.

``--profile`` adds, for the forward+backward at each shape: the time spent inside ``TritonAV.forward`` and
``.backward`` (the rest is autograd's and the caller's), a cProfile breakdown (top functions by own time; it sees
the calling thread only, and on CUDA autograd runs the backward in its device thread) and torch.profiler's
operator table.

Usage: ``PYTHONPATH=. python3 tools/host_profile_contmix.py [--dtype bf16|fp32] [--calls N] [--profile]``
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import torch

CASES = [  # (name, (H, W), kernel, heads)
    ("7x7 k7 G16", (7, 7), 7, 16),
    ("14x14 k5 G8", (14, 14), 5, 8),
    ("14x14 k13 G8", (14, 14), 13, 8),
]
BATCH, DIM = 128, 16
KERNELS = ("_av_kernel", "_dv_kernel", "_av_rows_kernel", "_dv_rows_kernel", "_fused_tile_kernel")


class _FakeKernel:
    """Stands in for a ``triton.jit`` kernel: ``kernel[grid](*args, **meta)`` "compiles" (a launch) and returns a
    fake compiled kernel, which ``_backend.launch`` caches and later launches as ``compiled[grid](*args)``."""

    launches = 0

    def __init__(self, kernel):
        self.kernel = kernel
        self.arg_names = kernel.arg_names

    def __hash__(self):  # what the launch cache's key lookup costs for a real kernel
        return hash(self.kernel)

    def __getitem__(self, grid):
        return self._launch

    @staticmethod
    def _launch(*args, **meta):
        _FakeKernel.launches += 1
        return _FakeKernel._compiled


class _FakeCompiled:
    packed_metadata = None

    def __getitem__(self, grid):
        return _FakeKernel._launch


_FakeKernel._compiled = _FakeCompiled()


def stub_kernels() -> None:
    from vizoo.kernels.contmix import triton as tk

    for name in KERNELS:
        setattr(tk, name, _FakeKernel(getattr(tk, name)))
    os.environ["TRITON_INTERPRET"] = "1"  # lets CPU tensors through check_backend; the kernels are already built


def _sync(device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_call_us(fn, device, calls: int, rounds: int = 7) -> tuple:
    """``(median, min)`` over ``rounds`` rounds of the mean wall time of ``calls`` calls (after warm-up)."""
    for _ in range(max(10, calls // 10)):
        fn()
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[rounds // 2], min(times)


def steps(shape, k, heads, dtype, device) -> dict:
    from vizoo.kernels import na2d_av

    attn = torch.randn(BATCH, *shape, heads, k * k, device=device, dtype=dtype).softmax(-1).requires_grad_()
    v = torch.randn(BATCH, *shape, heads, DIM, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(v)
    v_only = attn.detach()

    def fwd():
        with torch.no_grad():
            na2d_av(attn, v, k, backend="triton")

    def both():
        torch.autograd.grad(na2d_av(attn, v, k, backend="triton"), (attn, v), grad)

    def both_on_caller_thread():  # CUDA backwards otherwise run on autograd's device thread
        with torch.autograd.set_multithreading_enabled(False):
            both()

    return {
        "fwd": fwd,
        "fwd+bwd": both,
        "fwd+bwd v only": lambda: torch.autograd.grad(na2d_av(v_only, v, k, backend="triton"), (v,), grad),
        "fwd+bwd caller thread": both_on_caller_thread,
    }


def time_inside(fn, calls: int) -> dict:
    """Mean us per call spent inside ``TritonAV.forward`` and ``TritonAV.backward`` (on CUDA the backward runs in
    autograd's device thread, which cProfile does not see): the rest of a call is autograd's and the caller's."""
    from vizoo.kernels.contmix import ops

    spent = {"forward": 0.0, "backward": 0.0}
    originals = {name: getattr(ops.TritonAV, name) for name in spent}

    def timed(name):
        def wrapper(*args):
            t0 = time.perf_counter()
            try:
                return originals[name](*args)
            finally:
                spent[name] += time.perf_counter() - t0
        return staticmethod(wrapper)

    for name in spent:
        setattr(ops.TritonAV, name, timed(name))
    try:
        for _ in range(calls):
            fn()
    finally:
        for name, original in originals.items():
            setattr(ops.TritonAV, name, staticmethod(original))
    return {f"inside TritonAV.{name}": round(t / calls * 1e6, 1) for name, t in spent.items()}


def profile(fn, calls: int, top: int = 25) -> None:
    print(time_inside(fn, calls))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as p:
        for _ in range(calls):
            fn()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--calls", type=int, default=300, help="calls per timed round (7 rounds)")
    parser.add_argument("--profile", action="store_true", help="cProfile and torch.profiler breakdowns")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        stub_kernels()
    dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[args.dtype]
    print(f"device {device} ({'kernels stubbed' if device == 'cpu' else 'real kernels'}), {args.dtype}, batch "
          f"{BATCH}, dim {DIM}, torch {torch.__version__}; us per call, median (min) of 7 rounds")
    for name, shape, k, heads in CASES:
        fns = steps(shape, k, heads, dtype, device)
        launches = {}
        for step, fn in fns.items():
            before = _FakeKernel.launches
            fn()
            launches[step] = _FakeKernel.launches - before
        times = {step: per_call_us(fn, device, args.calls) for step, fn in fns.items()}
        print(f"{name:14s} " + "  ".join(f"{step} {med:6.1f} ({low:5.1f})" for step, (med, low) in times.items()))
        if device == "cpu":
            print(f"{'':14s} kernel launches per call: {launches}")
        if args.profile:
            profile(fns["fwd+bwd"], args.calls)


if __name__ == "__main__":
    main()

"""Host (Python + aten) time of one eager ``na2d(..., backend="triton")`` forward+backward at NAT-T's stage 3 and 4
shapes (bf16 q/k/v ``[64, 14, 14, 8, 32]`` and ``[64, 7, 7, 16, 32]``, kernel 7), without and with RPB (fp32
``[heads, 13, 13]`` requiring grad).

Each call is ``torch.autograd.grad(na2d(q, k, v, 7, rpb=rpb, backend="triton"), params, g)``. The tool prints the
wall time per call over ``--calls`` calls after a warm-up, a second time with
``torch.autograd.set_multithreading_enabled(False)`` (a CUDA backward then runs on the calling thread instead of
autograd's device thread), then optionally a profile of ``--profile-calls`` calls: ``cprofile`` (Python functions
by own time) or ``torch`` (torch.profiler, CPU ops by self time).

Without a GPU (or with ``--stub``) every Triton launch is stubbed out: ``launch`` still builds its cache key and
calls a cached "compiled kernel" that does nothing, so the whole Python/aten wrapper path runs with no kernel work.
``--device cpu`` (the default) runs it on CPU tensors, one thread: the aten ops of the wrapper (allocations, the RPB
gathers and sums) then also compute on the CPU, which with RPB costs milliseconds at these shapes. ``--device meta``
dispatches the same ops on meta tensors, which compute nothing, so its time is closer to the pure host cost, but some
ops (``aten::index``, ``empty_like``) have Python meta kernels that cost more than their CUDA dispatch.

On a GPU (without ``--stub``) the kernels run for real and the wall time is synchronised once at the end of the loop,
so it is the host time per call whenever the host is the bottleneck (the case at these small shapes) and the GPU time
otherwise.

    PYTHONPATH=. python3 tools/host_profile_na.py [--stub] [--device cpu|meta] [--calls 300] \
        [--profile cprofile|torch] [--top 25]
"""
import argparse
import cProfile
import os
import pstats
import time

import torch

CASES = {"s3": (64, 14, 14, 8, 32), "s4": (64, 7, 7, 16, 32)}
KERNEL = 7


class _NoKernel:
    """Stands in for a ``@triton.jit`` kernel in ``launch``: ``kernel[grid](...)`` "compiles" to an object with
    ``packed_metadata`` (so ``launch`` caches it as on a GPU), whose ``[grid]`` runner does nothing."""

    packed_metadata = None

    def __init__(self, kernel):
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid):
        return self._compile

    def _compile(self, *args, **meta):
        return _NoCompiled()


class _NoCompiled:
    packed_metadata = None

    def __getitem__(self, grid):
        return lambda *args: None


def stub_launches() -> None:
    """Make every neighborhood-attention launch a no-op (keeping ``launch``'s own host work)."""
    from vizoo.kernels import _backend
    from vizoo.kernels.neighborhood import triton as na_triton

    fakes: dict = {}

    def launch(kernel, grid, plan, args, meta, direct=True):
        fake = fakes.get(kernel)
        if fake is None:
            fake = fakes[kernel] = _NoKernel(kernel)
        _backend.launch(fake, grid, plan, args, meta, direct)

    na_triton.launch = launch


def make_call(case: str, with_rpb: bool, device: str):
    from vizoo.kernels import na2d

    shape = CASES[case]
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(shape, device=device, dtype=torch.bfloat16)
    rpb = torch.randn(shape[3], 2 * KERNEL - 1, 2 * KERNEL - 1, device=device, requires_grad=True) if with_rpb else None
    params = (q, k, v) if rpb is None else (q, k, v, rpb)

    def call():
        torch.autograd.grad(na2d(q, k, v, KERNEL, rpb=rpb, backend="triton"), params, g)

    def on_caller_thread():  # CUDA backwards otherwise run on autograd's device thread
        with torch.autograd.set_multithreading_enabled(False):
            call()

    return call, on_caller_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stub", action="store_true", help="stub out the kernels even when a GPU exists")
    parser.add_argument("--device", choices=("cpu", "meta"), default="cpu", help="tensors' device when stubbed")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed loops per case; the fastest is printed")
    parser.add_argument("--cases", default="s3,s4")
    parser.add_argument("--profile", choices=("none", "cprofile", "torch"), default="none")
    parser.add_argument("--profile-calls", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    stub = args.stub or not torch.cuda.is_available()
    if stub:
        os.environ["TRITON_INTERPRET"] = "1"  # lets the triton backend accept non-CUDA tensors; no kernel runs anyway
        stub_launches()
    device = args.device if stub else "cuda"
    if device == "cpu":
        torch.set_num_threads(1)  # steadier on a shared machine; the CPU work stands in for GPU kernels anyway
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"device {device}{' (kernels stubbed out)' if stub else ''}, torch {torch.__version__}")
    for case in args.cases.split(","):
        for with_rpb in (False, True):
            call, on_caller_thread = make_call(case, with_rpb, device)
            name = f"{case} {'rpb' if with_rpb else 'no rpb'}"
            for fn, how in ((call, ""), (on_caller_thread, ", backward on the caller's thread")):
                for _ in range(args.warmup):
                    fn()
                sync()
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    sync()
                    best = min(best, (time.perf_counter() - start) / args.calls)
                print(f"{name:10s} {best * 1e6:8.1f} us/call (fwd+bwd{how}, best of {args.repeats} x {args.calls})")
            if args.profile == "cprofile":
                prof = cProfile.Profile()
                prof.runcall(lambda: [call() for _ in range(args.profile_calls)])
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
            elif args.profile == "torch":
                with torch.profiler.profile() as prof:
                    for _ in range(args.profile_calls):
                        call()
                    sync()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()

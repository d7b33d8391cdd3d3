"""Benchmark ``vizoo.kernels.inline_attn`` on a GPU: Triton vs the eager reference vs SDPA (FlashAttention).

Shapes (the issue's): bf16, 6 heads, head dim 32, N = 196, 3136, 16384, 65536 tokens with batch ``65536 // N``
(B*N = 65,536, 65,464 at N = 196). Forward and forward+backward; times are medians of
``triton.testing.do_bench`` in microseconds. SDPA runs softmax attention with the FlashAttention backend at
the
same shape in its native ``[B, heads, N, dim]`` layout (a different operator: the one InLine replaces). HBM
bandwidth of the Triton kernels counts the bytes the algorithm must move: the forward reads q, k, v and
writes the
output (4 tensors), the backward reads q, k, v and dO twice-over where needed (q, dO; dO, k, v) and writes
dq, dk,
dv (8 tensors). H200 peak: 4.8 TB/s.

The GPU-only columns sum the kernels' times from the profiler (no Python or launch overhead): at batch 1 the
three launches of a call can take longer on the host than the kernels take on the GPU, so the wall-clock columns
show the host's floor. ``--tune`` sweeps the launch settings (``vizoo.kernels.inline.triton.CONFIG``) one at a
time around the defaults at N = 196, 3136 and 65536 (``fused`` applies at 196, where every (batch, head) is one
chunk), checking each against the reference, and prints GPU-only times.

    python tools/bench_inline.py [--check] [--tune] [--json F] [--markdown F]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from vizoo.bench import HBM_BYTES_PER_S, _gpu_time, _kernel_events, _timeit, environment, markdown_table
from vizoo.utils import atomic_write_text

HEADS, DIM, TOKENS = 6, 32, 65536
SIZES = (196, 3136, 16384, 65536)


def _inputs(n: int, layout: str = "bnhd", requires_grad: bool = True):
    b = TOKENS // n
    shape = (b, n, HEADS, DIM) if layout == "bnhd" else (b, HEADS, n, DIM)
    return [
        torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad) for _ in range(3)
    ]


def _fwd_bwd(fn, inputs):
    grad = torch.randn_like(inputs[0])

    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad)

    return step


def check(log=print) -> list:
    """Triton vs reference at every benchmark shape (bf16): max abs error of the output and the gradients."""
    from vizoo.kernels import inline_attn

    rows = []
    for n in SIZES:
        torch.manual_seed(0)
        q, k, v = _inputs(n)
        grad = torch.randn_like(q)
        res = {}
        for backend in ("reference", "triton"):
            out = inline_attn(q, k, v, backend=backend)
            res[backend] = [out] + list(torch.autograd.grad(out, (q, k, v), grad))
        errs = [(a.float() - b.float()).abs().max().item() for a, b in zip(res["reference"], res["triton"])]
        row = dict(N=n, out=errs[0], dq=errs[1], dk=errs[2], dv=errs[3])
        log(row)
        rows.append(row)
    return rows


def _bench_one(n: int) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from vizoo.kernels import inline_attn

    torch.manual_seed(0)
    q, k, v = _inputs(n)
    qs, ks, vs = _inputs(n, "bhnd")
    size = q.numel() * q.element_size()

    def triton_fn(q, k, v):
        return inline_attn(q, k, v, backend="triton")

    def ref_fn(q, k, v):
        return inline_attn(q, k, v, backend="reference")

    row = dict(N=n, B=q.shape[0])
    with torch.no_grad():
        row["triton fwd us"] = _timeit(lambda: triton_fn(q, k, v))
        row["reference fwd us"] = _timeit(lambda: ref_fn(q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa flash fwd us"] = _timeit(lambda: F.scaled_dot_product_attention(qs, ks, vs))
    with torch.no_grad():
        row["triton fwd GPU-only us"] = _gpu_time(lambda: triton_fn(q, k, v))
    row["triton fwd+bwd us"] = _timeit(_fwd_bwd(triton_fn, (q, k, v)))
    row["triton fwd+bwd GPU-only us"] = _gpu_time(_fwd_bwd(triton_fn, (q, k, v)))
    row["reference fwd+bwd us"] = _timeit(_fwd_bwd(ref_fn, (q, k, v)))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        row["sdpa flash fwd+bwd us"] = _timeit(_fwd_bwd(F.scaled_dot_product_attention, (qs, ks, vs)))
    row["fwd vs sdpa x"] = row["sdpa flash fwd us"] / row["triton fwd us"]
    row["fwd+bwd vs sdpa x"] = row["sdpa flash fwd+bwd us"] / row["triton fwd+bwd us"]
    row["fwd TB/s"] = 4 * size / row["triton fwd us"] / 1e6
    row["fwd+bwd TB/s"] = 12 * size / row["triton fwd+bwd us"] / 1e6
    row["fwd % HBM"] = 100 * row["fwd TB/s"] * 1e12 / HBM_BYTES_PER_S
    row["fwd+bwd % HBM"] = 100 * row["fwd+bwd TB/s"] * 1e12 / HBM_BYTES_PER_S
    row["fwd GPU-only % HBM"] = 100 * 4 * size / (row["triton fwd GPU-only us"] * 1e-6) / HBM_BYTES_PER_S
    row["fwd+bwd GPU-only % HBM"] = 100 * 12 * size / (row["triton fwd+bwd GPU-only us"] * 1e-6) / HBM_BYTES_PER_S
    return row


TUNE = dict(gram_block_n=(32, 64, 128, 256), gram_programs=(264, 528, 1056, 2112), gram_warps=(2, 4, 8),
            gram_stages=(1, 2, 3, 4), apply_block_n=(32, 64, 128, 256), apply_warps=(2, 4, 8), fused=(1,))
# settings changed together (the one-at-a-time sweep above cannot see how they combine)
COMBOS = (dict(gram_block_n=128, gram_warps=2), dict(gram_block_n=128, gram_warps=2, gram_programs=1056),
          dict(gram_block_n=128, gram_warps=4, gram_programs=1056), dict(apply_block_n=128, apply_warps=2),
          dict(apply_block_n=256, apply_warps=4), dict(gram_block_n=128, gram_warps=2, apply_block_n=128,
                                                       apply_warps=2))


def tune(log=print, sizes=(196, 3136, 65536)) -> list:
    """GPU-only forward and forward+backward times of each setting in ``TUNE`` (one changed at a time, the rest
    at their defaults) and of each combination in ``COMBOS``, with the max error against the reference; the
    default's row also splits its time by kernel."""
    from vizoo.kernels import inline_attn
    from vizoo.kernels.inline import triton as tk

    defaults, rows = dict(tk.CONFIG), []
    variants = ([("default", {})] + [(f"{name}={value}", {name: value}) for name, values in TUNE.items()
                                      for value in values]
                + [(", ".join(f"{k}={v}" for k, v in combo.items()), combo) for combo in COMBOS])
    for n in sizes:
        torch.manual_seed(0)
        q, k, v = _inputs(n)
        grad = torch.randn_like(q)
        with torch.no_grad():
            want = inline_attn(q, k, v, backend="reference").float()
        for label, settings in variants:
            tk.CONFIG.clear()
            tk.CONFIG.update(defaults, **settings)
            row = dict(N=n, setting=label)
            try:
                with torch.no_grad():
                    out = inline_attn(q, k, v, backend="triton")
                    row["max err"] = (out.float() - want).abs().max().item()
                    row["fwd GPU-only us"] = _gpu_time(lambda: inline_attn(q, k, v, backend="triton"))
                fn = _fwd_bwd(lambda *t: inline_attn(*t, backend="triton"), (q, k, v))
                row["fwd+bwd GPU-only us"] = _gpu_time(fn)
                size = q.numel() * q.element_size()
                row["fwd % HBM"] = 100 * 4 * size / (row["fwd GPU-only us"] * 1e-6) / HBM_BYTES_PER_S
                if not settings:  # where the default's time goes: GPU us per call of each kernel
                    with torch.no_grad():
                        events = _kernel_events(lambda: inline_attn(q, k, v, backend="triton"), 20)
                    row["fwd kernels us"] = {e.key[:40]: round(e.device_time_total / 20, 1) for e in events}
                    events = _kernel_events(fn, 20)
                    row["fwd+bwd kernels us"] = {e.key[:40]: round(e.device_time_total / 20, 1) for e in events}
            except Exception as error:  # noqa: BLE001  (a setting the compiler refuses: report, go on)
                row["error"] = f"{type(error).__name__}: {str(error)[:120]}"
            log(row)
            rows.append(row)
        del grad
    tk.CONFIG.clear()
    tk.CONFIG.update(defaults)
    return rows


def bench(log=print) -> list:
    """Times (us), speed-ups over SDPA and achieved HBM bandwidth at every shape."""
    rows = []
    for n in SIZES:
        rows.append(_bench_one(n))
        log(rows[-1])
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="first compare Triton with the reference")
    parser.add_argument("--tune", action="store_true", help="only sweep the launch settings (GPU-only times)")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--markdown", default=None, help="write the markdown table to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tools/bench_inline.py needs a CUDA GPU")
    out = {"environment": environment()}
    if args.check:
        out["check"] = check()
    key = "tune" if args.tune else "bench"
    out[key] = tune() if args.tune else bench()
    table = f"{out['environment']}\n\n" + markdown_table(out[key]) + "\n"
    print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

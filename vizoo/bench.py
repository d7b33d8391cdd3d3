"""``vizoo bench``: GPU benchmarks of vizoo's kernels (and backbones) against their peers, side by side.

Neighborhood attention (bf16, heads-last inputs): vizoo's Triton kernel vs PyTorch FlexAttention (compiled,
with a block mask built from the same window tables, and a ``score_mod`` for RPB), dense SDPA over all
tokens (full attention: what NA replaces, not the same operator) and the PyTorch reference. Shapes are the
four NAT-Tiny stages at 224 (batch 64), a DiNAT dilation-8 layer at 56x56 and a 128x128 high-resolution
case (k=13, head dim 64). FlexAttention and SDPA get their native ``[B, heads, N, dim]`` layout (no
transpose is timed). Times are medians of ``triton.testing.do_bench``.

Usage: ``vizoo bench [--check] [--tune | --host] [--models [--compile] [--profile]] [--cases A,B] [--json F]
[--markdown F]`` (needs a CUDA GPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

HBM_BYTES_PER_S = 4.8e12  # H200 datasheet


@dataclass
class Case:
    name: str
    batch: int
    size: tuple
    heads: int
    dim: int
    kernel: int
    dilation: int = 1
    rpb: bool = False
    check_batch: int = 2  # batch used for the correctness check against the reference


CASES = [
    Case("NAT-T s1 56x56 h2", 64, (56, 56), 2, 32, 7, check_batch=8),
    Case("NAT-T s2 28x28 h4", 64, (28, 28), 4, 32, 7, check_batch=8),
    Case("NAT-T s3 14x14 h8", 64, (14, 14), 8, 32, 7, check_batch=8),
    Case("NAT-T s4 7x7 h16", 64, (7, 7), 16, 32, 7, check_batch=8),
    Case("NAT-T s1 56x56 h2 +rpb", 64, (56, 56), 2, 32, 7, rpb=True, check_batch=8),
    Case("NAT-T s2 28x28 h4 +rpb", 64, (28, 28), 4, 32, 7, rpb=True, check_batch=8),
    Case("NAT-T s3 14x14 h8 +rpb", 64, (14, 14), 8, 32, 7, rpb=True, check_batch=8),
    Case("NAT-T s4 7x7 h16 +rpb", 64, (7, 7), 16, 32, 7, rpb=True, check_batch=8),
    Case("DiNAT s1 56x56 h2 d8", 64, (56, 56), 2, 32, 7, dilation=8, check_batch=8),
    Case("hi-res 128x128 h8 k13 d64", 4, (128, 128), 8, 64, 13, check_batch=1),
]


def _inputs(case: Case, batch: int, dtype, requires_grad=True):
    shape = (batch, *case.size, case.heads, case.dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    rpb = None
    if case.rpb:
        rpb = (0.5 * torch.randn(case.heads, 2 * case.kernel - 1, 2 * case.kernel - 1, device="cuda")
               ).requires_grad_(requires_grad)
    return q, k, v, rpb


def check(cases=CASES, log=print) -> list[dict]:
    """Triton vs reference on the GPU, real shapes (smaller batch), fp32 and bf16, output and all grads."""
    from vizoo.kernels import na2d

    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            q, k, v, rpb = _inputs(case, case.check_batch, dtype)
            params = [q, k, v] + ([rpb] if rpb is not None else [])
            res = {}
            for backend in ("reference", "triton"):
                o = na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb, backend=backend)
                if backend == "reference":
                    g = torch.randn_like(o)
                res[backend] = [o] + list(torch.autograd.grad(o, params, g))
            pairs = zip(res["reference"], res["triton"])
            errs = [(a.float() - b.float()).abs().max().item() for a, b in pairs]
            scale = [a.float().abs().max().item() for a in res["reference"]]
            row = dict(case=case.name, dtype=str(dtype).replace("torch.", ""),
                       **{f"max_err_{n}": e for n, e in zip(["out", "dq", "dk", "dv", "drpb"], errs)},
                       **{f"max_abs_{n}": s for n, s in zip(["out", "dq", "dk", "dv", "drpb"], scale)})
            rows.append(row)
            log(json.dumps(row))
            del res, q, k, v, rpb
            torch.cuda.empty_cache()
    return rows


def _flex_layout(q, k, v, grad):
    """q, k, v (new leaves that require grad) and the output gradient in Flex/SDPA's ``[B, heads, N, dim]``."""
    qt, kt, vt, gt = (t.detach().flatten(1, -3).transpose(1, 2).contiguous() for t in (q, k, v, grad))
    return qt.requires_grad_(True), kt.requires_grad_(True), vt.requires_grad_(True), gt


def _flex_fns(case: Case):
    """FlexAttention forward with a block mask (and score_mod for RPB) equivalent to na2d."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from vizoo.kernels.neighborhood.reference import axis_windows

    H, W = case.size
    d, ks = case.dilation, case.kernel
    lo_y, hi_y = (t.cuda() for t in axis_windows(H, ks, d, 1, False))
    lo_x, hi_x = (t.cuda() for t in axis_windows(W, ks, d, 1, False))

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        gy, gx = ky // d, kx // d
        return ((qy % d == ky % d) & (qx % d == kx % d) & (lo_y[qy] <= gy) & (gy <= hi_y[qy])
                & (lo_x[qx] <= gx) & (gx <= hi_x[qx]))

    n = H * W
    block_mask = create_block_mask(mask_mod, None, None, n, n, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    return compiled, block_mask, (lo_y, lo_x)


def _timeit(fn: Callable, reps: int = 100) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median") * 1e3  # microseconds


def _kernel_events(fn: Callable, iters: int) -> list:
    """Profiler averages of the GPU work of ``iters`` calls of ``fn`` (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return [e for e in prof.key_averages() if e.device_time_total > 0 and not
            e.key.startswith("cudaDeviceSynchronize")]


def _gpu_time(fn: Callable, iters: int = 20) -> float:
    """Mean GPU kernel time per call (us) from the profiler: excludes Python and launch overhead."""
    return sum(e.device_time_total for e in _kernel_events(fn, iters)) / iters


def bench_kernels(cases=CASES, log=print, reference=True) -> list[dict]:
    """Forward and forward+backward times (us) of triton / flex / sdpa / reference for each case, bf16."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64  # one compiled Flex per case; never fall back to eager Flex
    rows = []
    for case in cases:
        torch._dynamo.reset()
        rows.append(_bench_case(case, log, reference))
        torch.cuda.empty_cache()
    return rows


def _bench_case(case: Case, log, reference: bool) -> dict:
    import torch.nn.functional as F

    from vizoo.kernels import na2d

    torch.manual_seed(0)
    q, k, v, rpb = _inputs(case, case.batch, torch.bfloat16)
    params = [q, k, v] + ([rpb] if rpb is not None else [])
    g = torch.randn_like(q)
    B, (H, W) = case.batch, case.size
    n = H * W
    qt, kt, vt, gt = _flex_layout(q, k, v, g)
    flex, block_mask, _ = _flex_fns(case)
    score_mod = None
    if rpb is not None:
        ks, kk = case.kernel, 2 * case.kernel - 1

        def score_mod(score, b, h, q_idx, kv_idx):
            # clamped: Flex also evaluates score_mod on masked pairs inside partial blocks
            dy = (kv_idx // W - q_idx // W + ks - 1).clamp(0, kk - 1)
            dx = (kv_idx % W - q_idx % W + ks - 1).clamp(0, kk - 1)
            return score + rpb[h, dy, dx]

    impls: dict[str, tuple[Callable, list]] = {
        "triton": (lambda: na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb, backend="triton"),
                   params),
        "flex": (lambda: flex(qt, kt, vt, score_mod=score_mod, block_mask=block_mask),
                 [qt, kt, vt] + ([rpb] if rpb is not None else [])),
        "sdpa (dense)": (lambda: F.scaled_dot_product_attention(qt, kt, vt), [qt, kt, vt]),
    }
    if reference:
        impls["reference"] = (
            lambda: na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb, backend="reference"), params)
    row = dict(case=case.name, batch=B)
    for name, (fn, ps) in impls.items():
        grad = gt if name in ("flex", "sdpa (dense)") else g
        try:
            with torch.no_grad():
                row[f"{name} fwd"] = _timeit(fn)
            row[f"{name} fwd+bwd"] = _timeit(lambda: torch.autograd.grad(fn(), ps, grad))
        except Exception as e:  # OOM, or a peer that cannot run this case
            log(f"  {name} failed: {type(e).__name__}: {str(e)[:300]}")
            row.setdefault(f"{name} fwd", float("nan"))
            row[f"{name} fwd+bwd"] = float("nan")
            torch.cuda.empty_cache()
        log(f"  {case.name} {name}: {row.get(f'{name} fwd'):.1f} / {row.get(f'{name} fwd+bwd'):.1f} us")
    for name, grad in (("triton", g), ("flex", gt)):
        fn, ps = impls[name]
        try:
            with torch.no_grad():
                row[f"{name} fwd GPU-only"] = _gpu_time(fn)
            row[f"{name} fwd+bwd GPU-only"] = _gpu_time(lambda: torch.autograd.grad(fn(), ps, grad))
        except Exception as e:
            log(f"  {name} GPU-only failed: {type(e).__name__}: {str(e)[:300]}")
            row[f"{name} fwd GPU-only"] = row[f"{name} fwd+bwd GPU-only"] = float("nan")
    if case.kernel == 7:
        io_bytes = 4 * q.numel() * q.element_size() + B * n * case.heads * 4  # q, k, v, o + lse
        row["triton fwd HBM %"] = 100 * io_bytes / (row["triton fwd"] * 1e-6) / HBM_BYTES_PER_S
        gpu_s = row["triton fwd GPU-only"] * 1e-6
        row["triton fwd GPU-only HBM %"] = 100 * io_bytes / gpu_s / HBM_BYTES_PER_S
    row["fwd speedup vs flex"] = row["flex fwd"] / row["triton fwd"]
    row["fwd+bwd speedup vs flex"] = row["flex fwd+bwd"] / row["triton fwd+bwd"]
    row["GPU-only fwd speedup vs flex"] = row["flex fwd GPU-only"] / row["triton fwd GPU-only"]
    row["GPU-only fwd+bwd speedup vs flex"] = row["flex fwd+bwd GPU-only"] / row["triton fwd+bwd GPU-only"]
    log(json.dumps(row))
    return row


def _host_time(fn: Callable, calls: int = 300) -> float:
    """Wall time per call (us) of back-to-back calls with no sync between them: host-bound for small work."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


class _Identity(torch.autograd.Function):
    """The cheapest custom autograd op: the floor that PyTorch's autograd puts under any of them."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def host_costs(cases, log=print) -> list[dict]:
    """Where the host time of one eager call goes (us per call), for the cases whose eager times are
    host-bound: allocation, vizoo's wrappers with and without the cached launch, autograd's floor, Flex."""
    from vizoo.kernels import na2d
    from vizoo.kernels.neighborhood import triton as tk

    rows = []
    for case in cases:
        q, k, v, rpb = _inputs(case, case.batch, torch.bfloat16)
        params = [q, k, v] + ([rpb] if rpb is not None else [])
        g = torch.randn_like(q)
        opts = ((case.kernel,) * 2, (case.dilation,) * 2, (1, 1), (False, False), case.dim ** -0.5)
        out, lse = tk.forward(q, k, v, rpb, *opts)
        flex, block_mask, _ = _flex_fns(case)
        qt, kt, vt, gt = _flex_layout(q, k, v, g)

        def na():
            return na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb, backend="triton")

        def na_no_grad():
            with torch.no_grad():
                return na()

        fns = {
            "torch.empty (q-sized)": lambda: torch.empty_like(q),
            "triton.forward, JIT launch": lambda: (tk._COMPILED.clear(), tk.forward(q, k, v, rpb, *opts)),
            "triton.forward, cached launch": lambda: tk.forward(q, k, v, rpb, *opts),
            "triton.backward": lambda: tk.backward(g, q, k, v, out, lse, rpb, *opts, rpb is not None),
            "na2d fwd (no grad)": na_no_grad,
            "na2d fwd (grad)": na,
            "identity autograd.Function fwd+grad": lambda: torch.autograd.grad(_Identity.apply(q), [q], g),
            "na2d fwd+grad": lambda: torch.autograd.grad(na(), params, g),
            "flex fwd+grad": lambda: torch.autograd.grad(flex(qt, kt, vt, block_mask=block_mask), [qt, kt, vt], gt),
        }
        row = dict(case=case.name, **{name: _host_time(fn) for name, fn in fns.items()})
        rows.append(row)
        log(json.dumps(row))
    return rows


TUNE_CONFIGS = [  # tile configs swept by --tune (k = 7 favourites first)
    dict(TH=8, TW=8, KR=4, KC=16, num_warps=4), dict(TH=8, TW=8, KR=2, KC=16, num_warps=2),
    dict(TH=8, TW=8, KR=2, KC=16, num_warps=4), dict(TH=8, TW=8, KR=1, KC=16, num_warps=2),
    dict(TH=8, TW=8, KR=1, KC=16, num_warps=4), dict(TH=4, TW=8, KR=4, KC=16, num_warps=2),
    dict(TH=4, TW=8, KR=2, KC=16, num_warps=2), dict(TH=4, TW=8, KR=2, KC=16, num_warps=1),
    dict(TH=4, TW=8, KR=4, KC=16, num_warps=4), dict(TH=16, TW=8, KR=2, KC=16, num_warps=4),
    dict(TH=8, TW=8, KR=4, KC=16, num_warps=4, num_stages=1), dict(TH=8, TW=8, KR=2, KC=16, num_warps=2,
                                                                   num_stages=1),
    dict(TH=8, TW=8, KR=2, KC=16, num_warps=4, num_stages=1), dict(TH=4, TW=8, KR=2, KC=16, num_warps=2,
                                                                   num_stages=1),
]


def tune(cases, log=print) -> list[dict]:
    """Sweep tile configs for the forward, for both backward kernels ("bwd") and for the dK/dV kernel alone
    ("dkdv", the dQ kernel at its default); report each config's time per case."""
    from vizoo.kernels import na2d
    from vizoo.kernels.neighborhood import triton as tk

    rows = []
    for case in cases:
        torch.manual_seed(0)
        q, k, v, rpb = _inputs(case, case.batch, torch.bfloat16)
        params = [q, k, v] + ([rpb] if rpb is not None else [])
        g = torch.randn_like(q)
        for which in ("fwd", "bwd", "dkdv"):
            for cfg in TUNE_CONFIGS:
                tk.CONFIG_OVERRIDE[which] = cfg
                fwd = lambda: na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb,  # noqa: E731
                                   backend="triton")
                try:
                    if which == "fwd":
                        with torch.no_grad():
                            t, gpu = _timeit(fwd, reps=50), _gpu_time(fwd)
                    else:  # forward + backward: the forward's config stays the default
                        step = lambda: torch.autograd.grad(fwd(), params, g)  # noqa: E731
                        t, gpu = _timeit(step, reps=50), _gpu_time(step)
                except Exception as e:  # a config that does not compile (e.g. out of shared memory)
                    t = gpu = float("nan")
                    log(f"  config {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
                row = dict(case=case.name, which=which, time_us=t, gpu_us=gpu, **cfg)
                rows.append(row)
                log(json.dumps(row))
            tk.CONFIG_OVERRIDE[which] = {}
    return rows


MODELS = ("nat_tiny", "dinat_tiny", "swin_tiny_patch4_window7_224")


def bench_models(names=MODELS, batch: int = 256, log=print, compile: bool = False,
                 profile: bool = False) -> list[dict]:
    """Images/s of whole backbones at 224, bf16 autocast: inference and one training step (fwd+bwd).

    Inference is also reported GPU-only (batch / summed kernel time from the profiler), which does not move
    with the host's load; the wall-clock rates of a shared VM varied by up to 1.6x between runs.

    ``compile``: also inference under ``torch.compile`` (default inductor). ``profile``: log the inference's
    ten most expensive GPU kernels (ms per batch, from ``torch.profiler``).
    """
    import timm

    import vizoo  # noqa: F401  (registers vizoo's models with timm)

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).cuda()
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        row = dict(model=name, batch=batch, params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            row["infer img/s"] = batch / (_timeit(lambda: model(x), reps=300) * 1e-6)
            row["infer img/s GPU-only"] = batch / (_gpu_time(lambda: model(x), iters=5) * 1e-6)
            if profile:
                _log_top_kernels(lambda: model(x), name, log)
            if compile:
                compiled = torch.compile(model)
                compiled(x)
                row["compiled infer img/s"] = batch / (_timeit(lambda: compiled(x), reps=300) * 1e-6)
        model.train()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().logsumexp(-1).mean()
            loss.backward()

        row["train step img/s"] = batch / (_timeit(step, reps=300) * 1e-6)
        rows.append(row)
        log(json.dumps(row))
        model = compiled = None  # free them before the next one is built
        torch.cuda.empty_cache()
    return rows


def _log_top_kernels(fn: Callable, name: str, log, iters: int = 5, top: int = 10) -> None:
    events = sorted(_kernel_events(fn, iters), key=lambda e: -e.device_time_total)
    log(f"  {name}: GPU ms per batch {sum(e.device_time_total for e in events) / iters / 1e3:.2f}; top kernels:")
    for e in events[:top]:
        log(f"    {e.device_time_total / iters / 1e3:8.3f} ms {e.count // iters:4d}x  {e.key[:100]}")


def _fmt(x) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if x != 0 and abs(x) < 0.01:
            return f"{x:.1e}"
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"
    return str(x)


def markdown_table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def environment() -> str:
    import triton

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{name}, torch {torch.__version__}, triton {triton.__version__}, "
            f"python {platform.python_version()},"
            f" {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vizoo bench", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="first check Triton vs reference on the GPU")
    parser.add_argument("--tune", action="store_true", help="sweep kernel tile configs only")
    parser.add_argument("--host", action="store_true", help="break down the host time of eager calls only")
    parser.add_argument("--no-reference", action="store_true", help="skip timing the (slow) reference")
    parser.add_argument("--models", action="store_true", help="also time whole backbones (images/s)")
    parser.add_argument("--only-models", action="store_true", help="time only the backbones")
    parser.add_argument("--compile", action="store_true", help="backbones: also time torch.compile inference")
    parser.add_argument("--profile", action="store_true", help="backbones: log the top GPU kernels")
    parser.add_argument("--cases", default="", help="comma-separated substrings selecting cases")
    parser.add_argument("--json", default=None, help="also write the raw rows to this JSON file")
    parser.add_argument("--markdown", default=None, help="write the markdown tables to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("vizoo bench needs a CUDA GPU", file=sys.stderr)
        return 2
    wanted = [w for w in args.cases.split(",") if w]
    cases = ([c for c in CASES if c.name in wanted] or [c for c in CASES if any(w in c.name for w in wanted)]
             if wanted else CASES)
    out: dict = {"environment": environment(), "command": "vizoo bench " + " ".join(argv or sys.argv[1:])}
    print(out["environment"], flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.check:
        out["check"] = check(cases, log)
    if args.tune:
        out["tune"] = tune(cases, log)
    elif args.host:
        out["host"] = host_costs(cases, log)
    elif not args.only_models:
        out["kernels"] = bench_kernels(cases, log, reference=not args.no_reference)
    if args.models or args.only_models:
        out["models"] = bench_models(log=log, compile=args.compile, profile=args.profile)
    md = [f"Machine: {out['environment']}", f"Command: `{out['command']}`", ""]
    for key in ("check", "kernels", "models", "tune", "host"):
        if key in out:
            md += [f"### {key}", "", markdown_table(out[key]), ""]
    text = "\n".join(md)
    print(text)
    from vizoo.utils import atomic_write_text

    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1))
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

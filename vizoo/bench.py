"""``vizoo bench``: GPU benchmarks of vizoo's kernels (and backbones) against their peers, side by side.

Neighborhood attention (bf16, heads-last inputs): vizoo's Triton kernel vs PyTorch FlexAttention (compiled,
with a block mask from an arithmetic NATTEN-semantics ``mask_mod`` and a ``score_mod`` for RPB), dense SDPA
over all tokens (full attention: what NA replaces, not the same operator) and the PyTorch reference. Shapes are the
four NAT-Tiny stages at 224 (batch 64), a DiNAT dilation-8 layer at 56x56 and a 128x128 high-resolution
case (k=13, head dim 64). FlexAttention and SDPA get their native ``[B, heads, N, dim]`` layout (no
transpose is timed). Times are medians of ``triton.testing.do_bench``.

Backbones as a timm user measures them: ``--timm DIR`` runs timm's own ``benchmark.py`` (from a
pytorch-image-models checkout, after ``import vizoo``) on vizoo's models and their timm peers in one command:
default NCHW input, bf16 AMP, batch 256, eager and ``--torchcompile``, inference and training, and tabulates
images/s and the ratios to the peer.

CPU memory: ``--cpu-memory`` measures the peak resident memory of one batch-1 CPU training step of vizoo's
largest models beside a comparable timm model, each in a fresh subprocess (no GPU needed). ``--gpu-memory`` does
the same on the GPU for the ``--timm-models`` pairs (default NAT vs Swin), bf16 autocast, batch ``--timm-batch``:
the peak CUDA memory allocated over one training step.

Usage: ``vizoo bench [--check] [--tune | --host] [--models [--compile] [--profile]] [--cases A,B] [--json F]
[--markdown F]``, ``vizoo bench --timm DIR [--timm-batch N]``, ``vizoo bench --gpu-memory`` (these need a CUDA
GPU), ``vizoo bench --cpu-memory``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
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


def na_mask_mod(height: int, width: int, kernel: int, dilation: int = 1) -> Callable:
    """FlexAttention ``mask_mod`` of 2-D neighborhood attention (NATTEN's semantics, stride 1, not causal) in
    pure index arithmetic: no table lookups, so the compiled mask is a few integer ops per pair.

    Per axis: the pair must share the dilation group (``index % dilation``); in group coordinates
    (``index // dilation``) the window is centred on the query, shifted inwards at the group's borders
    (``group_len = ceil((L - group) / dilation)``), with ``kernel // 2`` keys on the left and the rest on the
    right.
    """
    left = kernel // 2
    right = kernel - 1 - left

    def axis(q, kv, length):
        group = q % dilation
        qc, kc = q // dilation, kv // dilation
        group_len = (length - group + dilation - 1) // dilation
        centre = torch.clamp(torch.minimum(qc, group_len - 1 - right), min=left)
        return (kv % dilation == group) & (kc >= centre - left) & (kc <= centre + right)

    def mask_mod(b, h, q_idx, kv_idx):
        return axis(q_idx // width, kv_idx // width, height) & axis(q_idx % width, kv_idx % width, width)

    return mask_mod


def _flex_fns(case: Case):
    """FlexAttention (compiled) and a block mask equivalent to na2d (arithmetic ``na_mask_mod``)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    H, W = case.size
    n = H * W
    block_mask = create_block_mask(na_mask_mod(H, W, case.kernel, case.dilation), None, None, n, n,
                                   device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    return compiled, block_mask


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
    flex, block_mask = _flex_fns(case)
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
    from vizoo.kernels import _backend, na2d
    from vizoo.kernels.neighborhood import triton as tk

    rows = []
    for case in cases:
        q, k, v, rpb = _inputs(case, case.batch, torch.bfloat16)
        params = [q, k, v] + ([rpb] if rpb is not None else [])
        g = torch.randn_like(q)
        opts = ((case.kernel,) * 2, (case.dilation,) * 2, (1, 1), (False, False), case.dim ** -0.5)
        out, lse = tk.forward(q, k, v, rpb, *opts)
        flex, block_mask = _flex_fns(case)
        qt, kt, vt, gt = _flex_layout(q, k, v, g)

        def na():
            return na2d(q, k, v, case.kernel, dilation=case.dilation, rpb=rpb, backend="triton")

        def na_no_grad():
            with torch.no_grad():
                return na()

        fns = {
            "torch.empty (q-sized)": lambda: torch.empty_like(q),
            "triton.forward, JIT launch": lambda: (_backend._COMPILED.clear(), tk.forward(q, k, v, rpb, *opts)),
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


# (vizoo model, timm peer of similar FLOPs) for timm's own benchmark.py; the NAT pairs run by default, the
# others when named with --timm-models (InLine-DeiT needs benchmark.py's --gp token, like timm's ViT: run by hand)
TIMM_PAIRS = (
    ("nat_tiny", "swin_tiny_patch4_window7_224"),
    ("dinat_tiny", "swin_tiny_patch4_window7_224"),
    ("nat_small", "swin_small_patch4_window7_224"),
    ("dinat_small", "swin_small_patch4_window7_224"),
    ("nat_base", "swin_base_patch4_window7_224"),
)
TIMM_MORE_PAIRS = (
    ("overlock_xt", "convnext_nano"),
    ("overlock_t", "convnext_tiny"),
    ("overlock_s", "convnext_small"),
    ("overlock_b", "convnext_base"),
    ("inline_swin_tiny", "swin_tiny_patch4_window7_224"),
    ("inline_pvt_small", "pvt_v2_b2"),
)
# "cudagraphs": compiled with Inductor's CUDA graphs (``torch.compile(mode="reduce-overhead")``), which replay a
# step's launches without the host's per-kernel cost
TIMM_MODES = {
    "eager": [],
    "compiled": ["--torchcompile"],
    "cudagraphs": ["--torchcompile", "--torchcompile-mode", "reduce-overhead"],
    "channels-last": ["--channels-last"],
}
TIMM_DEFAULT_MODES = ("eager", "compiled")

# Imports vizoo (registering its models with timm), then runs timm's benchmark.py as its own __main__.
_TIMM_RUNNER = ("import runpy, sys, vizoo; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")


def timm_benchmark_script(timm_repo: str) -> str:
    """Path of ``benchmark.py`` in a pytorch-image-models checkout (or the file itself).

    Raises:
        FileNotFoundError: when there is no benchmark.py there.
    """
    import os

    path = timm_repo if timm_repo.endswith(".py") else os.path.join(timm_repo, "benchmark.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no timm benchmark script at {path}: pass --timm a pytorch-image-models "
                                "checkout (github.com/huggingface/pytorch-image-models) or its benchmark.py")
    return path


def timm_benchmark_command(script: str, model_list: str, results_file: str, mode: str, batch: int = 256,
                           extra: tuple = ()) -> list[str]:
    """The command line that runs timm's ``benchmark.py`` on the models listed in ``model_list`` (one name per
    line) after ``import vizoo``: inference and training, bf16 AMP, default NCHW input, JSON results."""
    if mode not in TIMM_MODES:
        raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(TIMM_MODES)}")
    return [sys.executable, "-c", _TIMM_RUNNER, script, "--model-list", model_list, "--bench", "both",
            "--amp", "--amp-dtype", "bfloat16", "-b", str(batch), "--results-file", results_file,
            "--results-format", "json", *TIMM_MODES[mode], *extra]


def timm_table(results: dict, pairs=TIMM_PAIRS) -> list[dict]:
    """One row per (pair, mode) from benchmark.py's results (``{mode: [result dicts]}``): images/s of the
    vizoo model and its peer, inference and training, and their ratios (vizoo / peer)."""
    rows = []
    for mode, entries in results.items():
        by_name = {r["model"]: r for r in entries}
        for ours, peer in pairs:
            a, b = by_name.get(ours, {}), by_name.get(peer, {})
            row = {"mode": mode, "model": ours, "peer": peer}
            for kind in ("infer", "train"):
                x = float(a.get(f"{kind}_samples_per_sec", "nan"))
                y = float(b.get(f"{kind}_samples_per_sec", "nan"))
                row[f"{kind} img/s"], row[f"peer {kind} img/s"] = x, y
                row[f"{kind} ratio"] = x / y if y == y and y else float("nan")
            errors = [f"{n}: {r['error'][:80]}" for n, r in ((ours, a), (peer, b)) if "error" in r]
            if errors or not a or not b:
                row["note"] = "; ".join(errors) or "missing from benchmark.py's results"
            rows.append(row)
    return rows


def run_timm_benchmark(timm_repo: str, pairs=TIMM_PAIRS, modes=TIMM_DEFAULT_MODES, batch: int = 256,
                       extra: tuple = (), log=print) -> list[dict]:
    """Run timm's benchmark.py (one process per mode, every model of ``pairs`` in it) and tabulate."""
    import subprocess
    import tempfile

    script = timm_benchmark_script(timm_repo)
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_list = f"{tmp}/models.txt"
        with open(model_list, "w") as f:
            f.write("\n".join(names) + "\n")
        for mode in modes:
            out = f"{tmp}/{mode}.json"
            cmd = timm_benchmark_command(script, model_list, out, mode, batch, extra)
            log(f"[{mode}] " + " ".join(cmd[3:]))
            subprocess.run(cmd, check=False)
            try:
                with open(out) as f:
                    results[mode] = json.load(f)
            except (OSError, ValueError):
                log(f"[{mode}] benchmark.py wrote no results")
                results[mode] = []
    return timm_table(results, pairs)


# vizoo's largest models (largest tag) and the timm model each is held against for CPU training memory
MEMORY_PAIRS = (
    ("dinat_large.in22k_ft_in1k_384", "swin_large_patch4_window12_384"),
    ("dinat_large_k11.in22k_ft_in1k_384", "swin_large_patch4_window12_384"),
    ("nat_base.in1k", "swin_base_patch4_window7_224"),
    ("dinat_iso_base.in1k", "vit_base_patch16_224"),
)

# Each runs in a fresh interpreter, so that its peak (resident CPU memory, VmHWM; or CUDA memory allocated) is this
# one training step's alone: forward, a scalar loss, backward; bf16 autocast on the GPU.
_MEMORY_CHILD = r"""
import json, sys, torch, timm, vizoo
name, device, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
def status(key):
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() if key == "peak" else torch.cuda.memory_allocated()
    key = dict(peak="VmHWM", built="VmRSS")[key]
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
torch.manual_seed(0)
model = timm.create_model(name, pretrained=False).train().to(device)
size = model.pretrained_cfg["input_size"]
x = torch.randn(batch, *size, device=device)
built = status("built")
with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
    loss = model(x).float().logsumexp(-1).mean()
loss.backward()
print(json.dumps(dict(input=[batch, *size], built=built, peak=status("peak"))))
"""


def peak_train_memory(name: str, device: str = "cpu", batch: int = 1) -> dict:
    """Memory (bytes) of a fresh process after building ``name`` (``arch.tag``: the tag's input size) and its peak
    over one training step (forward, backward), measured in a subprocess: resident memory on the CPU, CUDA memory
    allocated on the GPU."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, name, device, str(batch)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_memory(pairs=MEMORY_PAIRS, log=print, measure: Callable[[str], dict] = peak_train_memory) -> list[dict]:
    """Peak memory of one training step, each vizoo model beside its timm peer (``measure(name)``: the input
    shape, the memory once built and the peak, in bytes)."""
    gib = 2.0**30
    cache: dict = {}
    rows = []
    for ours, peer in pairs:
        for name in (ours, peer):
            if name not in cache:
                cache[name] = measure(name)
        a, b = cache[ours], cache[peer]
        row = {"model": ours, "input": "x".join(map(str, a["input"])), "peak GiB": a["peak"] / gib,
               "step GiB": (a["peak"] - a["built"]) / gib, "peer": peer, "peer peak GiB": b["peak"] / gib,
               "peer step GiB": (b["peak"] - b["built"]) / gib, "peak / peer": a["peak"] / b["peak"]}
        rows.append(row)
        log(json.dumps(row))
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
    parser.add_argument("--rpb-chunk-bytes", type=int, default=None,
                        help="override vizoo.kernels.neighborhood.triton.RPB_CHUNK_BYTES (0: the RPB is gathered "
                             "in the kernels)")
    parser.add_argument("--rpb-chunk-passes", default=None,
                        help="override vizoo.kernels.neighborhood.triton.RPB_CHUNK_PASSES: comma-separated NA "
                             "launches that read the chunk-layout RPB (fwd, bwd = dQ, dkdv; default fwd,bwd,dkdv), "
                             "plus dsum: dQ sums the score gradients in that layout by atomics")
    parser.add_argument("--json", default=None, help="also write the raw rows to this JSON file")
    parser.add_argument("--markdown", default=None, help="write the markdown tables to this file")
    parser.add_argument("--cpu-memory", action="store_true",
                        help="only measure the peak CPU memory of a batch-1 training step, vizoo vs timm (no GPU)")
    parser.add_argument("--gpu-memory", action="store_true",
                        help="only measure the peak GPU memory of a training step (bf16 autocast, batch "
                             "--timm-batch) of the --timm-models and their peers")
    parser.add_argument("--timm", default=None, metavar="DIR",
                        help="only run timm's benchmark.py from this pytorch-image-models checkout on vizoo's "
                             "models and their timm peers (eager and --torchcompile, inference and training)")
    parser.add_argument("--timm-batch", type=int, default=256, help="--timm: batch size (default 256)")
    parser.add_argument("--timm-modes", default=",".join(TIMM_DEFAULT_MODES),
                        help=f"--timm: comma-separated modes, each one benchmark.py process (accepted: "
                             f"{', '.join(TIMM_MODES)}; default %(default)s)")
    parser.add_argument("--timm-models", default="",
                        help="--timm: comma-separated vizoo models to run with their peers (default: the NAT models; "
                             "OverLoCK and InLine-Swin/PVT when named)")
    args = parser.parse_args(argv)
    if args.timm:  # bad paths, modes and names fail before anything runs
        timm_benchmark_script(args.timm)
    if args.timm or args.gpu_memory:
        modes = tuple(m for m in args.timm_modes.split(",") if m)
        unknown = [m for m in modes if m not in TIMM_MODES]
        if unknown or not modes:
            parser.error(f"--timm-modes: unknown {unknown or 'empty'}; accepted: {', '.join(TIMM_MODES)}")
        keep = [n for n in args.timm_models.split(",") if n]
        pairs = tuple(p for p in TIMM_PAIRS + TIMM_MORE_PAIRS if p[0] in keep) if keep else TIMM_PAIRS
        if not pairs:
            known = ", ".join(p[0] for p in TIMM_PAIRS + TIMM_MORE_PAIRS)
            parser.error(f"--timm-models: none of {keep} is paired; accepted: {known}")
    passes = None
    if args.rpb_chunk_passes is not None:
        passes = tuple(w for w in args.rpb_chunk_passes.split(",") if w)
        unknown = sorted(set(passes) - {"fwd", "bwd", "dkdv", "dsum"})
        if unknown:
            parser.error(f"--rpb-chunk-passes: unknown {', '.join(unknown)}; accepted: fwd, bwd, dkdv, dsum")
    if args.cpu_memory:
        return _write(dict(cpu_memory=train_memory()), args, argv)
    if not torch.cuda.is_available():
        print("vizoo bench needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.gpu_memory:
        measure = functools.partial(peak_train_memory, device="cuda", batch=args.timm_batch)
        return _write(dict(gpu_memory=train_memory(pairs, measure=measure)), args, argv)
    if args.timm:
        return _write(dict(timm=run_timm_benchmark(args.timm, pairs, modes, batch=args.timm_batch)), args, argv)
    from vizoo.kernels.neighborhood import triton as _na_triton

    if args.rpb_chunk_bytes is not None:
        _na_triton.RPB_CHUNK_BYTES = args.rpb_chunk_bytes
    if passes is not None:
        _na_triton.RPB_CHUNK_PASSES = passes
    wanted = [w for w in args.cases.split(",") if w]
    cases = ([c for c in CASES if c.name in wanted] or [c for c in CASES if any(w in c.name for w in wanted)]
             if wanted else CASES)
    out: dict = {}
    print(environment(), flush=True)
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
    return _write(out, args, argv)


def _write(out: dict, args, argv) -> int:
    """Print the tables of ``out`` as markdown (machine and command first); write --json / --markdown."""
    out = {"environment": environment(), "command": "vizoo bench " + " ".join(argv or sys.argv[1:]), **out}
    md = [f"Machine: {out['environment']}", f"Command: `{out['command']}`", ""]
    for key in ("check", "kernels", "models", "timm", "tune", "host", "cpu_memory", "gpu_memory"):
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

"""Benchmark ``na2d_av`` (OverLoCK's ContMix aggregation) on a CUDA GPU: vizoo's Triton kernels against the plain
PyTorch forms, bf16, forward and forward+backward, with the HBM bandwidth each achieves.

Contenders: ``triton`` (vizoo's fused kernels as shipped: ``vizoo.kernels.contmix.triton.ROWS_PASSES`` picks the
kernels per pass; the band-matrix kernels by default), ``triton gather`` (the per-tap gather kernels, which
dilated calls take), ``gather`` (the reference: index-gather of every window then
einsum), ``unfold`` (OverLoCK's own fallback formulation: ``F.unfold`` plus border re-indexing, then einsum),
and ``torch.compile`` (inductor) of both plain forms, the best plain-PyTorch formulation we have.
Bandwidth counts the bytes the op cannot avoid moving: forward reads attn and v and writes out; backward reads
attn, v and the output gradient and writes d_attn and d_v. ``us`` columns are medians of ``triton.testing.do_bench``
through the public op (where the host takes longer per call than the GPU, they measure the host); ``GPU us``
columns are the kernels' time from the profiler, and the HBM fractions use those.

A second table times ContMix's whole inference chain for one half (one kernel size) at the same shapes, bf16,
no gradients: ``unfused`` (affinities of the queries with 49 region keys, the Linear to ``k*k`` logits, the relative
position bias, softmax, then ``na2d_av``, as ``ContMix.forward`` runs it, with the ``[B, H, W, G, k*k]`` weights in
memory) against ``fused`` (the projected keys ``kp = key @ Wp^T``, then ``contmix_fused_forward``: weights computed
inside the aggregation kernel; what ``overlock.FUSED_CONTMIX`` switches on).

``--models`` also times whole backbones side by side in the same process (bf16 autocast, batch 256, 224):
``overlock_t`` vs ``convnext_tiny`` and ``overlock_s`` vs ``convnext_small``, inference (OverLoCK also after
``reparameterize()``, as timm's ``benchmark.py --reparam`` does) and a training step, eager and with
``--compile`` under ``torch.compile``, and logs each model's ten most expensive GPU kernels (where the time goes).

Usage (GPU): ``PYTHONPATH=. python3 tools/bench_contmix.py [--models [--compile]] [--markdown F] [--json F]``
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from vizoo.bench import HBM_BYTES_PER_S, _gpu_time, _log_top_kernels, _timeit, environment, markdown_table
from vizoo.kernels import na2d_av
from vizoo.kernels.contmix import contmix_fused_forward
from vizoo.kernels.contmix import triton as contmix_triton
from vizoo.kernels.contmix.reference import na2d_av_reference, na2d_av_unfold, window_rpb_bias
from vizoo.utils import atomic_write_text


@dataclass
class Case:
    name: str
    batch: int
    size: tuple
    heads: int
    dim: int
    kernel: int


CASES = [  # OverLoCK-T's Focus-Net shapes at 224 (G groups of 16 channels), and a high-resolution map
    Case("T s3 14x14 k13 G8", 128, (14, 14), 8, 16, 13),
    Case("T s3 14x14 k5 G8", 128, (14, 14), 8, 16, 5),
    Case("T s4 7x7 k7 G16", 128, (7, 7), 16, 16, 7),
    Case("56x56 k13 G8", 32, (56, 56), 8, 16, 13),
]


def _inputs(case: Case, batch: int, dtype):
    shape = (batch, *case.size, case.heads)
    attn = torch.randn(*shape, case.kernel**2, device="cuda", dtype=dtype).softmax(-1).requires_grad_()
    v = torch.randn(*shape, case.dim, device="cuda", dtype=dtype, requires_grad=True)
    return attn, v


def _forms(k: int) -> dict:
    gather = lambda a, v: na2d_av_reference(a, v, (k, k), (1, 1))  # noqa: E731
    unfold = lambda a, v: na2d_av_unfold(a, v, k)  # noqa: E731
    return {
        "triton": lambda a, v: na2d_av(a, v, k, backend="triton"),
        "triton gather": lambda a, v: na2d_av(a, v, k, backend="triton"),  # ROWS_PASSES set by bench_case
        "gather": gather,
        "unfold": unfold,
        "gather compiled": torch.compile(gather, dynamic=False),
        "unfold compiled": torch.compile(unfold, dynamic=False),
    }


DEFAULT_PASSES = contmix_triton.ROWS_PASSES
KERNELS = {"triton": DEFAULT_PASSES, "triton gather": ()}  # triton form: its ROWS_PASSES


def _rows(passes: tuple) -> None:
    contmix_triton.ROWS_PASSES = passes


def check(case: Case, kernels: str) -> float:
    """Max |triton - reference| over out, d_attn, d_v in float32 at batch 2 (``kernels``: a key of KERNELS)."""
    attn, v = _inputs(case, 2, torch.float32)
    err = 0.0
    outs = {}
    _rows(KERNELS[kernels])
    for backend in ("reference", "triton"):
        out = na2d_av(attn, v, case.kernel, backend=backend)
        grad = outs.get("grad", torch.randn_like(out))
        outs["grad"] = grad
        outs[backend] = [out, *torch.autograd.grad(out, (attn, v), grad)]
    _rows(DEFAULT_PASSES)
    for r, t in zip(outs["reference"], outs["triton"]):
        err = max(err, (r - t).abs().max().item())
    return err


# wall time per call (CUDA events: the host's time counts where it is the longer) and GPU kernel time only
TIMES = ("fwd us", "fwd+bwd us", "fwd GPU us", "fwd+bwd GPU us")


def bench_case(case: Case, log=print) -> list[dict]:
    import torch._dynamo

    torch._dynamo.reset()
    attn, v = _inputs(case, case.batch, torch.bfloat16)
    grad = torch.randn_like(v)
    nbytes = attn.element_size()
    fwd_bytes = (attn.numel() + 2 * v.numel()) * nbytes
    bwd_bytes = (2 * attn.numel() + 3 * v.numel()) * nbytes
    rows = []
    for name, fn in _forms(case.kernel).items():
        row = dict(case=case.name, batch=case.batch, form=name)
        _rows(KERNELS.get(name, DEFAULT_PASSES))
        try:
            with torch.no_grad():
                fn(attn, v)
                fwd = _timeit(lambda: fn(attn, v))
                fwd_gpu = _gpu_time(lambda: fn(attn, v), iters=10)

            def step():
                torch.autograd.grad(fn(attn, v), (attn, v), grad)

            step()
            both = _timeit(step)
            both_gpu = _gpu_time(step, iters=10)
        except torch.cuda.OutOfMemoryError:
            row.update({key: float("nan") for key in TIMES})
            rows.append(row)
            torch.cuda.empty_cache()
            continue
        row.update({"fwd us": fwd, "fwd+bwd us": both, "fwd GPU us": fwd_gpu, "fwd+bwd GPU us": both_gpu,
                    "fwd HBM %": 100 * fwd_bytes / (fwd_gpu * 1e-6) / HBM_BYTES_PER_S,
                    "fwd+bwd HBM %": 100 * (fwd_bytes + bwd_bytes) / (both_gpu * 1e-6) / HBM_BYTES_PER_S})
        rows.append(row)
        log(json.dumps(row))
    _rows(DEFAULT_PASSES)
    plain = [r for r in rows if not r["form"].startswith("triton") and r["fwd us"] == r["fwd us"]]  # NaN: OOM
    best_plain = {key: min(r[key] for r in plain) for key in TIMES} if plain else None
    for r in rows:
        if r["form"].startswith("triton") and best_plain and r["fwd us"] == r["fwd us"]:
            for key in TIMES:
                r[key.replace(" us", " x best plain")] = best_plain[key] / r[key]
    return rows


REGIONS = 49  # ContMix's 7x7 pooled region centres


def chain_inputs(case: Case, batch: int, dtype, device="cuda") -> dict:
    """One ContMix half at ``case``'s shape: queries, region keys, the Linear to ``k*k`` taps and values in
    ``dtype``, the rpb table in float32 (a parameter under autocast, as in the model)."""
    torch.manual_seed(0)
    k, G, c = case.kernel, case.heads, case.dim
    f = dict(device=device, dtype=dtype)
    return dict(q=torch.randn(batch, *case.size, G, c, **f), key=torch.randn(batch, G, c, REGIONS, **f),
                proj=torch.nn.Linear(REGIONS, k * k).to(**f), rpb=torch.randn(G, 2 * k - 1, 2 * k - 1, device=device),
                v=torch.randn(batch, *case.size, G, c, **f), k=k)


def unfused_chain(q, key, proj, rpb, v, k, backend=None):
    """ContMix's unfused inference chain for one half: affinity einsum, Linear, rpb, softmax, ``na2d_av``."""
    B, H, W, G, c = q.shape
    logits = proj(torch.einsum("byxgc,bgcl->byxgl", q, key))
    bias = window_rpb_bias(rpb, H, W).reshape(H, W, G, -1)
    return na2d_av((logits + bias).softmax(-1).to(v.dtype), v, k, backend=backend)


def fused_chain(q, key, proj, rpb, v, k, backend=None):
    """The same through ``contmix_fused_forward``, the projection moved onto the keys (``kp``, per image)."""
    kp = torch.einsum("bgcl,tl->bgct", key, proj.weight)
    return contmix_fused_forward(q, kp, proj.bias, rpb, v, k, backend=backend)


CHAINS = {"unfused": unfused_chain, "fused": fused_chain}


@torch.no_grad()
def check_chain(case: Case, device="cuda", batch: int = 2, backend=None) -> float:
    """Max |fused - unfused| of the chain in float32 (small batch)."""
    args = chain_inputs(case, batch, torch.float32, device)
    return (fused_chain(**args, backend=backend) - unfused_chain(**args, backend=backend)).abs().max().item()


@torch.no_grad()
def bench_chain(case: Case, log=print) -> list[dict]:
    """Inference time of the unfused and fused chains (bf16), with the bytes the unfused one moves for its
    weights, which fusion saves: bf16 logits written and read, fp32 biased logits and softmax written and read,
    the bf16 weights written and read by ``na2d_av`` (24 bytes per weight)."""
    args = chain_inputs(case, case.batch, torch.bfloat16)
    weights = args["q"].shape[:4].numel() * case.kernel**2
    rows = []
    for name, fn in CHAINS.items():
        run = lambda fn=fn: fn(**args)  # noqa: E731
        run()
        row = dict(case=case.name, batch=case.batch, form=name, **{"fwd us": _timeit(run),
                                                                    "fwd GPU us": _gpu_time(run, iters=10)})
        if name == "unfused":
            row["weights MB"] = weights * 24 / 1e6
        rows.append(row)
        log(json.dumps(row))
    for key in ("fwd us", "fwd GPU us"):
        rows[1][key.replace(" us", " x unfused")] = rows[0][key] / rows[1][key]
    return rows


MODEL_PAIRS = (("overlock_t", "convnext_tiny"), ("overlock_s", "convnext_small"))


def bench_models(compile: bool = False, batch: int = 256, log=print) -> list[dict]:
    """Images/s of each backbone: inference (eager, GPU-only, reparameterised, compiled) and a training step."""
    import timm

    import vizoo  # noqa: F401

    rows = []
    for name in [n for pair in MODEL_PAIRS for n in pair]:
        torch.manual_seed(0)
        model = timm.create_model(name).cuda()
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        row = dict(model=name, params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        model.train()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().logsumexp(-1).mean()
            loss.backward()

        row["train img/s"] = batch / (_timeit(step, reps=300) * 1e-6)
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            row["infer img/s"] = batch / (_timeit(lambda: model(x), reps=300) * 1e-6)
            row["infer img/s GPU-only"] = batch / (_gpu_time(lambda: model(x), iters=5) * 1e-6)
            if hasattr(model, "reparameterize"):
                model.reparameterize()
                row["reparam infer img/s"] = batch / (_timeit(lambda: model(x), reps=300) * 1e-6)
            _log_top_kernels(lambda: model(x), name, log)
            if compile:
                compiled = torch.compile(model)
                compiled(x)
                row["compiled infer img/s"] = batch / (_timeit(lambda: compiled(x), reps=300) * 1e-6)
        rows.append(row)
        log(json.dumps(row))
        model = compiled = None
        torch.cuda.empty_cache()
    by_name = {r["model"]: r for r in rows}
    for ours, peer in MODEL_PAIRS:
        for key in [k for k in by_name[ours] if k.endswith("img/s") and k in by_name[peer]]:
            by_name[ours][f"{key} x {peer}"] = by_name[ours][key] / by_name[peer][key]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="write the table (with the environment) to this file")
    parser.add_argument("--json", help="write the rows as JSON to this file")
    parser.add_argument("--models", action="store_true", help="also time overlock_t/s against convnext_tiny/small")
    parser.add_argument("--compile", action="store_true", help="models: also time torch.compile inference")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_contmix needs a CUDA GPU", file=sys.stderr)
        return 2
    print(environment())
    for case in CASES:
        for kernels in KERNELS:
            print(f"check {case.name} {kernels}: max |triton - reference| (fp32) = {check(case, kernels):.2e}")
    for case in CASES:
        print(f"check {case.name} ContMix chain: max |fused - unfused| (fp32) = {check_chain(case):.2e}")
    rows = [r for case in CASES for r in bench_case(case)]
    chains = [r for case in CASES for r in bench_chain(case)]
    table = f"na2d_av, bf16 ({environment()})\n\n{markdown_table(rows)}\n"
    table += f"\nContMix inference chain, one half, bf16\n\n{markdown_table(chains)}\n"
    models = bench_models(compile=args.compile) if args.models else []
    if models:
        table += f"\nbackbones, bf16 autocast, batch 256, 224\n\n{markdown_table(models)}\n"
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, table)
    if args.json:
        atomic_write_text(args.json, json.dumps({"kernels": rows, "chains": chains, "models": models}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

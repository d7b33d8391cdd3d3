"""InLine attention: the reference against a brute-force N x N construction of the weights, the Triton kernel
against the reference (values and every gradient), torch.library integration, and argument checks.

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (set by tests/conftest.py) at small shapes; tests
marked ``gpu`` repeat the comparison at the real InLine model shapes.
"""

from __future__ import annotations

import pytest
import torch

from vizoo.kernels import inline_attn
from vizoo.kernels.inline.reference import inline_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def brute_weights(q, k, scale):
    """The N x N weights ``[B, heads, N, N]`` written entry by entry from the paper's definition (float64):
    ``w_ij = (scale/N)(q_i.k_j - (1/N) sum_s q_i.k_s) + 1/N``."""
    q, k = q.double().transpose(1, 2), k.double().transpose(1, 2)
    B, H, N, _ = q.shape
    w = torch.empty(B, H, N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            dots = (q[:, :, i : i + 1] * k).sum(-1)  # q_i . k_s for all s: [B, H, N]
            w[:, :, i, j] = scale / N * (dots[:, :, j] - dots.mean(-1)) + 1.0 / N
    return w


@pytest.mark.parametrize("B,N,heads,dim", [(1, 1, 1, 4), (2, 7, 3, 8), (1, 17, 2, 5)])
def test_reference_matches_brute_force(B, N, heads, dim):
    q, k, v = (torch.randn(B, N, heads, dim, dtype=torch.float64) for _ in range(3))
    scale = dim**-0.5
    w = brute_weights(q, k, scale)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, heads, N, dtype=torch.float64))
    expected = (w @ v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(inline_attention(q, k, v, scale), expected)
    torch.testing.assert_close(inline_attn(q, k, v), expected)  # default scale = dim ** -0.5
    if N > 1:  # weights are not a softmax: this construction does produce negative ones
        assert (brute_weights(3 * q, 3 * k, 1.0) < 0).any()


def test_reference_gradients_match_brute_force():
    q, k, v = (torch.randn(2, 6, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 6, 2, 4, dtype=torch.float64)
    got = torch.autograd.grad(inline_attn(q, k, v, scale=0.7), (q, k, v), grad)
    out = (brute_weights(q, k, 0.7) @ v.transpose(1, 2)).transpose(1, 2)  # differentiable construction
    expected = torch.autograd.grad(out, (q, k, v), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_collinear_queries_get_distinct_outputs():
    """Injectivity (the paper's point): queries q and 2q get different weights, unlike normalised linear
    attention, whose weights are invariant to scaling q."""
    k, v = torch.randn(1, 9, 1, 4), torch.randn(1, 9, 1, 4)
    q = torch.randn(1, 1, 1, 4).expand(1, 9, 1, 4).contiguous()
    out1, out2 = inline_attn(q, k, v), inline_attn(2 * q, k, v)
    assert not torch.allclose(out1, out2)


# ----------------------------------------------------------------------------------------------------------
# Triton vs reference
def _compare(B, N, heads, dim, dtype, atol=2e-5, rtol=1e-4, device=DEVICE, packed=False, scale=None):
    """Triton vs reference on the output and every gradient; ``packed``: q, k, v are strided views into one
    ``[B, N, 3, heads, dim]`` tensor, as the InLine layers pass them."""
    if packed:
        qkv = torch.randn(B, N, 3, heads, dim, device=device, dtype=dtype, requires_grad=True)
        q, k, v = qkv.unbind(2)
        inputs, names = [qkv], ["out", "dqkv"]
    else:
        q, k, v = (
            torch.randn(B, N, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)
        )
        inputs, names = [q, k, v], ["out", "dq", "dk", "dv"]
    results = {}
    grad = None
    for backend in ("reference", "triton"):
        out = inline_attn(q, k, v, scale=scale, backend=backend)
        assert out.shape == q.shape and out.dtype == dtype
        grad = torch.randn_like(out) if grad is None else grad
        results[backend] = [out] + list(torch.autograd.grad(out, inputs, grad))
    for name, ref, tri in zip(names, results["reference"], results["triton"]):
        torch.testing.assert_close(
            tri.float(), ref.float(), atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize(
    "B,N,heads,dim",
    [
        pytest.param(1, 1, 1, 16, id="one-token"),
        pytest.param(2, 50, 3, 32, id="deit-like"),
        pytest.param(1, 130, 2, 16, id="ragged-tiles"),
        pytest.param(1, 9, 2, 24, id="dim24-padded"),
        pytest.param(2, 33, 1, 8, id="dim8"),
        # more chunk partials than one finalize block sums at once
        pytest.param(1, 64 * 70 + 5, 1, 16, id="70-chunks", marks=pytest.mark.slow),
    ],
)
def test_triton_matches_reference_fp32(B, N, heads, dim):
    _compare(B, N, heads, dim, torch.float32)


@pytest.mark.parametrize("setting", [dict(gram_block_n=32, gram_programs=8, apply_block_n=32),
                                     dict(gram_block_n=128, gram_warps=2, gram_stages=2, apply_block_n=128,
                                          apply_warps=8)])
def test_triton_launch_settings(monkeypatch, setting):
    """Other tile sizes, chunk counts and warps (what ``tools/bench_inline.py --tune`` sweeps) give the same
    values and gradients: several chunks per (batch, head) and a partial last tile."""
    from vizoo.kernels.inline import triton as tk

    for name, value in setting.items():
        monkeypatch.setitem(tk.CONFIG, name, value)
    _compare(2, 150, 2, 16, torch.float32)


@pytest.mark.parametrize("B,N,heads,dim,packed", [(2, 150, 2, 16, False), (3, 37, 1, 24, False), (2, 70, 2, 32, True)])
def test_triton_fused_single_launch(monkeypatch, B, N, heads, dim, packed):
    """The one-launch kernels (``CONFIG["fused"]``, taken for 16-bit inputs when each (batch, head) gets one chunk)
    give the reference's values and gradients: several token tiles, a head dim below its padding, packed qkv views.
    float16 here (the interpreter's bfloat16 dots are wrong); the GPU test covers bfloat16."""
    from vizoo.kernels.inline import triton as tk

    monkeypatch.setitem(tk.CONFIG, "fused", 1)
    monkeypatch.setitem(tk.CONFIG, "gram_programs", 1)  # one chunk per (batch, head) at any size
    taken, real = [], tk._fused
    monkeypatch.setattr(tk, "_fused", lambda *a: taken.append(real(*a)) or taken[-1])
    _compare(B, N, heads, dim, torch.float16, atol=2e-2, rtol=2e-2, packed=packed)
    assert taken and all(taken)


def test_triton_reads_packed_qkv_views():
    _compare(2, 37, 2, 32, torch.float32, packed=True, scale=0.3)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skipif(
                DEVICE == "cpu",
                reason="the Triton interpreter (CPU) computes bf16 dots wrongly; GPU tests cover it",
            ),
        ),
    ],
)
def test_triton_matches_reference_half(dtype):
    _compare(2, 40, 2, 16, dtype, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "B,N,heads,dim",
    [
        (64, 197, 6, 32),
        (16, 3136, 2, 32),
        (8, 784, 4, 32),
        (4, 16384, 6, 32),
        (1, 65536, 6, 32),
        (2, 1000, 3, 64),
        (2, 500, 2, 128),
        (3, 77, 5, 24),
    ],
)
def test_triton_matches_reference_gpu(B, N, heads, dim, dtype):
    if dtype == torch.float32 and dim > 64:
        pytest.skip("the triton backend takes float32 head dims up to 64 (see test_fp32_dim_128_is_refused)")
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _compare(B, N, heads, dim, dtype, device="cuda", **tol)


@pytest.mark.gpu
def test_triton_packed_bf16_gpu():
    _compare(32, 3137, 6, 32, torch.bfloat16, device="cuda", packed=True, atol=3e-2, rtol=3e-2)


def test_fp32_dim_128_is_refused_by_triton_and_dispatched_to_the_reference():
    q = _q(1, 8, 1, 128)
    with pytest.raises(ValueError, match=r"at most 64 \(float32\) or 128 \(float16, bfloat16\).*got 128"):
        inline_attn(q, q, q, backend="triton")
    from vizoo.kernels.inline import check_arguments

    if torch.cuda.is_available():
        assert check_arguments(q.cuda(), q.cuda(), q.cuda(), None, None) == "reference"


# ----------------------------------------------------------------------------------------------------------
# torch.library integration
def test_dispatch_default_backend():
    q = torch.randn(1, 20, 2, 16, device=DEVICE)
    torch.testing.assert_close(inline_attn(q, q, q), inline_attn(q, q, q, backend="reference"))


def test_compile_matches_eager_reference():
    q, k, v = (torch.randn(2, 30, 2, 8) for _ in range(3))
    fn = lambda q, k, v: inline_attn(q, k, v, backend="reference")  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v), fn(q, k, v))


def test_compile_triton_no_graph_break():
    x = torch.randn(1, 20, 2, 16, device=DEVICE, requires_grad=True)
    fn = lambda x: inline_attn(x, x * 2, x.sin(), backend="triton").square().sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    value = compiled(x)
    got = torch.autograd.grad(value, x)[0]
    ref = lambda x: inline_attn(x, x * 2, x.sin(), backend="reference").square().sum()  # noqa: E731
    torch.testing.assert_close(value, ref(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, torch.autograd.grad(ref(x), x)[0], atol=1e-4, rtol=1e-4)


def test_custom_op_opcheck():
    q, k, v = (torch.randn(1, 20, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    torch.library.opcheck(
        torch.ops.vizoo.inline_fwd.default,
        (q, k, v, 0.25),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    out, state, means = torch.ops.vizoo.inline_fwd.default(q, k, v, 0.25)
    torch.library.opcheck(torch.ops.vizoo.inline_bwd.default, (torch.randn_like(out), q, k, v, state, means, 0.25),
                          test_utils=("test_schema", "test_faketensor"))


class _InLineModule(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.proj = torch.nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.proj(x).unflatten(-1, (3, 1, 16)).unbind(2)
        return inline_attn(q, k, v, backend=self.backend)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_export(backend):
    x = torch.randn(2, 12, 16, device=DEVICE)
    module = _InLineModule(backend).to(DEVICE)
    program = torch.export.export(module, (x,))
    if backend == "triton":
        assert "vizoo.inline_fwd" in str(program.graph)
    torch.testing.assert_close(program.module()(x), module(x))


def test_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.randn(2, 21, 3, 16, device=DEVICE, requires_grad=True)
    expected = 4 * 2 * 21 * 3 * 16 * 16
    with FlopCounterMode(display=False) as counter:
        out = inline_attn(q, q, q, backend="triton")
    assert counter.get_total_flops() == expected
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * expected
    with FlopCounterMode(display=False) as counter:  # the reference counts the same (two matmuls)
        inline_attn(q.detach(), q.detach(), q.detach(), backend="reference")
    assert counter.get_total_flops() == expected


# ----------------------------------------------------------------------------------------------------------
# argument checks
def _q(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize(
    "call,match",
    [
        pytest.param(lambda: inline_attn(*[_q(1, 8, 16)] * 3), "layout", id="rank"),
        pytest.param(
            lambda: inline_attn(_q(1, 8, 1, 16), _q(1, 7, 1, 16), _q(1, 8, 1, 16)), "same shape", id="shape"
        ),
        pytest.param(
            lambda: inline_attn(_q(1, 8, 1, 16), _q(1, 8, 1, 16).double(), _q(1, 8, 1, 16)),
            "share a dtype",
            id="mixed-dtype",
        ),
        pytest.param(lambda: inline_attn(*[_q(1, 8, 1, 16).int()] * 3), "unsupported dtype", id="int"),
        pytest.param(
            lambda: inline_attn(*[_q(1, 8, 1, 16, dtype=torch.float64)] * 3, backend="triton"),
            "unsupported dtype",
            id="fp64-triton",
        ),
        pytest.param(lambda: inline_attn(*[_q(1, 8, 1, 256)] * 3, backend="triton"), "head dim", id="dim"),
        pytest.param(lambda: inline_attn(*[_q(1, 0, 1, 16)] * 3), "empty", id="empty"),
        pytest.param(lambda: inline_attn(*[_q(1, 8, 1, 16)] * 3, scale="x"), "scale", id="scale"),
        pytest.param(
            lambda: inline_attn(*[_q(1, 8, 1, 16)] * 3, backend="tritn"),
            "Did you mean 'triton'",
            id="backend",
        ),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _q(1, 8, 1, 16)
    with pytest.raises(ValueError, match="needs CUDA"):
        inline_attn(x, x, x, backend="triton")


def test_flop_counter_counts_the_custom_ops_by_formula():
    """FlopCounterMode counts vizoo::inline_fwd as 4 * B * N * heads * dim^2 and the backward as twice that
    (counted on meta tensors: the ops' fake implementations run, no kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    B, N, heads, dim = 2, 50, 3, 16
    q = torch.empty(B, N, heads, dim, device="meta")
    with FlopCounterMode(display=False) as fwd:
        out, state, means = torch.ops.vizoo.inline_fwd(q, q, q, 0.25)
    with FlopCounterMode(display=False) as bwd:
        torch.ops.vizoo.inline_bwd(out, q, q, q, state, means, 0.25)
    assert fwd.get_total_flops() == 4 * B * N * heads * dim * dim
    assert bwd.get_total_flops() == 2 * fwd.get_total_flops()


@pytest.mark.gpu
@pytest.mark.parametrize("B,N,heads", [(256, 197, 3), (64, 197, 12), (128, 50, 12)])
def test_triton_fused_single_launch_gpu(monkeypatch, B, N, heads):
    """The one-launch kernels at InLine-DeiT's shapes (bf16, head dim 32; one chunk per (batch, head))."""
    from vizoo.kernels.inline import triton as tk

    monkeypatch.setitem(tk.CONFIG, "fused", 1)
    assert tk._fused(N, B * heads, 32, torch.bfloat16)
    _compare(B, N, heads, 32, torch.bfloat16, atol=2e-2, rtol=2e-2, device="cuda", packed=True)

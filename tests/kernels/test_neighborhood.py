"""Neighborhood attention: the reference against a brute-force definition, the Triton kernel against the
reference (values and every gradient), torch.library integration, and argument checks.

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (set by tests/conftest.py), so CPU shapes are tiny;
tests marked ``gpu`` repeat the comparison at the real NAT/DiNAT shapes.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vizoo.kernels import na1d, na2d
from vizoo.kernels.neighborhood import chunked
from vizoo.kernels.neighborhood.reference import neighborhood_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------------------
# brute force: a dense mask built straight from the written definition, one (query, key) pair at a time
def _attends(q: int, key: int, L: int, k: int, d: int, s: int, causal: bool) -> bool:
    if q % d != key % d:
        return False
    group_len = len(range(q % d, L, d))
    qi, ki = q // d, key // d
    if causal:
        leader = min((qi // s) * s + s - 1, group_len - 1)
        return ki <= qi and leader - ki < k
    leader = min((qi // s) * s + s // 2, group_len - 1)
    left, right = k // 2, k // 2 - (1 - k % 2)  # even k: one fewer key on the right
    centre = min(max(leader, left), group_len - 1 - right)
    return centre - left <= ki <= centre + right


def brute_force(q, k, v, kernel_size, dilation, stride, causal, rpb=None):
    """Dense softmax attention over all tokens with an explicit mask (and RPB looked up per pair)."""
    B, *spatial, heads, dim = q.shape
    coords = list(itertools.product(*[range(n) for n in spatial]))
    n = len(coords)
    mask = torch.zeros(n, n, dtype=torch.bool)
    bias = torch.zeros(heads, n, n, dtype=torch.float64)
    for i, qc in enumerate(coords):
        for j, kc in enumerate(coords):
            ok = all(_attends(a, b, L, ks, d, s, c) for a, b, L, ks, d, s, c in
                     zip(qc, kc, spatial, kernel_size, dilation, stride, causal))
            mask[i, j] = ok
            if ok and rpb is not None:
                idx = tuple(b // d - a // d + ks - 1 for a, b, ks, d in zip(qc, kc, kernel_size, dilation))
                bias[:, i, j] = rpb[(slice(None),) + idx].double()
    qf, kf, vf = (t.double().reshape(B, n, heads, dim).transpose(1, 2) for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) * dim**-0.5 + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ vf
    return out.transpose(1, 2).reshape(q.shape), mask


def _tup(x, n):
    return (x,) * n if isinstance(x, (int, bool)) else tuple(x)


REF_CASES = [  # (spatial, kernel, dilation, stride, causal, rpb)
    ((9,), 3, 1, 1, False, True),
    ((11,), 4, 2, 3, False, False),
    ((10,), 3, 3, 2, True, True),
    ((7, 9), 3, 1, 1, False, True),
    ((9, 7), (4, 2), (2, 3), (2, 2), (False, True), False),
    ((8, 8), (2, 5), (3, 1), (1, 1), (True, False), True),
    ((6, 9), (3, 3), (1, 2), (3, 3), (False, False), False),
]


@pytest.mark.parametrize("spatial,ks,dil,stride,causal,use_rpb", REF_CASES)
def test_reference_matches_brute_force(spatial, ks, dil, stride, causal, use_rpb):
    n = len(spatial)
    ks, dil, stride, causal = _tup(ks, n), _tup(dil, n), _tup(stride, n), _tup(causal, n)
    q, k, v = (torch.randn(2, *spatial, 2, 8, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, *[2 * x - 1 for x in ks], dtype=torch.float64) if use_rpb else None
    expected, mask = brute_force(q, k, v, ks, dil, stride, causal, rpb)
    got = neighborhood_attention(q, k, v, ks, dil, stride, causal, rpb=rpb)
    torch.testing.assert_close(got, expected)
    if not any(causal):  # every query sees exactly prod(kernel_size) keys
        assert (mask.sum(1) == torch.tensor(ks).prod()).all()


def _draw_options(data, ndim: int, min_len: int, min_k: int, max_dil: int = 9) -> tuple:
    """Random valid per-axis options (axis length up to 9) as ``(spatial, ks, dil, stride, causal, use_rpb)``;
    RPB only with stride 1."""
    spatial, ks, dil, stride, causal = [], [], [], [], []
    for _ in range(ndim):
        L = data.draw(st.integers(min_len, 9))
        d = data.draw(st.integers(1, min(max_dil, L // 2)))
        k = data.draw(st.integers(min_k, L // d))
        spatial.append(L)
        dil.append(d)
        ks.append(k)
        stride.append(data.draw(st.integers(1, k)))
        causal.append(data.draw(st.booleans()))
    use_rpb = data.draw(st.booleans()) and all(s == 1 for s in stride)
    return tuple(spatial), tuple(ks), tuple(dil), tuple(stride), tuple(causal), use_rpb


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_reference_property(data):
    """Random valid option combinations: reference == brute force."""
    spatial, ks, dil, stride, causal, use_rpb = _draw_options(data, data.draw(st.sampled_from([1, 2])), 2, 1)
    q, k, v = (torch.randn(1, *spatial, 2, 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, *[2 * x - 1 for x in ks], dtype=torch.float64) if use_rpb else None
    expected, _ = brute_force(q, k, v, ks, dil, stride, causal, rpb)
    torch.testing.assert_close(neighborhood_attention(q, k, v, ks, dil, stride, causal, rpb=rpb), expected)


def test_reference_gradcheck():
    q, k, v = (torch.randn(1, 6, 4, 1, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, rpb: na2d(q, k, v, (3, 2), dilation=(2, 1), is_causal=(False, True), rpb=rpb,  # noqa
                                   backend="reference")
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb))


# ----------------------------------------------------------------------------------------------------------
# chunked (memory-lean, the CPU default) vs reference
def _chunked_vs_reference(spatial, ks, dil, stride, causal, use_rpb, dtype, chunk_elements, atol=None, rtol=None):
    """Output and every gradient (q, k, v, rpb) of the chunked path against the reference's."""
    n = len(spatial)
    ks, dil, stride, causal = _tup(ks, n), _tup(dil, n), _tup(stride, n), _tup(causal, n)
    q, k, v = (torch.randn(2, *spatial, 2, 4, dtype=dtype, requires_grad=True) for _ in range(3))
    params = [q, k, v]
    rpb = None
    if use_rpb:
        rpb = torch.randn(2, *[2 * x - 1 for x in ks], dtype=dtype, requires_grad=True)
        params.append(rpb)
    ref = neighborhood_attention(q, k, v, ks, dil, stride, causal, rpb=rpb)
    got = chunked.neighborhood_attention(q, k, v, list(ks), list(dil), list(stride), list(causal), rpb,
                                         chunk_elements=chunk_elements)
    assert got.dtype == dtype
    grad = torch.randn_like(ref)
    for name, a, b in zip(["out", "dq", "dk", "dv", "drpb"], [got, *torch.autograd.grad(got, params, grad)],
                          [ref, *torch.autograd.grad(ref, params, grad)]):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("chunk_elements", [pytest.param(1, id="one-query-chunks"),
                                            pytest.param(200, id="ragged-chunks"),
                                            pytest.param(1 << 22, id="one-chunk")])
@pytest.mark.parametrize("spatial,ks,dil,stride,causal,use_rpb", REF_CASES)
def test_chunked_matches_reference(spatial, ks, dil, stride, causal, use_rpb, chunk_elements):
    _chunked_vs_reference(spatial, ks, dil, stride, causal, use_rpb, torch.float64, chunk_elements)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_chunked_property(data):
    """Random valid option combinations and chunk sizes: chunked == reference in values and gradients."""
    options = _draw_options(data, data.draw(st.sampled_from([1, 2])), 2, 1)
    _chunked_vs_reference(*options, torch.float64, data.draw(st.integers(1, 400)))


def test_chunked_half_precision_matches_reference():
    _chunked_vs_reference((7, 9), 3, (2, 1), 1, (False, True), True, torch.bfloat16, 100, atol=2e-2, rtol=2e-2)


def test_chunked_is_the_cpu_default_and_scripts():
    q, k, v = (torch.randn(1, 9, 8, 2, 8) for _ in range(3))
    expected = na2d(q, k, v, 3, dilation=(2, 1), is_causal=(True, False), backend="reference")
    torch.testing.assert_close(na2d(q, k, v, 3, dilation=(2, 1), is_causal=(True, False)), expected)
    scripted = torch.jit.script(chunked.neighborhood_attention)
    torch.testing.assert_close(scripted(q, k, v, [3, 3], [2, 1], [1, 1], [True, False], None, None, 50), expected)


def test_chunked_export_first_then_eager():
    """Exporting before any eager call must not leave the tracer's (fake) index tables in the cache."""
    class NA(torch.nn.Module):
        def forward(self, x):
            return na2d(x, x, x, 3, dilation=(3, 2), backend="chunked")

    x = torch.randn(1, 10, 11, 1, 4, requires_grad=True)
    program = torch.export.export(NA(), (x.detach(),), strict=False)
    expected = na2d(x, x, x, 3, dilation=(3, 2), backend="reference")
    torch.testing.assert_close(NA()(x), expected)
    torch.testing.assert_close(program.module()(x.detach()), expected.detach())


def test_chunked_gradcheck():
    q, k, v = (torch.randn(1, 6, 4, 1, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, rpb: na2d(q, k, v, (3, 2), dilation=(2, 1), is_causal=(False, True), rpb=rpb,  # noqa
                                   backend="chunked")
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb))


@pytest.mark.gpu
@pytest.mark.parametrize("dilation,use_rpb", [(1, True), (8, False)])
def test_chunked_matches_reference_gpu(dilation, use_rpb):
    """NAT-T stage-1 shapes on CUDA, several chunks: values and every gradient."""
    q, k, v = (torch.randn(2, 56, 56, 2, 32, device="cuda", requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 13, 13, device="cuda", requires_grad=True) if use_rpb else None
    params = [q, k, v] + ([rpb] if use_rpb else [])
    ref = na2d(q, k, v, 7, dilation=dilation, rpb=rpb, backend="reference")
    got = chunked.neighborhood_attention(q, k, v, [7, 7], [dilation] * 2, [1, 1], [False, False], rpb,
                                         chunk_elements=1 << 18)
    grad = torch.randn_like(ref)
    got_all = [got, *torch.autograd.grad(got, params, grad)]
    for a, b in zip(got_all, [ref, *torch.autograd.grad(ref, params, grad)]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_chunked_backward_keeps_no_gathered_copies():
    """The activations autograd keeps for the chunked path are O(N * heads * dim), not O(N * K * heads * dim)
    (integer index tables are not counted: they are cached once per shape and shared by all calls)."""
    q, k, v = (torch.randn(1, 16, 16, 2, 8, requires_grad=True) for _ in range(3))
    sizes = {}
    for backend in ("reference", "chunked"):
        saved = []

        def pack(t):
            saved.append(t.numel() * t.is_floating_point())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            na2d(q, k, v, 7, backend=backend)
        sizes[backend] = sum(saved)
    n_qkv = q.numel()
    assert sizes["reference"] > 49 * n_qkv  # the gathered keys and values
    assert sizes["chunked"] < 5 * n_qkv, sizes  # q, k, v, out and the log-sum-exp


# ----------------------------------------------------------------------------------------------------------
# Triton vs reference
TRITON_CASES = [  # (spatial, kernel, dilation, stride, causal, rpb)
    ((9, 7), 3, 1, 1, False, True),
    ((9, 7), (4, 3), (2, 1), (3, 1), (False, True), False),
    ((9, 7), (3, 2), (2, 3), (2, 2), (True, False), False),
    ((7, 9), (2, 4), 1, 1, (True, True), True),
    ((6, 6), 6, 1, 6, False, False),  # blocked attention == full attention here
    ((20,), 5, 3, 1, False, True),
    ((20,), 6, 1, 4, True, False),
    ((19,), 4, 2, 2, False, False),
]


def _compare(spatial, ks, dil, stride, causal, use_rpb, dtype, batch=1, heads=2, dim=16, atol=2e-5, rtol=1e-4,
             device=DEVICE, packed=False, misaligned=False):
    """Triton vs reference, output and every gradient; ``packed``: q, k, v are strided views into one
    ``[batch, *spatial, 3, heads, dim]`` tensor, as the NAT layer passes them (no copies); ``misaligned``:
    q, k, v start one element past a 16-byte boundary."""
    fn = na1d if len(spatial) == 1 else na2d
    if packed:
        qkv = torch.randn(batch, *spatial, 3, heads, dim, device=device, dtype=dtype, requires_grad=True)
        q, k, v = qkv.unbind(-3)
        inputs, names = [qkv], ["out", "dqkv", "drpb"]
    else:
        shape, off = (batch, *spatial, heads, dim), int(misaligned)
        q, k, v = (torch.randn(math.prod(shape) + off, device=device, dtype=dtype)[off:].view(shape)
                   .requires_grad_(True) for _ in range(3))
        inputs, names = [q, k, v], ["out", "dq", "dk", "dv", "drpb"]
    n = len(spatial)
    rpb = None
    if use_rpb:
        rpb = torch.randn(heads, *[2 * x - 1 for x in _tup(ks, n)], device=device, requires_grad=True)
    params = inputs + ([rpb] if use_rpb else [])
    results = {}
    for backend in ("reference", "triton"):
        out = fn(q, k, v, ks, dilation=dil, stride=stride, is_causal=causal, rpb=rpb, backend=backend)
        assert out.shape == q.shape and out.dtype == dtype
        if backend == "reference":
            grad = torch.randn_like(out)
        results[backend] = [out] + list(torch.autograd.grad(out, params, grad))
    for name, ref, tri in zip(names, results["reference"], results["triton"]):
        torch.testing.assert_close(tri.float(), ref.float(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("spatial,ks,dil,stride,causal,use_rpb", TRITON_CASES)
def test_triton_matches_reference_fp32(spatial, ks, dil, stride, causal, use_rpb):
    _compare(spatial, ks, dil, stride, causal, use_rpb, torch.float32)


@pytest.mark.parametrize("spatial,ks,dil,use_rpb", [((9, 11), 3, (2, 1), True), ((13, 6), (5, 4), 1, False),
                                                  ((20,), 5, 2, True)])
def test_triton_reads_packed_qkv_views(spatial, ks, dil, use_rpb):
    _compare(spatial, ks, dil, 1, False, use_rpb, torch.float32, batch=2, packed=True)


@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        DEVICE == "cpu",
        reason="under the Triton interpreter (triton 3.8, CPU) bf16 results were wrong; GPU tests cover it")),
])
def test_triton_matches_reference_half(dtype):
    _compare((9, 7), (3, 4), (2, 1), 1, (False, True), True, dtype, atol=3e-2, rtol=3e-2)


def test_triton_head_dim_not_power_of_two():
    _compare((7, 7), 3, 1, 1, False, True, torch.float32, dim=24)


@pytest.mark.parametrize("passes", [("fwd", "bwd", "dkdv", "dsum"), ("fwd", "bwd", "dkdv"), ("fwd", "dkdv"), ("fwd",),
                                    ()])
@pytest.mark.parametrize("case,tiles", [
    (((13, 21), (3, 5), (2, 1), (False, True)), {}),
    (((7, 10), (3, 5), (2, 1), (False, True)), {"TH": 2, "TW": 4, "KR": 1, "KC": 4}),  # several chunks per axis
    (((100,), 7, 1, False), {}),  # 1-D: 64-query tiles, several key chunks along x
    (((7, 9), (2, 4), 1, (True, True)), {}),  # even windows, causal on both axes
])
def test_triton_rpb_bias_layouts(monkeypatch, case, tiles, passes):
    """The RPB read from the host-gathered chunk layout (in the launches named; with "dsum" the score gradients
    summed in that layout by atomics) and gathered in the kernel give the reference's values and gradients, also
    with small tiles (several patterns and chunks per axis)."""
    from vizoo.kernels.neighborhood import triton as tri

    monkeypatch.setattr(tri, "RPB_CHUNK_BYTES", 8 << 20)
    monkeypatch.setattr(tri, "RPB_CHUNK_PASSES", passes)
    for which in ("fwd", "bwd", "dkdv"):
        monkeypatch.setitem(tri.CONFIG_OVERRIDE, which, dict(tiles))
    used = []
    real = tri.launch
    monkeypatch.setattr(tri, "launch", lambda kernel, grid, plan, args, meta: used.append(meta["RPB_CHUNKS"])
                        or real(kernel, grid, plan, args, meta))
    spatial, ks, dil, causal = case
    _compare(spatial, ks, dil, 1, causal, True, torch.float32, batch=2)
    assert used == [which in passes for which in ("fwd", "bwd", "dkdv")]


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_triton_property(data):
    """A few random option combinations: Triton == reference (values and gradients)."""
    _compare(*_draw_options(data, 2, 4, 2, max_dil=2), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size,heads,dim,ks,dil,use_rpb", [
    ((56, 56), 2, 32, 7, 1, True), ((56, 56), 2, 32, 7, 8, False), ((28, 28), 4, 32, 7, 4, True),
    ((14, 14), 8, 32, 7, 2, True), ((7, 7), 16, 32, 7, 1, True), ((64, 48), 4, 64, 13, 1, False),
    ((32, 32), 2, 128, (5, 8), (2, 1), False),
])
def test_triton_matches_reference_gpu(size, heads, dim, ks, dil, use_rpb, dtype):
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=6e-2, rtol=5e-2)
    _compare(size, ks, dil, 1, False, use_rpb, dtype, batch=4, heads=heads, dim=dim, device="cuda", **tol)


@pytest.mark.gpu
def test_triton_repeated_calls_gpu():
    """Later calls of one problem launch the compiled kernel directly (vizoo.kernels._backend.launch); inputs whose
    alignment or strides differ from the first call's must not reuse a kernel specialized for it."""
    case = ((14, 14), 7, 1, 1, False, True, torch.bfloat16)
    tol = dict(batch=4, heads=8, dim=32, device="cuda", atol=6e-2, rtol=5e-2)
    for packed, misaligned in [(False, False), (False, False), (False, True), (True, False), (False, False)]:
        _compare(*case, packed=packed, misaligned=misaligned, **tol)


@pytest.mark.gpu
def test_triton_causal_strided_gpu():
    _compare((40, 33), (7, 5), (2, 3), (3, 2), (True, False), False, torch.float32, batch=2, dim=32,
             device="cuda", atol=1e-4, rtol=1e-4)
    _compare((1024,), 33, 2, 1, True, True, torch.bfloat16, batch=2, heads=4, dim=64, device="cuda",
             atol=6e-2, rtol=5e-2)


# ----------------------------------------------------------------------------------------------------------
# torch.library integration
def test_dispatch_default_backend():
    q = torch.randn(1, 7, 7, 1, 16, device=DEVICE)
    out = na2d(q, q, q, 3)
    ref = na2d(q, q, q, 3, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_compile_matches_eager_reference():
    q, k, v = (torch.randn(2, 8, 6, 2, 8) for _ in range(3))
    fn = lambda q, k, v: na2d(q, k, v, 3, dilation=(2, 1), backend="reference")  # noqa: E731
    # aot_eager: traces through dynamo + AOTAutograd (no graph break allowed) without a C++ build, which
    # alone takes minutes on a CI runner
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v), fn(q, k, v))


@pytest.mark.parametrize("layout", ["contiguous", "channels_first_view"])
def test_custom_op_opcheck(layout):
    q, k, v = (torch.randn(1, 6, 5, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    if layout == "channels_first_view":  # dense but permuted, as from an NCHW map: the outputs stay contiguous
        q, k, v = (torch.randn(1, 2, 16, 6, 5, device=DEVICE).permute(0, 3, 4, 1, 2).requires_grad_()
                   for _ in range(3))
    rpb = torch.randn(2, 5, 5, device=DEVICE, requires_grad=True)
    args = (q, k, v, rpb, [3, 3], [1, 1], [1, 1], [False, True], 0.25)
    torch.library.opcheck(torch.ops.vizoo.na_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # the backward's outputs must have the fake's sizes and strides (Inductor asserts them in compiled training):
    # a 5x5 table whose gradient is reduced in a padded buffer once came back as a strided view
    out, lse = torch.ops.vizoo.na_fwd.default(*args)
    bwd_args = (torch.randn_like(out), q, k, v, out, lse, rpb, *args[4:], True)
    torch.library.opcheck(torch.ops.vizoo.na_bwd.default, bwd_args, test_utils=("test_schema", "test_faketensor"))


class _NAModule(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.rpb = torch.nn.Parameter(torch.zeros(2, 5, 5))

    def forward(self, x):
        return na2d(x, x, x, 3, rpb=self.rpb, backend=self.backend)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_export(backend):
    x = torch.randn(1, 6, 7, 2, 16, device=DEVICE)
    module = _NAModule(backend).to(DEVICE)
    program = torch.export.export(module, (x,))
    if backend == "triton":
        assert "vizoo.na_fwd" in str(program.graph)
    torch.testing.assert_close(program.module()(x), module(x))


def test_compile_triton_no_graph_break():
    x = torch.randn(1, 6, 7, 2, 16, device=DEVICE, requires_grad=True)
    fn = lambda x: na2d(x, x * 2, x, 3, backend="triton").sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x), x)[0]
    torch.testing.assert_close(got, torch.autograd.grad(fn(x), x)[0])


def test_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.randn(2, 7, 6, 2, 16, device=DEVICE, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = na2d(q, q, q, (3, 5), backend="triton")
    assert counter.get_total_flops() == 4 * 2 * 7 * 6 * 2 * 15 * 16
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * 4 * 2 * 7 * 6 * 2 * 15 * 16
    with FlopCounterMode(display=False) as counter:  # the reference counts the same (two bmm per call)
        na2d(q.detach(), q.detach(), q.detach(), (3, 5), backend="reference")
    assert counter.get_total_flops() == 4 * 2 * 7 * 6 * 2 * 15 * 16


# ----------------------------------------------------------------------------------------------------------
# argument checks
def _q(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda: na2d(*[_q(1, 8, 8, 1, 16)] * 3, 5, dilation=2), "kernel_size \\* dilation"),
    (lambda: na1d(_q(1, 8, 1, 16), _q(1, 8, 1, 16), _q(1, 8, 1, 16), 3, stride=4), "stride must not exceed"),
    (lambda: na1d(_q(1, 8, 1, 16), _q(1, 8, 1, 16), _q(1, 8, 1, 16), 0), ">= 1"),
    (lambda: na2d(_q(1, 8, 1, 16), _q(1, 8, 1, 16), _q(1, 8, 1, 16), 3), "layout"),
    (lambda: na2d(_q(1, 8, 8, 1, 16), _q(1, 8, 7, 1, 16), _q(1, 8, 8, 1, 16), 3), "same shape"),
    (lambda: na2d(*[_q(1, 8, 8, 2, 16)] * 3, 3, rpb=_q(2, 3, 3)), "rpb must have shape"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 16, dtype=torch.float64)] * 3, 3, backend="triton"), "unsupported dtype"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 16).int()] * 3, 3), "unsupported dtype"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 8)] * 3, 3, backend="triton"), "head dim"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 256)] * 3, 3, backend="triton"), "head dim"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 16)] * 3, (3, 3, 3)), "tuple of 2"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 16)] * 3, 3, is_causal=(True,)), "tuple of 2"),
    (lambda: na2d(*[_q(1, 8, 8, 1, 16)] * 3, 3, backend="tritn"), "Did you mean 'triton'"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rpb_requires_stride_one():
    x = _q(1, 9, 9, 2, 16)
    with pytest.raises(ValueError, match="rpb requires stride 1"):
        na2d(x, x, x, 3, stride=2, rpb=_q(2, 5, 5))


def test_flop_counter_counts_the_custom_ops_by_formula():
    """FlopCounterMode counts vizoo::na_fwd as 4 * B * heads * N * K * dim whatever the dilation, and the backward
    as twice that (counted on meta tensors: the ops' fake implementations run, no kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    B, H, W, heads, dim = 2, 12, 10, 4, 16
    q = torch.empty(B, H, W, heads, dim, device="meta")
    for kernel, dilation in (((3, 3), (1, 1)), ((5, 3), (2, 3))):
        args = (list(kernel), list(dilation), [1, 1], [False, False], 0.25)
        with FlopCounterMode(display=False) as fwd:
            out, lse = torch.ops.vizoo.na_fwd(q, q, q, None, *args)
        with FlopCounterMode(display=False) as bwd:
            torch.ops.vizoo.na_bwd(out, q, q, q, out, lse, None, *args, False)
        assert fwd.get_total_flops() == 4 * B * heads * H * W * kernel[0] * kernel[1] * dim
        assert bwd.get_total_flops() == 2 * fwd.get_total_flops()

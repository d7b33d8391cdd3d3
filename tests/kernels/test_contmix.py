"""``na2d_av`` (OverLoCK's ContMix aggregation): the reference against a brute-force loop (values and gradients),
the unfold form against the reference, the Triton kernels against the reference (values, d_attn, d_v),
torch.library integration and argument checks.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at tiny shapes; tests marked ``gpu``
repeat the comparison at OverLoCK's real shapes.
"""
from __future__ import annotations

import pytest
import torch

from vizoo.kernels import na2d_av
from vizoo.kernels.contmix.reference import na2d_av_reference, na2d_av_unfold

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------------------
# brute force: one pixel and one tap at a time, windows written out from the definition
def _window_start(i: int, L: int, k: int, d: int) -> int:
    """First key (image coordinate) of pixel i's window: inside i's dilation group, centred, pushed inwards."""
    group, gi = i % d, i // d
    group_len = len(range(group, L, d))
    start = min(max(gi - k // 2, 0), group_len - k)
    return start * d + group


def brute_force(attn, v, kernel_size, dilation):
    B, H, W, heads, dim = v.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    rows = []
    for y in range(H):
        y0 = _window_start(y, H, kh, dh)
        cols = []
        for x in range(W):
            x0 = _window_start(x, W, kw, dw)
            acc = torch.zeros(B, heads, dim, dtype=v.dtype)
            for ry in range(kh):
                for rx in range(kw):
                    acc = acc + attn[:, y, x, :, ry * kw + rx, None] * v[:, y0 + ry * dh, x0 + rx * dw]
            cols.append(acc)
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows, 1)


def _inputs(shape, kernel_size, dtype=torch.float64, device="cpu", batch=2, heads=2, dim=3):
    taps = kernel_size[0] * kernel_size[1]
    attn = torch.randn(batch, *shape, heads, taps, dtype=dtype, device=device).softmax(-1).requires_grad_()
    v = torch.randn(batch, *shape, heads, dim, dtype=dtype, device=device, requires_grad=True)
    return attn, v


REF_CASES = [  # (H, W), (kh, kw), (dh, dw)
    pytest.param((5, 6), (3, 3), (1, 1), id="5x6-k3"),
    pytest.param((7, 5), (5, 3), (1, 1), id="7x5-k5x3"),
    pytest.param((8, 7), (3, 2), (2, 3), id="8x7-k3x2-dil2x3"),
    pytest.param((6, 6), (4, 5), (1, 1), id="6x6-even-k4x5"),
    pytest.param((5, 5), (5, 5), (1, 1), id="window-is-the-image"),
]


@pytest.mark.parametrize("shape,ks,dil", REF_CASES)
def test_reference_matches_brute_force(shape, ks, dil):
    attn, v = _inputs(shape, ks)
    ref = na2d_av(attn, v, ks, dil, backend="reference")
    bf = brute_force(attn, v, ks, dil)
    torch.testing.assert_close(ref, bf)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(ref, (attn, v), grad)
    want = torch.autograd.grad(bf, (attn, v), grad)
    for name, g, w in zip(("d_attn", "d_v"), got, want):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("shape,k", [((9, 7), 5), ((14, 14), 13), ((7, 7), 7)])
def test_unfold_form_matches_reference(shape, k):
    attn, v = _inputs(shape, (k, k))
    torch.testing.assert_close(na2d_av_unfold(attn, v, k), na2d_av_reference(attn, v, (k, k), (1, 1)))


# ----------------------------------------------------------------------------------------------------------
# Triton against the reference
def _compare(shape, ks, dil, dtype, device=DEVICE, atol=2e-5, rtol=1e-4, **kw):
    attn, v = _inputs(shape, ks, dtype=dtype, device=device, **kw)
    grad = None
    results = {}
    for backend in ("reference", "triton"):
        out = na2d_av(attn, v, ks, dil, backend=backend)
        assert out.shape == v.shape and out.dtype == dtype
        grad = torch.randn_like(out) if grad is None else grad
        results[backend] = [out, *torch.autograd.grad(out, (attn, v), grad)]
    for name, ref, tri in zip(("out", "d_attn", "d_v"), results["reference"], results["triton"]):
        torch.testing.assert_close(tri.float(), ref.float(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


TRITON_CASES = [
    pytest.param((6, 7), (3, 3), (1, 1), 8, id="6x7-k3-d8"),
    pytest.param((10, 8), (5, 3), (2, 1), 5, id="10x8-k5x3-dil2x1-d5"),
    pytest.param((7, 7), (7, 7), (1, 1), 16, id="7x7-k7-global"),
    pytest.param((5, 9), (2, 4), (1, 2), 3, id="even-k-dil"),
]


@pytest.mark.parametrize("shape,ks,dil,dim", TRITON_CASES)
def test_triton_matches_reference_fp32(shape, ks, dil, dim):
    _compare(shape, ks, dil, torch.float32, dim=dim)


def test_triton_matches_reference_fp16():
    _compare((6, 5), (3, 5), (1, 1), torch.float16, dim=8, atol=2e-2, rtol=2e-2)


ROWS_CASES = [  # (H, W), (kh, kw), dim: several x tiles and both borders, even and non-square kernels, the window
    # as wide as the image, dims below the 16-wide dot tile
    pytest.param((6, 7), (3, 3), 8, id="6x7-k3-d8"),
    pytest.param((5, 37), (3, 5), 4, id="5x37-k3x5-three-x-tiles"),
    pytest.param((9, 20), (5, 13), 16, id="9x20-k5x13"),
    pytest.param((7, 7), (7, 7), 3, id="7x7-k7-window-is-the-image"),
    pytest.param((4, 18), (2, 4), 5, id="even-k2x4"),
    pytest.param((7, 21), (5, 3), 6, id="7x21-k5x3"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,ks,dim", ROWS_CASES)
def test_rows_kernels_match_reference(monkeypatch, shape, ks, dim, dtype):
    """The band-matrix kernels (dilation 1) against the reference: output, d_attn, d_v. bfloat16 on a GPU only
    (the interpreter's bfloat16 dots are wrong): float16 is the 16-bit case under the interpreter."""
    from vizoo.kernels.contmix import triton as tk

    if dtype == torch.bfloat16 and DEVICE != "cuda":
        pytest.skip("the Triton interpreter's bfloat16 dots are wrong")
    monkeypatch.setattr(tk, "ROWS_PASSES", ("fwd", "bwd"))
    taken, real = [], tk.launch
    monkeypatch.setattr(tk, "launch", lambda kernel, *a, **kw: taken.append(kernel.__name__) or real(kernel, *a, **kw))
    tol = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2),
           torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}[dtype]
    _compare(shape, ks, (1, 1), dtype, dim=dim, **tol)
    assert taken == ["_av_rows_kernel", "_av_rows_kernel", "_dv_rows_kernel"]  # forward, backward


def test_rows_kernels_refuse_dilation():
    from vizoo.kernels.contmix import triton as tk

    attn, v = _inputs((8, 8), (3, 3), dtype=torch.float32, dim=4)
    with pytest.raises(ValueError, match="dilation 1 only"):
        tk.forward(attn.detach(), v.detach(), (3, 3), (2, 2), method="rows")
    with pytest.raises(ValueError, match="'auto', 'gather' or 'rows'"):
        tk.forward(attn.detach(), v.detach(), (3, 3), (1, 1), method="band")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["gather", "rows"])
@pytest.mark.parametrize("shape,k,heads,dim,batch", [
    pytest.param((14, 14), 13, 8, 16, 8, id="T-stage3-14x14-k13"),
    pytest.param((14, 14), 5, 8, 16, 8, id="T-stage3-14x14-k5"),
    pytest.param((7, 7), 7, 16, 16, 8, id="T-stage4-7x7-k7"),
    pytest.param((56, 56), 13, 4, 16, 2, id="56x56-k13"),
    pytest.param((17, 23), 13, 3, 10, 2, id="17x23-k13-d10"),
])
def test_triton_matches_reference_gpu(monkeypatch, shape, k, heads, dim, batch, method, dtype):
    from vizoo.kernels.contmix import triton as tk

    monkeypatch.setattr(tk, "ROWS_PASSES", ("fwd", "bwd") if method == "rows" else ())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _compare(shape, (k, k), (1, 1), dtype, device="cuda", heads=heads, dim=dim, batch=batch, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gather", "rows"])
def test_triton_repeated_calls_gpu(monkeypatch, method):
    """With DIRECT_LAUNCH (the default), later calls of one problem launch the compiled kernels directly
    (vizoo.kernels._backend.launch): values and gradients stay right over repeated calls, misaligned views (not
    16-byte aligned) and a dtype change."""
    from vizoo.kernels.contmix import triton as tk

    monkeypatch.setattr(tk, "ROWS_PASSES", ("fwd", "bwd") if method == "rows" else ())
    monkeypatch.setattr(tk, "DIRECT_LAUNCH", True)
    for dtype, misaligned in [(torch.bfloat16, False), (torch.bfloat16, False), (torch.bfloat16, True),
                              (torch.float32, False), (torch.bfloat16, False)]:
        attn, v = _inputs((14, 14), (5, 5), dtype=dtype, device="cuda", batch=4, heads=8, dim=16)
        if misaligned:  # the same values one element into a larger buffer
            attn, v = (torch.cat([t.detach().new_zeros(1), t.detach().flatten()])[1:].view(t.shape).requires_grad_()
                       for t in (attn, v))
            assert attn.data_ptr() % 16 and v.data_ptr() % 16
        grad = torch.randn_like(v)
        want = [na2d_av(attn, v, 5, backend="reference")]
        want += torch.autograd.grad(want[0], (attn, v), grad)
        got = [na2d_av(attn, v, 5, backend="triton")]
        got += torch.autograd.grad(got[0], (attn, v), grad)
        tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
        for name, a, b in zip(("out", "d_attn", "d_v"), got, want):
            torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# torch.library integration
def test_default_backend_follows_the_device():
    attn, v = _inputs((6, 6), (3, 3), dtype=torch.float32, device=DEVICE, dim=16)
    torch.testing.assert_close(na2d_av(attn, v, 3), na2d_av(attn, v, 3, backend="reference"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_first_view"])
def test_custom_op_opcheck(layout):
    """Fake and real ops agree in sizes and strides (what compiled code asserts), also for the NCHW views a
    model passes (v as a permuted ``[B, heads * dim, H, W]`` map: the outputs stay contiguous)."""
    attn, v = _inputs((6, 5), (3, 3), dtype=torch.float32, device=DEVICE, batch=1, dim=8)
    if layout == "channels_first_view":
        B, H, W, heads, dim = v.shape
        v = v.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
        attn = attn.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
        assert not v.is_contiguous() and not attn.is_contiguous()
    for use_triton in (False, True):
        torch.library.opcheck(torch.ops.vizoo.na2d_av_fwd.default, (attn, v, [3, 3], [1, 1], use_triton),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
        grad_out = torch.randn_like(torch.ops.vizoo.na2d_av_fwd.default(attn, v, [3, 3], [1, 1], use_triton))
        torch.library.opcheck(torch.ops.vizoo.na2d_av_bwd.default, (grad_out, attn, v, [3, 3], [1, 1], use_triton),
                              test_utils=("test_faketensor",))  # the sizes and strides compiled training sees
        # the op's gradients (its reference body runs without autograd) against autograd through the reference
        a, x = attn.detach().requires_grad_(), v.detach().requires_grad_()
        torch.ops.vizoo.na2d_av_fwd(a, x, [3, 3], [1, 1], use_triton).backward(grad_out)
        want = torch.autograd.grad(na2d_av(attn, v, 3, backend="reference"), (attn, v), grad_out)
        torch.testing.assert_close((a.grad, x.grad), want, atol=1e-5, rtol=1e-5)


def test_eager_calls_skip_the_custom_op_dispatch():
    """Eager Triton calls go through an autograd.Function with the same kernels (NA's and InLine's pattern); the
    gradients are the reference's (the custom op itself is what compile, export and dispatch modes see)."""
    attn, v = _inputs((6, 7), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    out = na2d_av(attn, v, 3, backend="triton")
    assert type(out.grad_fn).__name__ == "TritonAVBackward"
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (attn, v), grad_out)
    want = torch.autograd.grad(na2d_av(attn, v, 3, backend="reference"), (attn, v), grad_out)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["gather", "rows"])
@pytest.mark.parametrize("wants", [("attn",), ("v",), ("attn", "v")])
def test_eager_backward_launches_only_the_gradients_needed(monkeypatch, method, wants):
    """Only the inputs that require grad get a gradient kernel: the gradients computed are the reference's, the
    others are never launched."""
    from vizoo.kernels.contmix import triton as tk

    monkeypatch.setattr(tk, "ROWS_PASSES", ("fwd", "bwd") if method == "rows" else ())
    taken, real = [], tk.launch
    monkeypatch.setattr(tk, "launch", lambda kernel, grid, plan, args, meta, **kw: taken.append(
        (kernel.__name__, meta.get("GRAD_ATTN"))) or real(kernel, grid, plan, args, meta, **kw))
    attn, v = _inputs((6, 7), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    inputs = {"attn": attn.detach().requires_grad_("attn" in wants), "v": v.detach().requires_grad_("v" in wants)}
    out = na2d_av(inputs["attn"], inputs["v"], 3, backend="triton")
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [inputs[name] for name in wants], grad_out)
    want = torch.autograd.grad(na2d_av(attn, v, 3, backend="reference"), (attn, v), grad_out)
    want = [want[0 if name == "attn" else 1] for name in wants]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    prefix = "_av_rows" if method == "rows" else "_av"
    kernels = {"attn": (f"{prefix}_kernel", True), "v": (prefix.replace("av", "dv") + "_kernel", None)}
    assert taken == [(f"{prefix}_kernel", False)] + [kernels[name] for name in wants]  # forward, backward


def test_eager_path_saves_contiguous_inputs():
    """Strided views (what the model passes: a channel half of a permuted map) are copied once in the forward and
    saved as copied, so the backward reads them without copying again; gradients match the reference."""
    attn, _ = _inputs((6, 7), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    wide = torch.randn(2, 6, 7, 2, 2, 8, dtype=torch.float32, device=DEVICE, requires_grad=True)
    half = wide[:, :, :, 1]
    assert not half.is_contiguous()
    out = na2d_av(attn, half, 3, backend="triton")
    assert all(t.is_contiguous() for t in out.grad_fn.saved_tensors)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (attn, wide), grad_out)
    want = torch.autograd.grad(na2d_av(attn, half, 3, backend="reference"), (attn, wide), grad_out)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_calls_without_gradients_skip_the_autograd_function(monkeypatch):
    from vizoo.kernels.contmix import ops

    attn, v = _inputs((6, 7), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    want = na2d_av(attn, v, 3, backend="reference").detach()

    def refuse(*args):
        raise AssertionError("TritonAV.apply called without a gradient to compute")

    monkeypatch.setattr(ops.TritonAV, "apply", refuse)
    with torch.no_grad():
        torch.testing.assert_close(na2d_av(attn, v, 3, backend="triton"), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(na2d_av(attn.detach(), v.detach(), 3, backend="triton"), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError, match="without a gradient"):
        na2d_av(attn, v, 3, backend="triton")  # the patch is live: a call that needs gradients takes the Function


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_compile_matches_eager(backend):
    attn, v = _inputs((6, 7), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    fn = lambda a, x: na2d_av(a, x * 2, 3, backend=backend).square().sum()  # noqa: E731
    # aot_eager: dynamo + AOTAutograd with no graph break allowed, without the minutes of a C++ build on CI
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(attn, v), (attn, v))
    want = torch.autograd.grad(fn(attn, v), (attn, v))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


class _AV(torch.nn.Module):
    def forward(self, attn, v):
        return na2d_av(attn, v, 3, backend="triton")


def test_export_keeps_one_node():
    attn, v = _inputs((6, 6), (3, 3), dtype=torch.float32, device=DEVICE, dim=8)
    attn, v = attn.detach(), v.detach()
    program = torch.export.export(_AV(), (attn, v))
    assert "vizoo.na2d_av_fwd" in str(program.graph)
    torch.testing.assert_close(program.module()(attn, v), _AV()(attn, v))


def test_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    attn, v = _inputs((7, 6), (3, 5), dtype=torch.float32, device=DEVICE, dim=8)
    with FlopCounterMode(display=False) as counter:
        out = na2d_av(attn, v, (3, 5), backend="triton")
    assert counter.get_total_flops() == 2 * 2 * 7 * 6 * 2 * 15 * 8
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * 2 * 2 * 7 * 6 * 2 * 15 * 8


# ----------------------------------------------------------------------------------------------------------
# argument checks: all raised before any launch
def _t(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,match", [
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9), _t(1, 8, 8, 2, 4), 5), "kh\\*kw = 25", id="taps"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 25), _t(1, 8, 8, 2, 4), 5, dilation=2), "kernel_size \\* dilation",
                 id="window-too-big"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 1), _t(1, 8, 8, 2, 4), 0), ">= 1", id="kernel-0"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9), _t(1, 8, 8, 2, 4), 3, dilation=0), ">= 1", id="dilation-0"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9), _t(1, 8, 8, 2, 4), (3, 3, 3)), "tuple of 2", id="3-axes"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 9), _t(1, 8, 8, 4), 3), "heads-last layout", id="4-dims"),
    pytest.param(lambda: na2d_av(_t(1, 2, 8, 8, 9), _t(1, 8, 8, 2, 4), 3), "agree on \\[B, H, W, heads\\]",
                 id="heads-first-attn"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9), _t(1, 8, 8, 2, 4, dtype=torch.float64), 3), "share dtype",
                 id="mixed-dtype"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9).int(), _t(1, 8, 8, 2, 4).int(), 3), "unsupported dtype",
                 id="int"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 2, 9, dtype=torch.float64), _t(1, 8, 8, 2, 4, dtype=torch.float64), 3,
                                 backend="triton"), "unsupported dtype", id="fp64-triton"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 1, 9), _t(1, 8, 8, 1, 300), 3, backend="triton"), "at most 256",
                 id="dim-too-big"),
    pytest.param(lambda: na2d_av(_t(1, 8, 8, 1, 9), _t(1, 8, 8, 1, 4), 3, backend="tritn"), "Did you mean",
                 id="backend-name"),
    pytest.param(lambda: na2d_av([1.0], _t(1, 8, 8, 1, 4), 3), "torch.Tensor", id="not-a-tensor"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("shape,k", [((14, 14), 13), ((7, 9), 5), ((13, 20), 7)])
def test_rpb_index_matches_the_neighborhood_tables(shape, k):
    from vizoo.kernels.contmix.reference import window_rpb_index
    from vizoo.kernels.neighborhood.reference import neighborhood_indices

    _, _, rel = neighborhood_indices(shape, (k, k), (1, 1), (1, 1), (False, False))
    assert torch.equal(window_rpb_index(*shape, k, torch.device("cpu")), rel)
    assert torch.equal(torch.jit.script(window_rpb_index)(*shape, k, torch.device("cpu")), rel)


def test_tables_cached_in_inference_mode_serve_autograd_later():
    attn, v = _inputs((6, 5), (3, 3), dtype=torch.float32, dim=4)
    with torch.inference_mode():
        na2d_av(attn, v, 3, backend="reference")  # first call of this shape: the window table is cached here
    out = na2d_av(attn, v, 3, backend="reference")
    assert torch.autograd.grad(out.sum(), v)[0].shape == v.shape


def test_default_backend_off_cuda_is_the_reference(monkeypatch):
    """NA's default CPU backend ("chunked") is not one of na2d_av's: off CUDA it must pick its own reference,
    never the Triton interpreter, and an NA-only backend name is refused."""
    import vizoo.kernels.contmix as contmix

    attn = torch.randn(1, 5, 5, 1, 9).softmax(-1)
    v = torch.randn(1, 5, 5, 1, 4)
    assert contmix.check_arguments(attn, v, 3, 1, None)[2] == "reference"
    with pytest.raises(ValueError, match="unknown backend 'chunked'"):
        contmix.na2d_av(attn, v, 3, backend="chunked")


# ----------------------------------------------------------------------------------------------------------
# contmix_fused_forward: ContMix's logits, relative position bias, softmax and aggregation in one call
def _rpb_bias_loop(rpb, H, W, k):
    """``[H, W, G, k*k]`` relative position bias written out per pixel and tap from the window definition:
    tap (ry, rx) of pixel (y, x) sees key (y0 + ry, x0 + rx), whose offset from the pixel indexes the table."""
    out = rpb.new_zeros(H, W, rpb.shape[0], k * k)
    for y in range(H):
        y0 = _window_start(y, H, k, 1)
        for x in range(W):
            x0 = _window_start(x, W, k, 1)
            for ry in range(k):
                for rx in range(k):
                    out[y, x, :, ry * k + rx] = rpb[:, y0 + ry - y + k - 1, x0 + rx - x + k - 1]
    return out


def _fused_inputs(shape, k, dtype=torch.float32, device=DEVICE, batch=2, heads=2, c=4, dim=5, regions=9):
    """ContMix-like inputs: queries, region keys, a projection to k*k taps with bias, an rpb table, values; and
    the projected keys ``kp``."""
    f = dict(dtype=dtype, device=device)
    q = torch.randn(batch, *shape, heads, c, **f)
    key = torch.randn(batch, heads, c, regions, **f)
    wp = torch.randn(k * k, regions, **f) * 0.5
    bp = torch.randn(k * k, **f)
    rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1, **f)
    v = torch.randn(batch, *shape, heads, dim, **f)
    kp = torch.einsum("bgcl,tl->bgct", key, wp)
    return q, key, wp, bp, rpb, v, kp


FUSED_CASES = [  # (H, W), k, c, dim: borders on both axes, widths that are no multiple of the 16-pixel tile
    pytest.param((6, 19), 3, 4, 5, id="6x19-k3"),
    pytest.param((9, 20), 5, 8, 16, id="9x20-k5"),
    pytest.param((7, 7), 7, 3, 3, id="7x7-k7-window-is-the-image"),
    pytest.param((5, 37), 5, 20, 6, id="5x37-k5-c20-three-x-tiles"),
]


@pytest.mark.parametrize("shape,k,c,dim", FUSED_CASES)
def test_fused_reference_matches_the_unfused_chain(shape, k, c, dim):
    """The fused reference (logits from projected keys) against ContMix's unfused chain: affinities, the Linear,
    the bias written out per pixel (not through window_rpb_index), softmax, na2d_av."""
    from vizoo.kernels.contmix import contmix_fused_forward

    q, key, wp, bp, rpb, v, kp = _fused_inputs(shape, k, torch.float64, "cpu", c=c, dim=dim)
    logits = torch.nn.functional.linear(torch.einsum("byxgc,bgcl->byxgl", q, key), wp, bp)
    attn = (logits + _rpb_bias_loop(rpb, *shape, k)).softmax(-1)
    want = na2d_av(attn, v, k, backend="reference")
    torch.testing.assert_close(contmix_fused_forward(q, kp, bp, rpb, v, k, backend="reference"), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,k,c,dim", FUSED_CASES)
def test_fused_triton_matches_reference(monkeypatch, shape, k, c, dim, dtype):
    from vizoo.kernels.contmix import contmix_fused_forward
    from vizoo.kernels.contmix import triton as tk

    taken, real = [], tk.launch
    monkeypatch.setattr(tk, "launch", lambda kernel, *a, **kw: taken.append(kernel.__name__) or real(kernel, *a, **kw))
    q, key, wp, bp, rpb, v, kp = _fused_inputs(shape, k, dtype, c=c, dim=dim)
    want = contmix_fused_forward(q, kp, bp, rpb, v, k, backend="reference")
    got = contmix_fused_forward(q, kp, bp, rpb, v, k, backend="triton")
    assert got.shape == v.shape and got.dtype == dtype and taken == ["_fused_tile_kernel"]
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)


def test_fused_triton_mixed_dtypes():
    """float16 queries and projected keys with float32 values (autocast can hand ContMix such a mix), float64
    bias tables."""
    from vizoo.kernels.contmix import contmix_fused_forward

    q, key, wp, bp, rpb, v, kp = _fused_inputs((6, 19), 5, c=8, dim=4)
    q, kp, bp, rpb = q.half(), kp.half(), bp.double(), rpb.double()
    want = contmix_fused_forward(q, kp, bp, rpb, v, 5, backend="reference")
    got = contmix_fused_forward(q, kp, bp, rpb, v, 5, backend="triton")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,k,heads,batch", [
    pytest.param((14, 14), 13, 16, 8, id="T-stage3-14x14-k13"),
    pytest.param((14, 14), 5, 16, 8, id="T-stage3-14x14-k5"),
    pytest.param((7, 7), 7, 16, 8, id="T-stage4-7x7-k7"),
    pytest.param((7, 7), 5, 16, 8, id="T-stage4-7x7-k5"),
    pytest.param((56, 56), 13, 8, 2, id="56x56-k13"),
])
def test_fused_triton_matches_reference_gpu(shape, k, heads, batch, dtype):
    """OverLoCK-T's ContMix shapes (G groups of 16 channels; 49 regions), bfloat16 included."""
    from vizoo.kernels.contmix import contmix_fused_forward

    q, key, wp, bp, rpb, v, kp = _fused_inputs(shape, k, dtype, "cuda", batch=batch, heads=heads, c=16, dim=16,
                                               regions=49)
    want = contmix_fused_forward(q, kp, bp, rpb, v, k, backend="reference")
    got = contmix_fused_forward(q, kp, bp, rpb, v, k, backend="triton")
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)


def _fused_call(**changes):
    from vizoo.kernels.contmix import contmix_fused_forward

    q, key, wp, bp, rpb, v, kp = _fused_inputs((6, 7), 3, device="cpu", c=4, dim=5)
    args = dict(q=q, kp=kp, bp=bp, rpb=rpb, v=v, kernel_size=3)
    args.update({name: change(args[name]) if callable(change) else change for name, change in changes.items()})
    return lambda: contmix_fused_forward(**args)


@pytest.mark.parametrize("call,match", [
    pytest.param(_fused_call(kp=lambda t: t[..., :4]), r"kp must have shape \[2, 2, 4, 9\]", id="kp-taps"),
    pytest.param(_fused_call(kp=lambda t: t.transpose(2, 3)), "kp must have shape", id="kp-transposed"),
    pytest.param(_fused_call(bp=lambda t: t[:8]), r"bp must have shape \[9\]", id="bp"),
    pytest.param(_fused_call(rpb=lambda t: t[:, 1:-1, 1:-1]), r"rpb must have shape \[2, 5, 5\]", id="rpb"),
    pytest.param(_fused_call(v=lambda t: t[:, :, :6]), r"agree on \[B, H, W, heads\]", id="v-shape"),
    pytest.param(_fused_call(q=lambda t: t[0]), "5 dims", id="q-4-dims"),
    pytest.param(_fused_call(kernel_size=7), "must not exceed the map", id="kernel-too-big"),
    pytest.param(_fused_call(kernel_size=(3, 3)), "one int", id="kernel-pair"),
    pytest.param(_fused_call(kp=lambda t: t.double()), "kp must have q's dtype", id="kp-dtype"),
    pytest.param(_fused_call(v=lambda t: t.int()), "floating-point", id="int-v"),
    pytest.param(_fused_call(rpb=lambda t: t.requires_grad_()), "inference-only", id="requires-grad"),
    pytest.param(_fused_call(q=lambda t: t.double(), kp=lambda t: t.double(), backend="triton"), "unsupported dtype",
                 id="fp64-triton"),
    pytest.param(_fused_call(backend="cuda"), "unknown backend", id="backend-name"),
])
def test_fused_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fused_accepts_inputs_that_require_grad_under_no_grad():
    q, key, wp, bp, rpb, v, kp = _fused_inputs((6, 7), 3, device="cpu")
    from vizoo.kernels.contmix import contmix_fused_forward

    with torch.no_grad():
        out = contmix_fused_forward(q, kp, bp.requires_grad_(), rpb.requires_grad_(), v, 3)
    assert out.shape == v.shape and not out.requires_grad


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bench_contmix_chains_agree(monkeypatch, backend):
    """tools/bench_contmix.py's ContMix chains (what its GPU timing compares) agree at a tiny case on CPU."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_contmix.py"
    spec = importlib.util.spec_from_file_location("bench_contmix", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    case = bench.Case("tiny", 2, (6, 19), 2, 4, 5)
    assert bench.check_chain(case, device=DEVICE, backend=backend) < 1e-5

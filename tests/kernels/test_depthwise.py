"""``depthwise_conv2d``: the Triton kernels against ``F.conv2d(groups=C)`` (values, d_x, d_weight, d_bias),
torch.library integration (opcheck, compile, export, FLOPs) and argument checks.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at tiny shapes (the interpreter costs
about a second per case); tests marked ``gpu`` repeat the comparison at OverLoCK's real Basic-block shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizoo.kernels import depthwise_conv2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _conv(x, w, b, d):
    """The reference written out here, independently of the package: cuDNN / ATen's grouped conv."""
    return F.conv2d(x, w, b, padding=d * (w.shape[-1] - 1) // 2, dilation=d, groups=x.shape[1])


def _inputs(batch, channels, shape, k, dtype=torch.float32, device=DEVICE, bias=True):
    x = torch.randn(batch, channels, *shape, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(channels, 1, k, k, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(channels, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, w, b


def _compare(batch, channels, shape, k, d, dtype=torch.float32, device=DEVICE, bias=True, atol=2e-5, rtol=1e-4):
    x, w, b = _inputs(batch, channels, shape, k, dtype, device, bias)
    params = (x, w) + ((b,) if bias else ())
    out = depthwise_conv2d(x, w, b, d, backend="triton")
    want = _conv(x, w, b, d)
    assert out.shape == want.shape and out.dtype == dtype
    grad = torch.randn_like(want)
    got_grads = torch.autograd.grad(out, params, grad)
    if dtype != torch.float32:  # the reference in float32 (the kernels accumulate in float32 too)
        params32 = [p.detach().float().requires_grad_() for p in params]
        want = _conv(params32[0], params32[1], params32[2] if bias else None, d)
        want_grads = torch.autograd.grad(want, params32, grad.float())
    else:
        want_grads = torch.autograd.grad(want, params, grad)
    for name, g, r in zip(("out", "d_x", "d_weight", "d_bias"), (out,) + got_grads, (want,) + want_grads):
        # d_weight sums B*H*W products: scale its tolerance with the sum's size
        scale = (batch * shape[0] * shape[1]) ** 0.5 if name in ("d_weight", "d_bias") else 1.0
        torch.testing.assert_close(g.float(), r.float(), atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


CASES = [  # batch, channels, (H, W), k, dilation
    pytest.param(2, 2, (19, 17), 3, 1, id="19x17-k3-several-tiles"),
    pytest.param(2, 2, (9, 6), 5, 2, id="9x6-k5-d2"),
    pytest.param(1, 2, (4, 5), 7, 3, id="4x5-k7-d3-map-smaller-than-kernel"),
    pytest.param(1, 3, (7, 9), 9, 1, id="7x9-k9"),
    pytest.param(1, 2, (5, 6), 13, 2, id="5x6-k13-d2"),
]


@pytest.mark.parametrize("batch,channels,shape,k,d", CASES)
def test_triton_matches_conv2d(batch, channels, shape, k, d):
    _compare(batch, channels, shape, k, d)


def test_halo_wider_than_the_tensor_core_tile_falls_back_to_the_direct_kernels():
    _compare(1, 2, (5, 6), 3, 57)  # halo 2 * 57 > 112


def test_small_kernels_route_to_the_direct_kernels(monkeypatch):
    """With ``DIRECT_MAX_KERNEL = 3`` the op's 3x3 forward and both gradients run the CUDA-core kernels (and match
    F.conv2d); a 5x5 conv keeps the tensor-core ones."""
    from vizoo.kernels.depthwise import triton as _triton

    monkeypatch.setattr(_triton, "DIRECT_MAX_KERNEL", 3)
    methods, real = [], _triton._correlate
    monkeypatch.setattr(_triton, "_correlate", lambda *a: methods.append(a[-1]) or real(*a))
    _compare(2, 3, (9, 7), 3, 1)
    assert methods == ["direct", "direct"]  # forward, input gradient
    methods.clear()
    _compare(2, 3, (9, 7), 5, 1)
    assert methods == ["auto", "auto"]


def test_direct_kernels_match_conv2d():
    """The CUDA-core kernels (one tile load per tap) that serve wide halos, called directly at a small halo."""
    from vizoo.kernels.depthwise import triton as _triton

    x, w, b = _inputs(2, 2, (9, 7), 5)
    want = _conv(x, w, b, 2)
    grad = torch.randn_like(want)
    torch.testing.assert_close(_triton.forward(x.detach(), w.detach(), b.detach(), 2, method="direct"), want)
    got = _triton.backward(grad, x.detach(), w.detach(), 2, method="direct")
    for name, g, r in zip(("d_x", "d_weight", "d_bias"), got, torch.autograd.grad(want, (x, w, b), grad)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("k", [3, 5], ids=["k3-cuda-core-kernels", "k5-tensor-core-kernels"])
def test_direct_launch_repeated_calls(monkeypatch, k):
    """With DIRECT_LAUNCH, the first call of a problem tunes the autotuned forward as usual and later calls launch
    the plain kernel with the remembered config through ``_backend.launch`` (under the interpreter that launch
    takes the JIT path): values and gradients stay equal to F.conv2d over repeated calls."""
    from vizoo.kernels.depthwise import triton as _triton

    monkeypatch.setattr(_triton, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton, "_TUNED", {})
    launched, real = [], _triton.launch
    monkeypatch.setattr(_triton, "launch", lambda kernel, *a: launched.append(kernel) or real(kernel, *a))
    for call in range(3):
        launched.clear()
        _compare(2, 3, (9, 7), k, 1)
        forwards = [kern for kern in launched if kern.__name__ in ("_dw_fwd_kernel", "_dw_rows_kernel")]
        assert len(forwards) == (0 if call == 0 else 2)  # forward and d_x; the first call tunes both instead
        assert not any(isinstance(kern, _triton.Autotuner) for kern in launched)
        assert any("wgrad" in kern.__name__ for kern in launched)  # the weight gradient: always through launch


def test_channels_last_input():
    x, w, b = _inputs(1, 2, (5, 6), 3)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(depthwise_conv2d(x_cl, w, b, 2, backend="triton"), _conv(x, w, b, 2))


def test_triton_without_bias_fp16():
    _compare(2, 2, (5, 7), 3, 2, dtype=torch.float16, bias=False, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels,side,k,d", [
    pytest.param(64, 56, 17, 1, id="stage1-C64-56x56-K17"),
    pytest.param(64, 56, 3, 4, id="stage1-C64-56x56-k3-d4"),
    pytest.param(128, 28, 15, 1, id="stage2-C128-28x28-K15"),
    pytest.param(128, 28, 7, 2, id="stage2-C128-28x28-k7-d2"),
    pytest.param(256, 14, 13, 1, id="stage3-C256-14x14-K13"),
    pytest.param(512, 7, 7, 1, id="stage4-C512-7x7-K7"),
    pytest.param(512, 7, 3, 3, id="stage4-C512-7x7-k3-d3"),
    pytest.param(256, 56, 3, 1, id="ResDWConv-C256-56x56-k3"),
])
def test_triton_matches_conv2d_gpu(channels, side, k, d, dtype):
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _compare(16, channels, (side, side), k, d, dtype=dtype, device="cuda", **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_direct_kernels_match_conv2d_gpu(dtype):
    """The CUDA-core kernels at stage 1's shape (its tile shapes autotuned on the device). The output gradient is
    drawn in the tested dtype, so the float32 reference sees the same one (it once drew it in float32 and rounded
    it for the kernel only: d_x then differed by up to 0.09 near zero in bf16, which failed this test)."""
    from vizoo.kernels.depthwise import triton as _triton

    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    x, w, b = (t.detach() for t in _inputs(8, 64, (56, 56), 17, dtype=dtype, device="cuda"))
    x32, w32, b32 = (t.float().requires_grad_() for t in (x, w, b))
    want = _conv(x32, w32, b32, 1)
    grad = torch.randn_like(want).to(dtype)
    torch.testing.assert_close(_triton.forward(x, w, b, 1, method="direct").float(), want, **tol)
    got = _triton.backward(grad, x, w, 1, method="direct")
    want_grads = torch.autograd.grad(want, (x32, w32, b32), grad.float())
    for name, g, r in zip(("d_x", "d_weight", "d_bias"), got, want_grads):
        scale = 8 * 56 if name != "d_x" else 1.0
        torch.testing.assert_close(g.float(), r, atol=tol["atol"] * scale, rtol=tol["rtol"],
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels,side", [(256, 56), (512, 14)])
def test_small_kernels_on_the_direct_kernels_gpu(monkeypatch, channels, side, dtype):
    """3x3 convs (ResDWConv's shapes) routed to the CUDA-core kernels (``DIRECT_MAX_KERNEL = 3``), values and
    gradients against F.conv2d."""
    from vizoo.kernels.depthwise import triton as _triton

    monkeypatch.setattr(_triton, "DIRECT_MAX_KERNEL", 3)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _compare(16, channels, (side, side), 3, 1, dtype=dtype, device="cuda", **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [3, 5, 17])
def test_direct_launch_repeated_calls_gpu(monkeypatch, k):
    """DIRECT_LAUNCH on a GPU (compiled kernels launched directly after the first call of a problem): repeated
    calls, a view that is not 16-byte aligned and a dtype change keep values and gradients right."""
    from vizoo.kernels.depthwise import triton as _triton

    monkeypatch.setattr(_triton, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton, "_TUNED", {})
    for dtype, misaligned in [(torch.bfloat16, False), (torch.bfloat16, False), (torch.bfloat16, True),
                              (torch.float32, False), (torch.bfloat16, False)]:
        x, w, b = _inputs(4, 16, (28, 28), k, dtype=dtype, device="cuda")
        if misaligned:  # the same values one element into a larger buffer
            x = torch.cat([x.detach().new_zeros(1), x.detach().flatten()])[1:].view(x.shape).requires_grad_()
            assert x.data_ptr() % 16
        params = (x, w, b)
        out = depthwise_conv2d(x, w, b, 1, backend="triton")
        grad = torch.randn_like(out)
        got = (out, *torch.autograd.grad(out, params, grad))
        p32 = [t.detach().float().requires_grad_() for t in params]
        want = _conv(*p32, 1)
        want = (want, *torch.autograd.grad(want, p32, grad.float()))
        tol = dict(atol=1e-3, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=3e-2)
        for name, g, r in zip(("out", "d_x", "d_weight", "d_bias"), got, want):
            scale = (4 * 28 * 28) ** 0.5 if name in ("d_weight", "d_bias") else 1.0
            torch.testing.assert_close(g.float(), r, atol=tol["atol"] * scale, rtol=tol["rtol"],
                                       msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
def test_autocast_runs_in_the_autocast_dtype_gpu():
    x, w, b = _inputs(2, 8, (14, 14), 7, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, want = depthwise_conv2d(x, w, b), _conv(x, w, b, 1)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.float(), atol=3e-2, rtol=3e-2)


# ----------------------------------------------------------------------------------------------------------
# torch.library integration
def test_default_backend_follows_the_device():
    x, w, b = _inputs(1, 2, (5, 5), 3)
    torch.testing.assert_close(depthwise_conv2d(x, w, b), _conv(x, w, b, 1))


def test_custom_op_opcheck():
    x, w, b = _inputs(1, 2, (5, 4), 3)
    for use_triton in (False, True):
        torch.library.opcheck(torch.ops.vizoo.depthwise_conv2d_fwd.default, (x, w, b, 2, use_triton),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
        grad_out = torch.randn_like(torch.ops.vizoo.depthwise_conv2d_fwd.default(x, w, b, 2, use_triton))
        torch.library.opcheck(torch.ops.vizoo.depthwise_conv2d_bwd.default, (grad_out, x, w, 2, use_triton),
                              test_utils=("test_faketensor",))  # the sizes and strides compiled training sees
        # the op's gradients (its reference body runs without autograd) against autograd through F.conv2d
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        torch.ops.vizoo.depthwise_conv2d_fwd(*leaves, 2, use_triton).backward(grad_out)
        want = torch.autograd.grad(_conv(x, w, b, 2), (x, w, b), grad_out)
        torch.testing.assert_close(tuple(t.grad for t in leaves), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_compile_matches_eager(backend):
    x, w, b = _inputs(1, 2, (6, 5), 3)
    fn = lambda x, w, b: depthwise_conv2d(x * 2, w, b, 2, backend=backend).square().sum()  # noqa: E731
    # aot_eager: dynamo + AOTAutograd with no graph break allowed, without the minutes of a C++ build on CI
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(fn(x, w, b), (x, w, b))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


class _DW(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 5, groups=2)

    def forward(self, x):
        return depthwise_conv2d(x, self.conv.weight, self.conv.bias, 1, backend="triton")


def test_export_keeps_one_node():
    x = torch.randn(1, 2, 5, 6, device=DEVICE)
    model = _DW().to(DEVICE)
    program = torch.export.export(model, (x,))
    assert "vizoo.depthwise_conv2d_fwd" in str(program.graph)
    torch.testing.assert_close(program.module()(x), _conv(x, model.conv.weight, model.conv.bias, 1))


def test_flop_counter_counts_like_conv2d():
    from torch.utils.flop_counter import FlopCounterMode

    x, w, b = _inputs(2, 3, (6, 5), 5, bias=False)
    with FlopCounterMode(display=False) as ours:
        out = depthwise_conv2d(x, w, None, 2, backend="triton")
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert ours.get_total_flops() == 2 * 2 * 3 * 6 * 5 * 25
    assert counter.get_total_flops() == 2 * ours.get_total_flops()


# ----------------------------------------------------------------------------------------------------------
# argument checks: all raised before any launch
def _t(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,match", [
    pytest.param(lambda: depthwise_conv2d(_t(2, 5, 5), _t(2, 1, 3, 3)), "4 dims", id="3-dims"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(3, 1, 3, 3)), "\\[2, 1, k, k\\]", id="channels"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 2, 3, 3)), "\\[2, 1, k, k\\]", id="not-depthwise"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 5)), "square", id="not-square"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 4, 4)), "must be odd", id="even-k"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 3), _t(3)), "bias must be \\[C\\]",
                 id="bias-shape"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 3), dilation=0), "int >= 1", id="dil-0"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 3), dilation=(2, 2)), "int >= 1",
                 id="dil-tuple"),
    pytest.param(lambda: depthwise_conv2d(_t(0, 2, 5, 5), _t(2, 1, 3, 3)), "empty", id="empty"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 3, dtype=torch.float64)), "share x's dtype",
                 id="mixed-dtype"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5).int(), _t(2, 1, 3, 3).int()), "unsupported dtype",
                 id="int"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5, dtype=torch.float64), _t(2, 1, 3, 3, dtype=torch.float64),
                                          backend="triton"), "unsupported dtype", id="fp64-triton"),
    pytest.param(lambda: depthwise_conv2d(_t(1, 2, 5, 5), _t(2, 1, 3, 3), backend="trition"), "Did you mean",
                 id="backend-name"),
    pytest.param(lambda: depthwise_conv2d([1.0], _t(2, 1, 3, 3)), "torch.Tensor", id="not-a-tensor"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()

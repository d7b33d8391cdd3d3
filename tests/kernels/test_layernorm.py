"""The fused layer norm against the PyTorch reference (values and gradients), under TRITON_INTERPRET on CPU."""
from __future__ import annotations

import pytest
import torch

from vizoo.backbones.layers import LayerNorm
from vizoo.kernels.layernorm import layer_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,perm", [
    ((2, 5, 6, 24), None),           # NHWC map, contiguous
    ((2, 24, 5, 6), (0, 2, 3, 1)),   # NHWC view of an NCHW tensor (read through strides, no copy)
    ((3, 40, 7), None),              # odd channel count (masked columns)
    ((130, 64), None),               # more rows than one program's block
    ((2, 300, 48), None),            # backward: several row blocks per program, the last program partial
    ((17,), None),
])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
def test_fused_matches_reference(shape, perm, out_dtype, affine):
    x = (3 * torch.randn(shape, device=DEVICE) + 1)
    x = (x.permute(*perm) if perm else x).requires_grad_()
    C = x.shape[-1]
    w = torch.randn(C, device=DEVICE, requires_grad=True) if affine else None
    b = torch.randn(C, device=DEVICE, requires_grad=True) if affine else None
    params = [x] + ([w, b] if affine else [])
    y = layer_norm(x, w, b, 1e-5, out_dtype, backend="triton")
    ref = layer_norm(x, w, b, 1e-5, out_dtype, backend="reference")
    assert y.dtype == out_dtype and y.shape == x.shape and y.is_contiguous()
    tol = dict(atol=1e-5, rtol=1e-5) if out_dtype == torch.float32 else dict(atol=0, rtol=2**-7)  # 1 bf16 ulp
    torch.testing.assert_close(y.float(), ref.float(), **tol)
    g = torch.randn(x.shape, device=DEVICE)
    for name, a, r in zip(["dx", "dw", "db"], torch.autograd.grad(y.float(), params, g),
                          torch.autograd.grad(ref.float(), params, g)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_bad_input():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \[C\] = \[8\]"):
        layer_norm(x, torch.ones(7), None, backend="reference")
    with pytest.raises(ValueError, match="backend"):
        layer_norm(x, None, None, backend="cuda")


def test_module_is_a_drop_in_layernorm():
    """Same parameters, keys and output as nn.LayerNorm (on CPU it is nn.LayerNorm's own forward)."""
    ln, ref = LayerNorm(16, autocast_output=True), torch.nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    ref.load_state_dict(ln.state_dict())
    x = torch.randn(2, 3, 4, 16)
    torch.testing.assert_close(ln(x), ref(x))
    assert isinstance(ln, torch.nn.LayerNorm) and list(ln.state_dict()) == ["weight", "bias"]


@pytest.mark.gpu
def test_module_autocast_dtypes_gpu():
    """Under autocast: float32 output like nn.LayerNorm, or the autocast dtype with autocast_output=True;
    the values equal nn.LayerNorm's (cast)."""
    x = torch.randn(4, 14, 14, 256, device="cuda")
    for flag in (False, True):
        ln = LayerNorm(256, autocast_output=flag).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = ln(x)
            ref = torch.nn.functional.layer_norm(x, (256,), ln.weight, ln.bias)
        assert y.dtype == (torch.bfloat16 if flag else torch.float32)
        torch.testing.assert_close(y.float(), ref.to(y.dtype).float(), atol=1e-5, rtol=2**-7)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dtype", [((64, 56, 56, 64), torch.bfloat16), ((64, 7, 7, 512), torch.float32),
                                         ((8, 14, 14, 1536), torch.bfloat16)])
def test_fused_backward_matches_reference_gpu(shape, dtype):
    """The Triton backward at NAT's shapes (many row blocks per program; a row wider than 1024) against the
    reference's autograd: d_x, d_weight, d_bias."""
    x = (3 * torch.randn(shape, device="cuda") + 1).to(dtype).requires_grad_()
    w = torch.randn(shape[-1], device="cuda", requires_grad=True)
    b = torch.randn(shape[-1], device="cuda", requires_grad=True)
    g = torch.randn(shape, device="cuda", dtype=dtype)
    got = torch.autograd.grad(layer_norm(x, w, b, 1e-5, dtype, backend="triton"), (x, w, b), g)
    want = torch.autograd.grad(layer_norm(x, w, b, 1e-5, dtype, backend="reference"), (x, w, b), g)
    for name, a, r in zip(["dx", "dw", "db"], got, want):
        tol = 1e-4 if dtype == torch.float32 or name != "dx" else 2e-2
        torch.testing.assert_close(a.float(), r.float(), atol=tol * (1 if name == "dx" else shape[0] * 10),
                                   rtol=tol, msg=lambda m, name=name: f"{name}: {m}")

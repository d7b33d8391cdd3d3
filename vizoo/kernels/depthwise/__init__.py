"""``depthwise_conv2d``: stride-1 "same" depthwise convolution with large and dilated kernels (NCHW).

``out[b, c] = bias[c] + sum_{ky, kx} weight[c, 0, ky, kx] * x[b, c, y + ky*d - p, x + kx*d - p]`` with zero
padding ``p = d * (k - 1) // 2`` (odd ``k``), i.e. ``F.conv2d(x, weight, bias, padding=p, dilation=d,
groups=C)``. OverLoCK's Basic blocks (Lou & Yu, CVPR 2025, arXiv 2502.20087) and UniRepLKNet's Dilated Reparam
Block (Ding et al., arXiv 2311.15599) run such convolutions with K = 17/15/13/7 and dilated 3-9 taps branches;
cuDNN serves them with a direct kernel on CUDA cores that re-reads the input for every tap (about 1.5 T
multiply-adds/s on an H200, far from the memory bound). The fused Triton kernels (``triton.py``) turn each kernel
row into one banded matrix product on tensor cores, so a row tile plus its halo is loaded once for all taps of
that row, in the forward and both gradients (CUDA-core kernels take halos wider than 112 columns and 3x3
kernels).

The public function validates its arguments, then runs the plain PyTorch reference (``reference.py``,
``F.conv2d``) or the Triton kernels (through the ``vizoo::depthwise_conv2d_fwd`` / ``_bwd`` custom ops of
``ops.py``). Under CUDA autocast it casts x, weight and bias to the autocast dtype first, as autocast does for
``F.conv2d``. Channels-last inputs are made contiguous (NCHW) for the Triton kernels; the output is NCHW.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vizoo.kernels._backend import check_backend
from vizoo.kernels.depthwise import ops as _ops  # noqa: F401  (registers vizoo::depthwise_conv2d_fwd / _bwd)
from vizoo.kernels.depthwise.reference import depthwise_conv2d_reference, same_padding

BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)


def check_arguments(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation, backend) -> str:
    """Validate every argument before launch; return the backend (``None`` resolved).

    Raises:
        ValueError: naming the violated constraint and what is accepted.
    """
    for name, t in (("x", x), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d expects x as [B, C, H, W] (4 dims), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not have an empty dimension, got shape {tuple(x.shape)}")
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be [C, 1, k, k] = [{C}, 1, k, k] for x with {C} channels (a square depthwise "
                         f"kernel), got shape {tuple(weight.shape)}")
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"the kernel size must be odd ('same' padding is symmetric only then), got {weight.shape[-1]}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"bias must be [C] = [{C}], got shape {tuple(bias.shape)}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    for name, t in (("weight", weight),) + ((("bias", bias),) if bias is not None else ()):
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} must share x's dtype and device, got {t.dtype} on {t.device} and x "
                             f"{x.dtype} on {x.device}")
    if backend is None:
        backend = "triton" if x.is_cuda else "reference"
    return check_backend(x, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, dilation: int = 1,
                     backend: Optional[str] = None) -> Tensor:
    """Stride-1 depthwise conv with zero "same" padding ``dilation * (k - 1) // 2``.

    Args:
        x: ``[B, C, H, W]`` (float32, float16, bfloat16; float64 on the reference). Any map size, also smaller
            than the kernel's extent ``dilation * (k - 1) + 1``.
        weight: ``[C, 1, k, k]`` with odd ``k``, x's dtype and device.
        bias: ``None`` or ``[C]``.
        dilation: int >= 1.
        backend: ``None`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        ``[B, C, H, W]`` in x's dtype; differentiable in x, weight and bias on both backends (Triton accumulates in
        float32).
    """
    if isinstance(x, Tensor) and x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x, weight = x.to(dtype), weight.to(dtype) if isinstance(weight, Tensor) else weight
        bias = bias.to(dtype) if isinstance(bias, Tensor) else bias
    backend = check_arguments(x, weight, bias, dilation, backend)
    if backend == "reference":
        return depthwise_conv2d_reference(x, weight, bias, dilation)
    return torch.ops.vizoo.depthwise_conv2d_fwd(x, weight, bias, dilation, True)


__all__ = ["depthwise_conv2d", "check_arguments", "same_padding", "BACKENDS"]

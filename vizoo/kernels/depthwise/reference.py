"""Depthwise "same" convolution in plain PyTorch: the specification that the Triton kernels must match.

A depthwise convolution filters every channel with its own ``k x k`` kernel (``groups = channels``); here with
stride 1, an odd ``k``, a dilation ``d`` and zero padding ``d * (k - 1) // 2``, so the output has the input's
size. ``F.conv2d`` with ``groups=C`` is that operation, on any device and differentiable, so it is the reference.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def same_padding(kernel_size: int, dilation: int) -> int:
    """Zero padding on each side that keeps the map size for an odd kernel at stride 1."""
    return dilation * (kernel_size - 1) // 2


def depthwise_conv2d_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int) -> Tensor:
    """``[B, C, H, W]`` output of the depthwise conv of x (NCHW) with ``weight`` ``[C, 1, k, k]``."""
    padding = same_padding(weight.shape[-1], dilation)
    return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])


def depthwise_conv2d_reference_backward(grad_out: Tensor, x: Tensor, weight: Tensor,
                                        dilation: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(d_x, d_weight, d_bias)`` of ``depthwise_conv2d_reference`` through ``torch.nn.grad``'s convolution
    gradients, without autograd (a custom op's body runs below the autograd dispatch key)."""
    padding, groups = same_padding(weight.shape[-1], dilation), x.shape[1]
    d_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, padding=padding, dilation=dilation, groups=groups)
    d_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=padding, dilation=dilation, groups=groups)
    return d_x.contiguous(), d_w, grad_out.sum((0, 2, 3)).to(weight.dtype)

"""Depthwise "same" convolution in plain PyTorch: the specification that the Triton kernels must match.

A depthwise convolution filters every channel with its own ``k x k`` kernel (``groups = channels``); here with
stride 1, an odd ``k``, a dilation ``d`` and zero padding ``d * (k - 1) // 2``, so the output has the input's
size. ``F.conv2d`` with ``groups=C`` is that operation, on any device and differentiable, so it is the reference.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor


def same_padding(kernel_size: int, dilation: int) -> int:
    """Zero padding on each side that keeps the map size for an odd kernel at stride 1."""
    return dilation * (kernel_size - 1) // 2


def depthwise_conv2d_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int) -> Tensor:
    """``[B, C, H, W]`` output of the depthwise conv of x (NCHW) with ``weight`` ``[C, 1, k, k]``."""
    padding = same_padding(weight.shape[-1], dilation)
    return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])

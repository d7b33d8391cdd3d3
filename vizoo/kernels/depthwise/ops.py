"""``torch.library`` registration of the depthwise conv: ``vizoo::depthwise_conv2d_fwd`` and ``_bwd``.

The ops carry fake (meta) implementations, an autograd formula and FLOP formulas, so ``torch.compile`` traces
models that use them without graph breaks, ``torch.export`` keeps them as single nodes and
``torch.utils.flop_counter.FlopCounterMode`` counts them (forward ``2 * B * C * H * W * k * k``, a multiply and
an add per tap; backward twice that: d_x and d_weight), as it counts a grouped ``F.conv2d``.

``use_triton`` picks the fused kernels; ``False`` runs the plain PyTorch reference inside the op, which is what a
TorchScript-compiled model calls on a CPU. Triton is imported only when a kernel runs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vizoo.kernels.depthwise.reference import depthwise_conv2d_reference, depthwise_conv2d_reference_backward


@torch.library.custom_op("vizoo::depthwise_conv2d_fwd", mutates_args=())
def depthwise_conv2d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int,
                         use_triton: bool) -> Tensor:
    """Output of ``depthwise_conv2d`` (NCHW, x's dtype)."""
    if use_triton:
        from vizoo.kernels.depthwise import triton as _triton

        return _triton.forward(x, weight, bias, dilation)
    return depthwise_conv2d_reference(x, weight, bias, dilation).contiguous()  # NCHW like the kernels


@depthwise_conv2d_fwd.register_fake
def _(x, weight, bias, dilation, use_triton):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("vizoo::depthwise_conv2d_bwd", mutates_args=())
def depthwise_conv2d_bwd(grad_out: Tensor, x: Tensor, weight: Tensor, dilation: int,
                         use_triton: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(d_x, d_weight, d_bias)``; d_bias is computed whether or not the forward had a bias."""
    if use_triton:
        from vizoo.kernels.depthwise import triton as _triton

        return _triton.backward(grad_out, x, weight, dilation)
    return depthwise_conv2d_reference_backward(grad_out, x, weight, dilation)


@depthwise_conv2d_bwd.register_fake
def _(grad_out, x, weight, dilation, use_triton):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            weight.new_empty(weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias, dilation, use_triton = inputs
    ctx.save_for_backward(x, weight)
    ctx.options = (dilation, use_triton)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    d_x, d_w, d_b = depthwise_conv2d_bwd(grad_out.contiguous(), x, weight, *ctx.options)
    return d_x, d_w, d_b if ctx.has_bias else None, None, None


depthwise_conv2d_fwd.register_autograd(_backward, setup_context=_setup_context)


def conv_flops(x_shape, weight_shape) -> int:
    """Forward FLOPs of one depthwise conv (a multiply and an add per output pixel, channel and tap)."""
    return 2 * math.prod(x_shape) * math.prod(weight_shape[-2:])


@register_flop_formula(torch.ops.vizoo.depthwise_conv2d_fwd)
def _fwd_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return conv_flops(x_shape, weight_shape)


@register_flop_formula(torch.ops.vizoo.depthwise_conv2d_bwd)
def _bwd_flops(grad_shape, x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * conv_flops(x_shape, weight_shape)

"""``torch.library`` registration of ``na2d_av``: ``vizoo::na2d_av_fwd`` and ``vizoo::na2d_av_bwd``.

The ops carry fake (meta) implementations, an autograd formula and FLOP formulas, so ``torch.compile`` traces
models that use them without graph breaks, ``torch.export`` keeps them as single nodes and
``torch.utils.flop_counter.FlopCounterMode`` counts them (forward ``2 * B * H * W * heads * kh*kw * dim``, a
multiply and an add per tap and channel; backward twice that: d_attn and d_v).

``use_triton`` picks the fused kernel; ``False`` runs the plain PyTorch reference inside the op, which is what a
TorchScript-compiled model calls on a CPU. Triton is imported only when a kernel runs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vizoo.kernels.contmix.reference import na2d_av_reference, na2d_av_reference_backward


@torch.library.custom_op("vizoo::na2d_av_fwd", mutates_args=())
def na2d_av_fwd(attn: Tensor, v: Tensor, kernel_size: list[int], dilation: list[int], use_triton: bool) -> Tensor:
    """Output of ``na2d_av`` (layout and dtype of v)."""
    if use_triton:
        from vizoo.kernels.contmix import triton as _triton

        return _triton.forward(attn, v, kernel_size, dilation)
    return na2d_av_reference(attn, v, kernel_size, dilation).contiguous()


@na2d_av_fwd.register_fake
def _(attn, v, kernel_size, dilation, use_triton):
    return v.new_empty(v.shape)  # the kernels write contiguous outputs, whatever the inputs' strides


@torch.library.custom_op("vizoo::na2d_av_bwd", mutates_args=())
def na2d_av_bwd(grad_out: Tensor, attn: Tensor, v: Tensor, kernel_size: list[int], dilation: list[int],
                use_triton: bool) -> tuple[Tensor, Tensor]:
    """``(d_attn, d_v)``."""
    if use_triton:
        from vizoo.kernels.contmix import triton as _triton

        return _triton.backward(grad_out, attn, v, kernel_size, dilation)
    d_attn, d_v = na2d_av_reference_backward(grad_out, attn, v, kernel_size, dilation)
    return d_attn.contiguous(), d_v.contiguous()


@na2d_av_bwd.register_fake
def _(grad_out, attn, v, kernel_size, dilation, use_triton):
    return attn.new_empty(attn.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    attn, v, kernel_size, dilation, use_triton = inputs
    ctx.save_for_backward(attn, v)
    ctx.options = (kernel_size, dilation, use_triton)


def _backward(ctx, grad_out):
    attn, v = ctx.saved_tensors
    d_attn, d_v = na2d_av_bwd(grad_out.contiguous(), attn, v, *ctx.options)
    return d_attn, d_v, None, None, None


na2d_av_fwd.register_autograd(_backward, setup_context=_setup_context)


class TritonAV(torch.autograd.Function):
    """Eager fast path: the same kernels as the custom ops without their dispatch overhead (as NA's and InLine's
    ops have); ``na2d_av`` uses it only when nothing is tracing (no compile, export, FX or dispatch mode such as
    FlopCounterMode) and a gradient is needed, otherwise ``torch.ops.vizoo.na2d_av_fwd`` (tracing) or the forward
    kernel alone. The backward launches only the kernels of the gradients asked for."""

    @staticmethod
    def forward(ctx, attn, v, kernel_size, dilation):
        from vizoo.kernels.contmix import triton as _triton

        attn, v = attn.contiguous(), v.contiguous()  # saved as the kernels read them: backward copies neither again
        ctx.save_for_backward(attn, v)
        ctx.options = (kernel_size, dilation)
        return _triton.forward(attn, v, kernel_size, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        from vizoo.kernels.contmix import triton as _triton

        attn, v = ctx.saved_tensors
        need_attn, need_v = ctx.needs_input_grad[:2]
        d_attn, d_v = _triton.backward(grad_out, attn, v, *ctx.options, need_attn=need_attn, need_v=need_v)
        return d_attn, d_v, None, None


def av_flops(v_shape, kernel_size) -> int:
    """Forward FLOPs of one ``na2d_av`` call."""
    return 2 * math.prod(v_shape) * math.prod(kernel_size)


@register_flop_formula(torch.ops.vizoo.na2d_av_fwd)
def _fwd_flops(attn_shape, v_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return av_flops(v_shape, kernel_size)


@register_flop_formula(torch.ops.vizoo.na2d_av_bwd)
def _bwd_flops(grad_shape, attn_shape, v_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return 2 * av_flops(v_shape, kernel_size)

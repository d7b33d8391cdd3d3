"""``torch.library`` registration of the fused neighborhood-attention kernels.

Two custom ops, ``vizoo::na_fwd`` and ``vizoo::na_bwd``, wrap the Triton forward and backward. They carry
fake (meta) implementations, an autograd formula and FLOP formulas, so ``torch.compile`` traces models that
use them without graph breaks, ``torch.export`` keeps them as single nodes, and
``torch.utils.flop_counter.FlopCounterMode`` counts them.

FLOP convention (tensor-core FLOPs only, as NATTEN and the FlashAttention papers count them): the forward
is ``4 * B * heads * N * K * dim`` with ``N = prod(spatial)`` and ``K = prod(kernel_size)`` (QK^T and PV);
dilation, stride and causality do not change it. The backward is counted as twice the forward (dV, dP, dQ
and dK products), the convention PyTorch's FlopCounterMode uses for scaled_dot_product_attention, so NA
and SDPA layers are counted alike; the FlashAttention papers count 2.5x (they add the recomputed QK^T).

Triton is imported only when a kernel actually runs, so importing vizoo stays fast.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


@torch.library.custom_op("vizoo::na_fwd", mutates_args=())
def na_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rpb: Optional[Tensor],
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    is_causal: list[bool],
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Fused forward; returns the output (layout of q) and the log-sum-exp ``[B, heads, *spatial]`` (fp32)."""
    from vizoo.kernels.neighborhood import triton as _triton

    return _triton.forward(q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale)


@na_fwd.register_fake
def _(q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale):
    B, *spatial, heads, _ = q.shape
    # the kernels write contiguous outputs whatever q's strides (empty_like would copy a permuted q's)
    return q.new_empty(q.shape), q.new_empty((B, heads, *spatial), dtype=torch.float32)


@torch.library.custom_op("vizoo::na_bwd", mutates_args=())
def na_bwd(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    rpb: Optional[Tensor],
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    is_causal: list[bool],
    scale: float,
    rpb_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward; returns dq, dk, dv and d_rpb (an empty tensor when ``rpb_grad`` is False)."""
    from vizoo.kernels.neighborhood import triton as _triton

    dq, dk, dv, drpb = _triton.backward(
        grad_out, q, k, v, out, lse, rpb, kernel_size, dilation, stride, is_causal, scale, rpb_grad
    )
    return dq, dk, dv, (q.new_empty((0,)) if drpb is None else drpb)


@na_bwd.register_fake
def _(grad_out, q, k, v, out, lse, rpb, kernel_size, dilation, stride, is_causal, scale, rpb_grad):
    drpb = rpb.new_empty(rpb.shape) if (rpb is not None and rpb_grad) else q.new_empty((0,))
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rpb)
    ctx.options = (kernel_size, dilation, stride, is_causal, scale)
    ctx.rpb_grad = rpb is not None and ctx.needs_input_grad[3]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, rpb = ctx.saved_tensors
    dq, dk, dv, drpb = na_bwd(grad_out.contiguous(), q, k, v, out, lse, rpb, *ctx.options, ctx.rpb_grad)
    return dq, dk, dv, (drpb if ctx.rpb_grad else None), None, None, None, None, None


na_fwd.register_autograd(_backward, setup_context=_setup_context)


def _forward_flops(q_shape, kernel_size) -> int:
    return 4 * math.prod(q_shape[:-1]) * math.prod(kernel_size) * q_shape[-1]


@register_flop_formula(torch.ops.vizoo.na_fwd)
def _na_fwd_flops(q_shape, k_shape, v_shape, rpb_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return _forward_flops(q_shape, kernel_size)


@register_flop_formula(torch.ops.vizoo.na_bwd)
def _na_bwd_flops(grad_out_shape, q_shape, k_shape, v_shape, out_shape_, lse_shape, rpb_shape, kernel_size,
                  *args, out_shape=None, **kwargs) -> int:
    return 2 * _forward_flops(q_shape, kernel_size)


class TritonNA(torch.autograd.Function):
    """Eager fast path: the same kernels as the custom ops without their dispatch overhead.

    ``vizoo.kernels.na*d`` uses it only when nothing is tracing (no torch.compile, no export, no dispatch mode
    such as FlopCounterMode or FakeTensorMode); otherwise it calls ``torch.ops.vizoo.na_fwd``.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale):
        from vizoo.kernels.neighborhood import triton as _triton

        out, lse = _triton.forward(q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, rpb)
        ctx.options = (kernel_size, dilation, stride, is_causal, scale)
        ctx.rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from vizoo.kernels.neighborhood import triton as _triton

        q, k, v, out, lse, rpb = ctx.saved_tensors
        dq, dk, dv, drpb = _triton.backward(grad_out, q, k, v, out, lse, rpb, *ctx.options, ctx.rpb_grad)
        return dq, dk, dv, drpb, None, None, None, None, None

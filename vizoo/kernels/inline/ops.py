"""``torch.library`` registration of the fused InLine kernels.

Two custom ops, ``vizoo::inline_fwd`` and ``vizoo::inline_bwd``, wrap the Triton forward and backward with
fake
(meta) implementations, an autograd formula and FLOP formulas, so ``torch.compile(fullgraph=True)`` traces
models that use them without graph breaks, ``torch.export`` keeps one node per call, and
``torch.utils.flop_counter.FlopCounterMode`` counts them.

FLOPs (matmul FLOPs, as for attention): the forward is ``4 * B * heads * N * dim^2`` (``K^T V`` and ``Q M``),
the
backward twice that (``Q^T dO``, ``dO M^T``, ``(V - mean V) G^T``, ``(K - mean K) G``).

Triton is imported only when a kernel runs, so importing vizoo stays fast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def _padded_dim(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())


@torch.library.custom_op("vizoo::inline_fwd", mutates_args=())
def inline_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fused forward; returns the output (contiguous, q's dtype), the state and the means (float32)."""
    from vizoo.kernels.inline import triton as _triton

    return _triton.forward(q, k, v, scale)


@inline_fwd.register_fake
def _(q, k, v, scale):
    B, N, heads, dim = q.shape
    bd = _padded_dim(dim)
    f32 = torch.float32
    return (
        q.new_empty(q.shape),
        q.new_empty((B * heads, bd, bd), dtype=f32),
        q.new_empty((B * heads, 2, bd), dtype=f32),
    )


@torch.library.custom_op("vizoo::inline_bwd", mutates_args=())
def inline_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, state: Tensor, means: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused backward; returns dq, dk, dv."""
    from vizoo.kernels.inline import triton as _triton

    return _triton.backward(grad_out, q, k, v, state, means, scale)


@inline_bwd.register_fake
def _(grad_out, q, k, v, state, means, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    _, state, means = output
    ctx.save_for_backward(q, k, v, state, means)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_state, grad_means):
    q, k, v, state, means = ctx.saved_tensors
    dq, dk, dv = inline_bwd(grad_out.contiguous(), q, k, v, state, means, ctx.scale)
    return dq, dk, dv, None


inline_fwd.register_autograd(_backward, setup_context=_setup_context)


def forward_flops(q_shape) -> int:
    return 4 * math.prod(q_shape[:-1]) * q_shape[-1] ** 2


@register_flop_formula(torch.ops.vizoo.inline_fwd)
def _inline_fwd_flops(q_shape, k_shape, v_shape, scale, *args, out_shape=None, **kwargs) -> int:
    return forward_flops(q_shape)


@register_flop_formula(torch.ops.vizoo.inline_bwd)
def _inline_bwd_flops(grad_out_shape, q_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * forward_flops(q_shape)


class TritonInLine(torch.autograd.Function):
    """Eager fast path: the same kernels as the custom ops without their dispatch overhead; used only when
    nothing is tracing (no compile, export, or dispatch mode such as FlopCounterMode)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        from vizoo.kernels.inline import triton as _triton

        out, state, means = _triton.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, state, means)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from vizoo.kernels.inline import triton as _triton

        q, k, v, state, means = ctx.saved_tensors
        dq, dk, dv = _triton.backward(grad_out, q, k, v, state, means, ctx.scale)
        return dq, dk, dv, None

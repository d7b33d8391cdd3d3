"""Layer norm over the last axis: a fused Triton kernel for CUDA beside the PyTorch reference.

``layer_norm(x, weight, bias, eps, out_dtype)`` normalises the last axis with float32 statistics and returns
``out_dtype`` (default: x's dtype). The Triton forward and backward are in ``triton.py``; the backward reuses
the saved mean and reciprocal std.
The backbones use it through ``vizoo.backbones.layers.LayerNorm``, a drop-in ``nn.LayerNorm``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from vizoo.kernels.layernorm.reference import layer_norm as _reference
from vizoo.utils import unknown_name_error

BACKENDS = ("reference", "triton")


class _FusedLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        from vizoo.kernels.layernorm import triton as _triton

        y, mean, rstd = _triton.forward(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        from vizoo.kernels.layernorm import triton as _triton

        x, weight, bias, mean, rstd = ctx.saved_tensors
        param_grad = (weight is not None and ctx.needs_input_grad[1]) or (bias is not None and ctx.needs_input_grad[2])
        gx, sums = _triton.backward(grad, x, weight, mean, rstd, param_grad)
        gw = sums[0].to(weight.dtype) if param_grad and weight is not None and ctx.needs_input_grad[1] else None
        gb = sums[1].to(bias.dtype) if param_grad and bias is not None and ctx.needs_input_grad[2] else None
        return gx if ctx.needs_input_grad[0] else None, gw, gb, None, None


def layer_norm(
    x: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Layer norm over the last axis with float32 statistics, output in ``out_dtype`` (default x's dtype).

    ``backend=None`` picks Triton for CUDA tensors and the reference otherwise; ``"triton"`` on CPU tensors
    needs ``TRITON_INTERPRET=1`` set before import (the tests do that).

    Raises:
        ValueError: an unknown backend, a weight or bias whose shape is not ``[C]``, or the triton backend on
            CPU tensors without the interpreter.
    """
    if backend is None:
        backend = "triton" if x.is_cuda else "reference"
    if backend not in BACKENDS:
        raise unknown_name_error("backend", backend, BACKENDS)
    C = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"{name} must have shape [C] = [{C}] for input of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
    out_dtype = out_dtype or x.dtype
    if backend == "reference":
        return _reference(x, weight, bias, eps, out_dtype)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before import), "
                         f"got device {x.device}")
    return _FusedLayerNorm.apply(x, weight, bias, float(eps), out_dtype)


__all__ = ["layer_norm", "BACKENDS"]

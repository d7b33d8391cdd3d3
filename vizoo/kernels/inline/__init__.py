"""Injective linear attention ``inline_attn`` (InLine; Han et al., NeurIPS 2024, arXiv 2412.06590).

``inline_attn(q, k, v)`` on ``[B, N, heads, dim]`` tensors (NATTEN's heads-last layout, flattened tokens)
computes, per batch and head,

    w_ij = (scale / N) * (q_i . k_j - q_i . mean_s k_s) + 1 / N,     out_i = sum_j w_ij v_j

in O(N dim^2) without forming the N x N weights. ``scale`` defaults to ``dim ** -0.5``; the extra ``1 / N`` is
what the official code applies (it pre-scales K and V by ``sqrt(scale / N)``), so vizoo's weights are exactly
the
official ones. Each row of weights sums to 1; weights may be negative. The official InLine models use the
identity feature map, which is what this operator computes (apply any other feature map to q and k first).

Backends: ``reference.py`` (plain PyTorch, any device, the specification) and ``triton.py`` (fused forward and
backward, through the ``vizoo::inline_fwd`` / ``vizoo::inline_bwd`` custom ops of ``ops.py``). The public
function
validates its arguments, then dispatches: Triton on CUDA, the reference elsewhere, or what ``backend`` forces.

The Triton kernels take head dims up to 64 in float32 and up to 128 in float16/bfloat16 (a float32 head dim of 128
needs 288 KiB of shared memory, more than an H200 has); outside that, the default dispatch uses the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vizoo.kernels._backend import check_backend
from vizoo.kernels.inline import ops as _ops
from vizoo.kernels.inline.reference import inline_attention as _reference
from vizoo.utils import tracing

BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)
TRITON_MAX_DIM = 128
TRITON_MAX_DIM_FP32 = 64


def _triton_max_dim(dtype: torch.dtype) -> int:
    return TRITON_MAX_DIM_FP32 if dtype == torch.float32 else TRITON_MAX_DIM


def check_arguments(q: Tensor, k: Tensor, v: Tensor, scale, backend: Optional[str]) -> str:
    """Validate every argument before launch and return the backend.

    Raises:
        ValueError: naming the violated constraint and what is accepted.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"inline_attn expects {name} in layout [B, N, heads, dim] (4 dims), got shape "
                f"{tuple(t.shape)}"
            )
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if min(q.shape) < 1:
        raise ValueError(f"q must not have an empty dimension, got shape {tuple(q.shape)}")
    if backend is None:
        backend = "triton" if q.is_cuda and q.shape[-1] <= _triton_max_dim(q.dtype) else "reference"
    check_backend(q, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)
    if backend == "triton" and q.shape[-1] > _triton_max_dim(q.dtype):
        raise ValueError(
            f"head dim must be at most {TRITON_MAX_DIM_FP32} (float32) or {TRITON_MAX_DIM} (float16, bfloat16) "
            f"for the triton backend, got {q.shape[-1]} in {q.dtype}"
        )
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale must be a float or None, got {type(scale).__name__}")
    return backend


def inline_attn(
    q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None, backend: Optional[str] = None
) -> Tensor:
    """Injective linear attention on ``[B, N, heads, dim]`` tensors.

    Args:
        q, k, v: query, key and value, same shape, dtype (float32, float16, bfloat16; float64 on the
            reference) and device; any strides (views into a packed qkv are read in place by Triton).
        scale: ``tau`` in ``w_ij = (tau / N)(q_i.k_j - q_i.mean k) + 1/N``; default ``dim ** -0.5``.
        backend: ``None`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        The output, same shape and dtype as ``q``.

    Raises:
        ValueError: bad layout, shapes, dtype, device, head dim (Triton: at most 128), scale or backend.
    """
    backend = check_arguments(q, k, v, scale, backend)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if backend == "reference":
        return _reference(q, k, v, scale)
    if not tracing():
        return _ops.TritonInLine.apply(q, k, v, scale)
    return torch.ops.vizoo.inline_fwd(q, k, v, scale)[0]


__all__ = ["inline_attn", "check_arguments", "BACKENDS"]

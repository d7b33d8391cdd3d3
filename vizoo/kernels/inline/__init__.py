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
``local_residual_add`` adds the InLine layers' local residual (a per-sample depthwise 3x3 convolution of V) to
an attention output, in one fused Triton kernel on CUDA.

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
from vizoo.kernels.inline.reference import local_residual_add as _local_reference
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


def local_residual_add(out: Tensor, v: Tensor, taps: Tensor, grid_size, prefix: int = 0,
                       backend: Optional[str] = None) -> Tensor:
    """``out`` with InLine's local residual of ``v`` added to its last ``H*W`` tokens: a per-sample depthwise
    3x3 convolution (zero padding) of ``v`` on the ``H x W`` grid whose taps each sample brings.

    Args:
        out: ``[B, prefix + H*W, C]``, the global attention output (any strides with the channels contiguous).
        v: ``[B, H*W, C]``, the values on the grid, row-major (a view into a packed qkv is read in place).
        taps: ``[B, 9C]`` or ``[B, 9C, 1]``; entry ``9c + 3 ky + kx`` is channel c's tap at row ky, column kx.
        grid_size: ``(H, W)``.
        prefix: leading tokens of ``out`` (class token) that get no residual.
        backend: ``None`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        ``[B, prefix + H*W, C]`` in out's dtype, differentiable in out, v and taps.

    Raises:
        ValueError: shapes that do not fit together, mixed devices, an unsupported dtype or backend.
    """
    for name, t, dims in (("out", out, 3), ("v", v, 3), ("taps", taps, None)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if dims is not None and t.dim() != dims:
            raise ValueError(f"local_residual_add expects {name} with {dims} dims, got shape {tuple(t.shape)}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be an int >= 0, got {prefix!r}")
    H, W = (int(s) for s in grid_size)
    B, N, C = out.shape
    if N != prefix + H * W or tuple(v.shape) != (B, H * W, C):
        raise ValueError(f"local_residual_add expects out [B, prefix + H*W, C] and v [B, H*W, C] with prefix "
                         f"{prefix} and grid {H}x{W}, got out {tuple(out.shape)} and v {tuple(v.shape)}")
    if taps.numel() != B * 9 * C or taps.shape[0] != B:
        raise ValueError(f"taps must be [B, 9C] = [{B}, {9 * C}] (or [B, 9C, 1]), got {tuple(taps.shape)}")
    if not (out.device == v.device == taps.device):
        raise ValueError(f"out, v and taps must be on one device, got {out.device}, {v.device}, {taps.device}")
    if backend is None:
        backend = "triton" if out.is_cuda else "reference"
    for t in (out, v, taps):
        check_backend(t, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)
    taps = taps.reshape(B, 9 * C)
    if backend == "reference":
        return _local_reference(out, v, taps, (H, W), prefix)
    return torch.ops.vizoo.inline_local_fwd(out, v, taps, [H, W], prefix)


__all__ = ["inline_attn", "local_residual_add", "check_arguments", "BACKENDS"]

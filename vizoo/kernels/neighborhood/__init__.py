"""Neighborhood attention ``na1d`` / ``na2d``: NAT, DiNAT, GNA strides, causal axes, relative position bias.

Public functions validate their arguments, then dispatch to the fused Triton kernel (``triton.py``, through the
``vizoo::na_fwd`` / ``vizoo::na_bwd`` custom ops of ``ops.py``), to the memory-lean PyTorch path (``chunked.py``:
queries in chunks, a backward that recomputes instead of keeping per-query key copies; the default off CUDA) or to the
plain PyTorch reference (``reference.py``, the specification). The semantics and the heads-last layout follow NATTEN
(github.com/SHI-Labs/NATTEN, ``natten.na1d``/``na2d``), so NATTEN users can switch; unlike NATTEN >= 0.20, vizoo keeps
NAT's relative position bias (RPB), which the published NAT/DiNAT checkpoints need.

Differences from NATTEN, on purpose:

* ``rpb`` is accepted (NATTEN >= 0.20 has none). It requires stride 1; it is allowed with even kernel sizes
  and with causal axes, because with stride 1 every key-minus-query offset stays inside the ``2k-1`` table.
* No GQA/MQA, no ``additional_keys``, no 3-D (the reference handles any rank; only 1-D and 2-D are public).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from vizoo.kernels._backend import check_backend
from vizoo.kernels.neighborhood import ops as _ops  # noqa: F401  (registers vizoo::na_fwd / na_bwd)
from vizoo.kernels.neighborhood.chunked import neighborhood_attention as _chunked
from vizoo.kernels.neighborhood.reference import neighborhood_attention as _reference
from vizoo.utils import tracing

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

BACKENDS = ("reference", "chunked", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)
TRITON_HEAD_DIMS = (16, 128)


def _per_axis(name: str, value, ndim: int, kind: type) -> tuple:
    if isinstance(value, (int, bool)):
        values = (value,) * ndim
    elif isinstance(value, (tuple, list)):
        values = tuple(value)
    else:
        raise ValueError(f"{name} must be a {kind.__name__} or a tuple of {ndim}, got {value!r}")
    if len(values) != ndim:
        raise ValueError(f"{name} must be a {kind.__name__} or a tuple of {ndim}, got {value!r}")
    for x in values:
        if kind is bool and not isinstance(x, bool):
            raise ValueError(f"{name} must hold bools, got {value!r}")
        if kind is int and (isinstance(x, bool) or not isinstance(x, int)):
            raise ValueError(f"{name} must hold ints, got {value!r}")
    return values


def check_arguments(
    q: Tensor, k: Tensor, v: Tensor, ndim: int, kernel_size, dilation, stride, is_causal, rpb, scale, backend
) -> tuple:
    """Validate every argument before launch; return normalised per-axis tuples and the backend.

    Raises:
        ValueError: naming the violated constraint and what is accepted.
    """
    layout = "[B, L, heads, dim]" if ndim == 1 else "[B, H, W, heads, dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim + 3:
            raise ValueError(f"na{ndim}d expects {name} in layout {layout} ({ndim + 3} dims), got shape "
                             f"{tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    backend = check_backend(q, backend or ("triton" if q.is_cuda else "chunked"), BACKENDS, TRITON_DTYPES,
                            REFERENCE_DTYPES)
    spatial = tuple(q.shape[1:-2])
    heads, dim = q.shape[-2], q.shape[-1]
    if min(q.shape) < 1:
        raise ValueError(f"q must not have an empty dimension, got shape {tuple(q.shape)}")
    if backend == "triton":
        lo, hi = TRITON_HEAD_DIMS
        if not lo <= dim <= hi:
            raise ValueError(f"head dim must be in {lo}..{hi} for the triton backend, got {dim}")
    kernel_size = _per_axis("kernel_size", kernel_size, ndim, int)
    dilation = _per_axis("dilation", dilation, ndim, int)
    stride = _per_axis("stride", stride, ndim, int)
    is_causal = _per_axis("is_causal", is_causal, ndim, bool)
    for axis, (L, ks, d, s) in enumerate(zip(spatial, kernel_size, dilation, stride)):
        if ks < 1 or d < 1 or s < 1:
            raise ValueError(f"kernel_size, dilation and stride must be >= 1, got kernel_size={kernel_size}, "
                             f"dilation={dilation}, stride={stride}")
        if ks * d > L:
            raise ValueError(f"kernel_size * dilation must not exceed the axis length: axis {axis} has "
                             f"length {L} but kernel_size {ks} * dilation {d} = {ks * d}")
        if s > ks:
            raise ValueError(f"stride must not exceed kernel_size: axis {axis} has stride {s} > "
                             f"kernel_size {ks}")
    if rpb is not None:
        expected = (heads,) + tuple(2 * ks - 1 for ks in kernel_size)
        if not isinstance(rpb, Tensor) or tuple(rpb.shape) != expected:
            got = tuple(rpb.shape) if isinstance(rpb, Tensor) else type(rpb).__name__
            raise ValueError(f"rpb must have shape [heads, 2k-1 per axis] = {expected}, got {got}")
        if not rpb.is_floating_point() or rpb.device != q.device:
            raise ValueError(f"rpb must be a floating tensor on {q.device}, got {rpb.dtype} on {rpb.device}")
        if any(s != 1 for s in stride):
            raise ValueError(f"rpb requires stride 1 on every axis (offsets leave the 2k-1 table otherwise), "
                             f"got stride={stride}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return kernel_size, dilation, stride, is_causal, backend


_CHECKED: dict = {}


def _checked(q, k, v, ndim, kernel_size, dilation, stride, is_causal, rpb, scale, backend) -> tuple:
    """``check_arguments`` with a cache of argument combinations that already passed (eager speed)."""
    key = None
    if not torch.compiler.is_compiling():
        try:
            key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, ndim,
                   kernel_size, dilation, stride, is_causal, type(scale),
                   None if rpb is None else (type(rpb), getattr(rpb, "shape", None),
                                             getattr(rpb, "dtype", None), getattr(rpb, "device", None)),
                   backend, None if q.is_cuda else os.environ.get("TRITON_INTERPRET"))
            hit = _CHECKED.get(key)
            if hit is not None:
                return hit
        except TypeError:  # unhashable options (lists): just validate
            key = None
    result = check_arguments(q, k, v, ndim, kernel_size, dilation, stride, is_causal, rpb, scale, backend)
    if key is not None and len(_CHECKED) < 4096:
        _CHECKED[key] = result
    return result


def _na(q, k, v, ndim, kernel_size, dilation, stride, is_causal, rpb, scale, backend) -> Tensor:
    kernel_size, dilation, stride, is_causal, backend = _checked(
        q, k, v, ndim, kernel_size, dilation, stride, is_causal, rpb, scale, backend
    )
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if backend == "reference":
        return _reference(q, k, v, kernel_size, dilation, stride, is_causal, rpb=rpb, scale=scale)
    if backend == "chunked":
        return _chunked(q, k, v, list(kernel_size), list(dilation), list(stride), list(is_causal), rpb, scale)
    rpb = None if rpb is None else rpb.contiguous()
    if not tracing():
        return _ops.TritonNA.apply(q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale)
    out, _ = torch.ops.vizoo.na_fwd(q, k, v, rpb, list(kernel_size), list(dilation), list(stride),
                                    list(is_causal), scale)
    return out


def na1d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Optional[Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """1-D neighborhood attention on ``[B, L, heads, dim]`` tensors (NATTEN's ``na1d`` semantics).

    Args:
        q, k, v: query, key and value, same shape and dtype (float32, float16, bfloat16).
        kernel_size: keys per window (``kernel_size * dilation <= L``).
        dilation: DiNAT dilation.
        stride: GNA stride (``<= kernel_size``).
        is_causal: window of the ``kernel_size`` keys ending at the query.
        rpb: optional relative position bias ``[heads, 2*kernel_size-1]`` (stride 1 only).
        scale: softmax scale, default ``dim ** -0.5``.
        backend: ``None`` (Triton on CUDA, chunked elsewhere), ``"triton"``, ``"chunked"`` or ``"reference"``.

    Returns:
        The attention output, same shape and dtype as ``q``.
    """
    return _na(q, k, v, 1, kernel_size, dilation, stride, is_causal, rpb, scale, backend)


def na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Optional[Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """2-D neighborhood attention on ``[B, H, W, heads, dim]`` tensors (NATTEN's ``na2d`` semantics).

    Args:
        q, k, v: query, key and value, same shape and dtype (float32, float16, bfloat16).
        kernel_size: int or (kh, kw); ``kernel_size * dilation`` must fit each axis.
        dilation: int or (dh, dw), DiNAT dilation.
        stride: int or (sh, sw), GNA stride, each ``<= kernel_size``.
        is_causal: bool or (bool, bool), per-axis causal windows.
        rpb: optional NAT relative position bias ``[heads, 2kh-1, 2kw-1]`` (stride 1 only).
        scale: softmax scale, default ``dim ** -0.5``.
        backend: ``None`` (Triton on CUDA, chunked elsewhere), ``"triton"``, ``"chunked"`` or ``"reference"``.

    Returns:
        The attention output, same shape and dtype as ``q``.
    """
    return _na(q, k, v, 2, kernel_size, dilation, stride, is_causal, rpb, scale, backend)


__all__ = ["na1d", "na2d", "check_arguments", "BACKENDS"]

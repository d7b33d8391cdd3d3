"""``na2d_av``: per-pixel dynamic kernels applied over neighborhood windows (OverLoCK's ContMix aggregation).

``out[b, y, x, h] = sum_t attn[b, y, x, h, t] * v[b, key_t(y, x), h]``, with ``key_t`` the t-th pixel (row-major)
of the neighborhood-attention window of (y, x): NATTEN 0.17's ``natten.functional.na2d_av`` semantics, which
NATTEN >= 0.20 no longer provides, in NATTEN's heads-last layout (NATTEN 0.17 and the official OverLoCK code
use heads-first, ``[B, heads, H, W, ...]``; permute to switch). The public function validates its arguments,
then runs the plain PyTorch reference (``reference.py``) or the fused Triton kernels (``triton.py``, through
the ``vizoo::na2d_av_fwd`` / ``_bwd`` custom ops of ``ops.py`` while anything traces; otherwise an
``autograd.Function`` with the same kernels when a gradient is needed, the forward kernel alone when not, which
spares eager calls the custom ops' dispatch).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from vizoo.kernels._backend import check_backend
from vizoo.kernels.contmix import ops as _ops  # noqa: F401  (registers vizoo::na2d_av_fwd / _bwd)
from vizoo.kernels.contmix.reference import contmix_fused_reference, na2d_av_reference
from vizoo.kernels.neighborhood import _per_axis
from vizoo.utils import tracing

IntOrPair = Union[int, Sequence[int]]

BACKENDS = ("reference", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)
MAX_TRITON_DIM = 256


def check_arguments(attn: Tensor, v: Tensor, kernel_size, dilation, backend) -> tuple:
    """Validate every argument before launch; return ``(kernel_size, dilation, backend)`` normalised.

    Raises:
        ValueError: naming the violated constraint and what is accepted.
    """
    for name, t in (("attn", attn), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"na2d_av expects {name} in the heads-last layout [B, H, W, heads, "
                             f"{'kh*kw' if name == 'attn' else 'dim'}] (5 dims), got shape {tuple(t.shape)}")
    if min(v.shape) < 1 or attn.shape[-1] < 1:
        raise ValueError(f"attn and v must not have an empty dimension, got {tuple(attn.shape)}, {tuple(v.shape)}")
    if attn.shape[:4] != v.shape[:4]:
        raise ValueError(f"attn and v must agree on [B, H, W, heads] (heads-last layout), got {tuple(attn.shape)} "
                         f"and {tuple(v.shape)}")
    if attn.dtype != v.dtype or attn.device != v.device:
        raise ValueError(f"attn and v must share dtype and device, got {attn.dtype} on {attn.device} and "
                         f"{v.dtype} on {v.device}")
    if backend is None:
        backend = "triton" if v.is_cuda else "reference"
    check_backend(v, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)
    if backend == "triton" and v.shape[-1] > MAX_TRITON_DIM:
        raise ValueError(f"dim must be at most {MAX_TRITON_DIM} for the triton backend, got {v.shape[-1]}")
    kernel_size = _per_axis("kernel_size", kernel_size, 2, int)
    dilation = _per_axis("dilation", dilation, 2, int)
    if min(kernel_size) < 1 or min(dilation) < 1:
        raise ValueError(f"kernel_size and dilation must be >= 1, got kernel_size={kernel_size}, "
                         f"dilation={dilation}")
    for axis, (L, k, d) in enumerate(zip(v.shape[1:3], kernel_size, dilation)):
        if k * d > L:
            raise ValueError(f"kernel_size * dilation must not exceed the axis length: axis {axis} has length {L} "
                             f"but kernel_size {k} * dilation {d} = {k * d}")
    if attn.shape[-1] != kernel_size[0] * kernel_size[1]:
        raise ValueError(f"attn's last dim must be kh*kw = {kernel_size[0] * kernel_size[1]} for kernel_size "
                         f"{kernel_size}, got {attn.shape[-1]}")
    return kernel_size, dilation, backend


def na2d_av(
    attn: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1, backend: Optional[str] = None
) -> Tensor:
    """Apply per-pixel weights over 2-D neighborhood windows (NATTEN 0.17 ``na2d_av``, heads-last).

    Args:
        attn: ``[B, H, W, heads, kh*kw]`` weights (typically softmaxed), row-major over the window.
        v: ``[B, H, W, heads, dim]`` values, same dtype (float32, float16, bfloat16; float64 on the reference).
        kernel_size: int or (kh, kw); ``kernel_size * dilation`` must fit each axis.
        dilation: int or (dh, dw).
        backend: ``None`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        ``[B, H, W, heads, dim]``, v's dtype. Differentiable in attn and v on both backends.
    """
    kernel_size, dilation, backend = check_arguments(attn, v, kernel_size, dilation, backend)
    if backend == "reference":
        return na2d_av_reference(attn, v, kernel_size, dilation)
    if tracing():
        return torch.ops.vizoo.na2d_av_fwd(attn, v, list(kernel_size), list(dilation), True)
    if torch.is_grad_enabled() and (attn.requires_grad or v.requires_grad):
        return _ops.TritonAV.apply(attn, v, kernel_size, dilation)
    from vizoo.kernels.contmix import triton as _triton

    return _triton.forward(attn, v, kernel_size, dilation)


def check_fused_arguments(q: Tensor, kp: Tensor, bp: Tensor, rpb: Tensor, v: Tensor, kernel_size: int,
                          backend: Optional[str]) -> str:
    """Validate the arguments of ``contmix_fused_forward`` before launch; return the backend.

    Raises:
        ValueError: naming the violated constraint and what is accepted.
    """
    args = dict(q=q, kp=kp, bp=bp, rpb=rpb, v=v)
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != v.device:
            raise ValueError(f"all inputs must be on one device, got {name} on {t.device} and v on {v.device}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in args.values()):
        raise ValueError("contmix_fused_forward is inference-only (no backward): call it under torch.no_grad() or "
                         "torch.inference_mode(), or with inputs that do not require grad")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"kernel_size must be one int >= 1 (square windows), got {kernel_size!r}")
    k = kernel_size
    if q.dim() != 5 or v.dim() != 5:
        raise ValueError(f"q and v must be heads-last [B, H, W, heads, channels] (5 dims), got {tuple(q.shape)} and "
                         f"{tuple(v.shape)}")
    B, H, W, G, c = q.shape
    if min(q.shape) < 1 or min(v.shape) < 1:
        raise ValueError(f"q and v must not have an empty dimension, got {tuple(q.shape)} and {tuple(v.shape)}")
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(f"q and v must agree on [B, H, W, heads], got {tuple(q.shape)} and {tuple(v.shape)}")
    if k > min(H, W):
        raise ValueError(f"kernel_size must not exceed the map: {k} for a {H}x{W} map")
    expected = dict(kp=(B, G, c, k * k), bp=(k * k,), rpb=(G, 2 * k - 1, 2 * k - 1))
    for name, shape in expected.items():
        if tuple(args[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} for q {tuple(q.shape)} and kernel_size {k} "
                             f"(kp [B, heads, c, k*k], bp [k*k], rpb [heads, 2k-1, 2k-1]), got "
                             f"{tuple(args[name].shape)}")
    if kp.dtype != q.dtype:
        raise ValueError(f"kp must have q's dtype, got {kp.dtype} and {q.dtype}")
    if backend is None:
        backend = "triton" if v.is_cuda else "reference"
    check_backend(v, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)
    check_backend(q, backend, BACKENDS, TRITON_DTYPES, REFERENCE_DTYPES)
    if backend == "triton" and max(c, v.shape[-1]) > MAX_TRITON_DIM:
        raise ValueError(f"q's and v's channels must be at most {MAX_TRITON_DIM} for the triton backend, got {c} and "
                         f"{v.shape[-1]}")
    return backend


def contmix_fused_forward(q: Tensor, kp: Tensor, bp: Tensor, rpb: Tensor, v: Tensor, kernel_size: int,
                          backend: Optional[str] = None) -> Tensor:
    """ContMix's dynamic-kernel half in one pass, for inference: per pixel and head, logits over the ``k * k`` taps
    of its clamped window are ``q . kp + bp`` plus the relative position bias, softmaxed (float32) and applied to
    the window's values. The Triton path never writes the ``[B, H, W, heads, k*k]`` weights to memory.

    ContMix's logits are ``weight_proj(q . key)``; since the projection is linear they equal ``q . kp + bp`` with
    ``kp = key @ weight_proj.weight[taps].T`` (per image, small) and ``bp = weight_proj.bias[taps]``.

    Args:
        q: ``[B, H, W, heads, c]`` queries (scaled as the model scales them).
        kp: ``[B, heads, c, k*k]`` projected keys of each image, q's dtype.
        bp: ``[k*k]`` bias of the taps.
        rpb: ``[heads, 2k-1, 2k-1]`` relative position table, indexed by key minus query offset plus ``k - 1``
            (``vizoo.kernels.contmix.reference.window_rpb_index``).
        v: ``[B, H, W, heads, dim]`` values (float32, float16, bfloat16; float64 on the reference).
        kernel_size: k, square windows (dilation 1) that fit the map.
        backend: ``None`` (Triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        ``[B, H, W, heads, dim]`` in v's dtype. No autograd: inputs that require grad while grad mode is on are
        refused (``ContMix`` takes this path only when no gradient is needed).
    """
    backend = check_fused_arguments(q, kp, bp, rpb, v, kernel_size, backend)
    if backend == "reference":
        return contmix_fused_reference(q, kp, bp, rpb, v, kernel_size)
    from vizoo.kernels.contmix import triton as _triton

    return _triton.fused_forward(q, kp, bp, rpb, v, kernel_size)


__all__ = ["na2d_av", "contmix_fused_forward", "check_arguments", "check_fused_arguments", "BACKENDS"]

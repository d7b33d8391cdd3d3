"""``na2d_av`` in plain PyTorch: the specification that the Triton kernel must match.

``na2d_av`` is the "AV" half of 2-D neighborhood attention (Hassani et al., "Neighborhood Attention
Transformer", CVPR 2023, arXiv 2204.07143) on its own: every pixel carries its own softmaxed weights over its
``kh x kw`` neighborhood and the output is the weighted sum of the values in that window. OverLoCK's ContMix
(Lou & Yu, CVPR 2025, arXiv 2502.20087) produces those weights from context affinities instead of ``q . k``;
NATTEN <= 0.17 exposed the op as ``natten.functional.na2d_av`` and NATTEN >= 0.20 removed it.

Windows are NATTEN's (re-used here from ``vizoo.kernels.neighborhood``, not written a second time): each axis is
split into ``dilation`` interleaved groups; inside a group the window is centred on the pixel and shifted
inwards at the borders, so it always holds ``kh * kw`` in-image pixels (no zero padding). Tap ``t`` of the
weights is row-major over the window: ``t = ry * kw + rx`` is the key at window row ``ry``, column ``rx``.

Two forms: ``na2d_av_reference`` gathers each pixel's keys with integer index tables (any dilation; the ground
truth); ``na2d_av_unfold`` is the unfold formulation (stride-1 windows, dilation 1) that OverLoCK's own
pure-PyTorch fallback uses, kept for tests and as the benchmark's baseline. Both are differentiable and run on any
device; memory is O(H * W * kh * kw * heads * dim).
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vizoo.kernels.neighborhood.reference import axis_windows, neighborhood_indices


@functools.lru_cache(maxsize=128)
def _cached_keys(spatial: tuple, kernel_size: tuple, dilation: tuple, device) -> Tensor:
    with torch.inference_mode(False):  # a table cached under inference mode could not be saved for backward later
        key, _, _ = neighborhood_indices(spatial, kernel_size, dilation, (1, 1), (False, False), device)
    return key


def window_keys(spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int], device=None) -> Tensor:
    """Flat (row-major) index of every pixel's ``kh * kw`` keys, ``[H * W, kh * kw]`` (int64)."""
    args = (tuple(spatial), tuple(kernel_size), tuple(dilation))
    if torch.compiler.is_compiling():
        return neighborhood_indices(*args, (1, 1), (False, False), device)[0]
    return _cached_keys(*args, device)


def na2d_av_reference(attn: Tensor, v: Tensor, kernel_size: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Reference ``na2d_av`` on heads-last tensors (arguments assumed valid; ``vizoo.kernels.na2d_av`` checks).

    Args:
        attn: ``[B, H, W, heads, kh * kw]`` weights, row-major over the window.
        v: ``[B, H, W, heads, dim]`` values.
        kernel_size, dilation: ``(kh, kw)`` and ``(dh, dw)``.

    Returns:
        ``[B, H, W, heads, dim]`` in v's dtype; half precision is computed in float32.
    """
    B, H, W, heads, dim = v.shape
    compute = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
    key = window_keys((H, W), kernel_size, dilation, v.device)
    vg = v.reshape(B, H * W, heads, dim).to(compute)[:, key]  # [B, N, K, heads, dim]
    a = attn.reshape(B, H * W, heads, -1).to(compute)
    out = torch.einsum("bnhk,bnkhd->bnhd", a, vg)
    return out.to(v.dtype).reshape(v.shape)


def na2d_av_reference_backward(grad_out: Tensor, attn: Tensor, v: Tensor, kernel_size: Sequence[int],
                               dilation: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(d_attn, d_v)`` of ``na2d_av_reference`` written out, without autograd (a custom op's body runs below
    the autograd dispatch key, so it cannot differentiate the forward): ``d_attn[n, j] = <grad_out[n],
    v[key(n, j)]>`` and every ``attn[n, j] * grad_out[n]`` summed into ``d_v[key(n, j)]``."""
    B, H, W, heads, dim = v.shape
    compute = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
    key = window_keys((H, W), kernel_size, dilation, v.device)
    g = grad_out.reshape(B, H * W, heads, dim).to(compute)
    vg = v.reshape(B, H * W, heads, dim).to(compute)[:, key]  # [B, N, K, heads, dim]
    d_attn = torch.einsum("bnhd,bnkhd->bnhk", g, vg)
    spread = torch.einsum("bnhk,bnhd->bnkhd", attn.reshape(B, H * W, heads, -1).to(compute), g)
    d_v = g.new_zeros(B, H * W, heads, dim).index_add_(1, key.reshape(-1), spread.flatten(1, 2))
    return d_attn.to(attn.dtype).reshape(attn.shape), d_v.to(v.dtype).reshape(v.shape)


def na2d_av_unfold(attn: Tensor, v: Tensor, kernel_size: int) -> Tensor:
    """The unfold formulation (square odd kernel, dilation 1): ``F.unfold`` with zero padding gives windows
    centred on every pixel; a border pixel's clamped window is the centred window of the pixel moved inwards,
    so selecting rows/columns ``clamp(i, k//2, L-1-k//2)`` of the unfolded map yields NA's windows."""
    B, H, W, heads, dim = v.shape
    k = kernel_size
    x = v.permute(0, 3, 4, 1, 2).reshape(B, heads * dim, H, W)
    cols = F.unfold(x, k, padding=k // 2).reshape(B, heads, dim, k * k, H, W)
    rows = axis_windows(H, k, 1, 1, False, v.device)[0] + k // 2
    colx = axis_windows(W, k, 1, 1, False, v.device)[0] + k // 2
    cols = cols.index_select(4, rows).index_select(5, colx)  # [B, heads, dim, k*k, H, W]
    out = torch.einsum("bhdkyx,byxhk->byxhd", cols, attn.to(cols.dtype))
    return out


def window_rpb_index(height: int, width: int, kernel_size: int, device: torch.device) -> Tensor:
    """Index into a flattened ``[(2k-1)**2]`` relative-position table for every (pixel, tap), ``[H*W, k*k]``.

    For stride-1, dilation-1 windows of odd size k (what ContMix uses) the window of pixel i starts at
    ``clamp(i - k//2, 0, L - k)`` (the neighborhood rule of ``vizoo.kernels.neighborhood``; the tests check the
    two agree), and tap r's key-minus-query offset indexes the table at ``start + r - i + k - 1`` per axis.
    Written with plain tensor ops so that TorchScript compiles it.
    """
    span = 2 * kernel_size - 1
    taps = torch.arange(kernel_size, device=device)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    rel_y = (ys - kernel_size // 2).clamp(0, height - kernel_size)[:, None] + taps - ys[:, None] + kernel_size - 1
    rel_x = (xs - kernel_size // 2).clamp(0, width - kernel_size)[:, None] + taps - xs[:, None] + kernel_size - 1
    index = rel_y[:, None, :, None] * span + rel_x[None, :, None, :]  # [H, W, k, k]
    return index.reshape(height * width, kernel_size * kernel_size)


def window_rpb_bias(rpb: Tensor, height: int, width: int) -> Tensor:
    """``[H*W, heads, k*k]``: each pixel's relative position bias over its window's taps, from the per-head table
    ``rpb`` ``[heads, 2k-1, 2k-1]`` (through ``window_rpb_index``; TorchScript compiles it)."""
    kernel_size = (rpb.shape[-1] + 1) // 2
    return rpb.flatten(1)[:, window_rpb_index(height, width, kernel_size, rpb.device)].permute(1, 0, 2)


def contmix_fused_reference(q: Tensor, kp: Tensor, bp: Tensor, rpb: Tensor, v: Tensor, kernel_size: int) -> Tensor:
    """What ``contmix_fused_forward`` computes, composed from plain ops (arguments assumed valid): logits
    ``q . kp + bp``, plus the relative position bias looked up through ``window_rpb_index``, softmaxed over the
    ``k * k`` taps in float32 (float64 stays float64), then ``na2d_av_reference`` over v. Shapes as there;
    returns v's dtype."""
    B, H, W, G, _ = q.shape
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = torch.einsum("byxgc,bgct->byxgt", q.to(compute), kp.to(compute)) + bp.to(compute)
    bias = window_rpb_bias(rpb.to(compute), H, W).reshape(H, W, G, -1)  # [H, W, G, k*k]
    attn = (logits + bias).softmax(-1)
    return na2d_av_reference(attn, v, (kernel_size, kernel_size), (1, 1))

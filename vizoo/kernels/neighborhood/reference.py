"""Neighborhood attention in plain PyTorch: the specification that the Triton kernel must match.

Neighborhood attention (NA) is from Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023,
arXiv 2204.07143); dilation from "Dilated Neighborhood Attention Transformer" (arXiv 2209.15001);
stride (GNA) from "Generalized Neighborhood Attention" (arXiv 2504.16922). The window rules below follow
NATTEN's definitions (its FlexAttention mask is the most explicit statement of them), re-derived here:

* Each axis is split into ``dilation`` interleaved groups (position mod dilation); NA runs inside each
  group on "group coordinates" (position // dilation), with the group's own length
  ``ceil((L - g) / dilation)`` when L is not a multiple of the dilation.
* Non-causal: queries are grouped into blocks of ``stride``; the block's leader is its centre query
  (right of centre for even stride, clipped to the group length). The window is centred on the leader,
  shifted inwards at the borders so it always holds exactly ``kernel_size`` keys: odd k has k//2 keys on
  each side, even k has k/2 on the left and k/2-1 on the right.
* Causal (per axis): the leader is the last query of its stride block; a query sees the keys from
  ``leader - kernel_size + 1`` (clipped at 0) up to itself.
* Relative position bias (NAT/DiNAT, not in NATTEN >= 0.20): ``rpb[head, dy + ky - 1, dx + kx - 1]`` with
  (dy, dx) the key-minus-query offset in group coordinates. With stride 1 every offset lies in
  ``[-(k-1), k-1]``, for odd and even k, causal or not, so vizoo accepts RPB in all those cases; RPB with
  stride > 1 is rejected (offsets would leave the table, and no published model defines it).

This file gathers each query's ``prod(kernel_size)`` candidate keys with integer index arithmetic and runs a
masked softmax over them; it works for any number of spatial axes, any device and any dtype, and is
differentiable. Memory is O(N * prod(kernel_size) * heads * dim) (autograd keeps both gathers), so it is the
specification for tests; ``chunked.py`` computes the same thing in bounded memory for the models on CPU.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def axis_windows(
    length: int, kernel_size: int, dilation: int, stride: int, causal: bool, device: Optional[torch.device] = None
) -> Tuple[Tensor, Tensor]:
    """First and last key (inclusive, in group coordinates) that each position of one axis attends.

    Args:
        length: axis length L.
        kernel_size: keys per window along this axis.
        dilation: number of interleaved groups.
        stride: GNA stride (queries per stride block).
        causal: whether the axis is causal.
        device: torch device of the returned tensors.

    Returns:
        ``(lo, hi)``, two int64 tensors of shape ``[L]``. Position ``p`` attends the keys at actual positions
        ``j * dilation + p % dilation`` for ``lo[p] <= j <= hi[p]``.
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    qg = pos // dilation
    group_len = (length - group + dilation - 1) // dilation
    if causal:
        leader = torch.minimum((qg // stride) * stride + stride - 1, group_len - 1)
        return (leader - kernel_size + 1).clamp_min(0), qg
    left = kernel_size // 2
    right = kernel_size - 1 - left
    leader = torch.minimum((qg // stride) * stride + stride // 2, group_len - 1)
    centre = torch.maximum(torch.minimum(leader, group_len - 1 - right), torch.full_like(leader, left))
    return centre - left, centre + right


def _axis_view(t: Tensor, axis: int, ndim: int) -> Tensor:
    """View an ``[L, k]`` tensor as ``[1.., L, 1.., 1.., k, 1..]`` (L at ``axis``, k at ``ndim + axis``)."""
    shape: List[int] = [1] * (2 * ndim)
    shape[axis] = t.shape[0]
    shape[ndim + axis] = t.shape[1]
    return t.reshape(shape)


@functools.lru_cache(maxsize=128)
def _cached_indices(spatial, kernel_size, dilation, stride, is_causal, device):
    return neighborhood_indices(spatial, kernel_size, dilation, stride, is_causal, device)


def neighborhood_indices(
    spatial: List[int],
    kernel_size: List[int],
    dilation: List[int],
    stride: List[int],
    is_causal: List[bool],
    device: Optional[torch.device] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidate keys of every query as flat indices (TorchScript-compatible; any sequences work in Python).

    Returns:
        ``(key, valid, rel)``, each ``[N, K]`` with ``N = prod(spatial)`` and ``K = prod(kernel_size)``:
        the flat (row-major) key index, whether that candidate is really attended (only causal windows
        hold fewer than K keys), and the flat index into a ``[prod(2k-1)]`` relative-position table.
    """
    ndim = len(spatial)
    key = torch.zeros((), dtype=torch.long, device=device)
    rel = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    for axis in range(ndim):
        L, k, d = spatial[axis], kernel_size[axis], dilation[axis]
        lo, hi = axis_windows(L, k, d, stride[axis], is_causal[axis], device)
        cand = lo[:, None] + torch.arange(k, device=device)  # [L, k] group coordinates
        ok = cand <= hi[:, None]
        cand = torch.minimum(cand, hi[:, None])
        pos = torch.arange(L, device=device)[:, None]
        key = key * L + _axis_view(cand * d + pos % d, axis, ndim)
        rel = rel * (2 * k - 1) + _axis_view(cand - pos // d + k - 1, axis, ndim)
        valid = valid & _axis_view(ok, axis, ndim)
    full = [int(x) for x in spatial] + [int(x) for x in kernel_size]
    kk = 1
    for x in kernel_size:
        kk *= x
    return (key.expand(full).reshape(-1, kk), valid.expand(full).reshape(-1, kk),
            rel.expand(full).reshape(-1, kk))


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    is_causal: Sequence[bool],
    rpb: Optional[Tensor] = None,
    scale: Optional[float] = None,
    return_lse: bool = False,
):
    """Reference N-D neighborhood attention on heads-last tensors ``[B, *spatial, heads, dim]``.

    Arguments are assumed valid (the public ``na1d``/``na2d`` check them); per-axis options are sequences
    with one entry per spatial axis. Half-precision inputs are computed in float32 and cast back.

    Args:
        q, k, v: query, key, value tensors of the same shape.
        kernel_size, dilation, stride, is_causal: per-axis options (see module docstring).
        rpb: optional relative position bias ``[heads, *(2k-1 per axis)]``.
        scale: softmax scale, default ``dim ** -0.5``.
        return_lse: also return the log-sum-exp of the scaled scores, ``[B, *spatial, heads]`` (float32).

    Returns:
        The output, same shape and dtype as ``q`` (and the log-sum-exp when asked).
    """
    B, *spatial, heads, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    compute = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    options = tuple(map(tuple, (spatial, kernel_size, dilation, stride, is_causal)))
    if torch.compiler.is_compiling():
        key, valid, rel = neighborhood_indices(*options, q.device)
    else:
        key, valid, rel = _cached_indices(*options, q.device)
    n = key.shape[0]
    qf = q.reshape(B, n, heads, dim).to(compute)
    kg = k.reshape(B, n, heads, dim).to(compute)[:, key]  # [B, N, K, heads, dim]
    vg = v.reshape(B, n, heads, dim).to(compute)[:, key]
    scores = torch.einsum("bnhd,bnkhd->bnhk", qf * scale, kg)
    if rpb is not None:
        scores = scores + rpb.reshape(heads, -1).to(compute)[:, rel].permute(1, 0, 2)  # [N, heads, K]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    attn = scores.softmax(dim=-1)
    out = torch.einsum("bnhk,bnkhd->bnhd", attn, vg).to(q.dtype).reshape(q.shape)
    if return_lse:
        return out, scores.logsumexp(dim=-1).float().reshape(B, *spatial, heads)
    return out

"""Fused neighborhood attention in Triton: forward with online softmax, backward with recomputation.

Same operator as ``reference.py`` (NATTEN semantics plus NAT's relative position bias); see that file for
the definitions. The design is ours, in the spirit of FlashAttention-2 (Dao, arXiv 2307.08691) and of
NATTEN's fused NA (Hassani et al., arXiv 2403.04690), not a port of either:

* 1-D inputs run as 2-D inputs of height 1, so one set of kernels serves both.
* Each program owns one (batch, head), one dilation group and a 2-D tile of queries in group coordinates.
  Per axis, the first and last key of every query's window (``lo``/``hi``, tiny host-built tables) are
  non-decreasing in the query position, so the union of the tile's windows is the box
  ``[lo(first), hi(last)]`` per axis. The kernel walks that box in chunks of ``KR x KC`` keys, scores the
  chunk with ``tl.dot`` and masks each (query, key) pair with the exact window bounds. No attention matrix
  is stored; the forward writes the output and the log-sum-exp.
* RPB: the bias of a (query, key) pair depends only on their offset, but a kernel-side lookup costs one
  scalar gather per pair, several times the loads of the keys themselves, and writing the per-pair score
  gradients for the host to reduce is a scattered store. While it stays small (``RPB_CHUNK_BYTES``), the
  host gathers the bias once per call into exactly the blocks the kernels walk (``[heads, tile pattern,
  chunk, own, other]``; interior tiles share one pattern) and the kernels read each chunk's block with
  contiguous vector loads; with ``"dsum"`` in ``RPB_CHUNK_PASSES`` the dQ kernel also adds its score
  gradients, summed over the batch by atomics, into the same layout per tile, which the host folds into the
  table. By
  default the three launches read the layout and dQ writes per-pair score gradients (the fastest mix on an
  H200).
* Backward: one kernel computes ``delta = rowsum(dO * O)`` and recomputes each query tile's probabilities to
  get dQ (and, for RPB, writes dS per (query, neighbour), which PyTorch sums into the table); a second
  kernel owns a tile of keys, walks the box of queries that attend them (the inverse windows, also
  monotone, from ``searchsorted`` on the tables) and accumulates dK and dV. No atomics, except in the
  chunk-layout RPB gradient above.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from vizoo.kernels._backend import dot_precision, launch, pow2
from vizoo.kernels.neighborhood.reference import _cached_indices, axis_windows

LOG2E = 1.4426950408889634


@functools.lru_cache(maxsize=256)
def _tables(length: int, kernel: int, dilation: int, stride: int, causal: bool, device: str):
    """Per-group int32 tables ``[d, ceil(L/d)]``: ``lo, hi`` of each query, ``qmin, qmax`` of each key."""
    lo, hi = axis_windows(length, kernel, dilation, stride, causal)
    gmax = -(-length // dilation)
    pos = torch.arange(length)
    big = 1 << 30  # padding past a group's end keeps the rows sorted
    lo_t = torch.full((dilation, gmax), big, dtype=torch.long)
    hi_t = torch.full((dilation, gmax), big, dtype=torch.long)
    lo_t[pos % dilation, pos // dilation] = lo
    hi_t[pos % dilation, pos // dilation] = hi
    keys = torch.arange(gmax).expand(dilation, gmax).contiguous()
    qmin = torch.searchsorted(hi_t, keys, side="left")
    qmax = torch.searchsorted(lo_t, keys, side="right") - 1
    return tuple(t.to(torch.int32).to(device) for t in (lo_t, hi_t, qmin, qmax))


# The RPB of each (program tile, chunk) is gathered on the host into the layout the kernel walks (one contiguous
# [TH*TW, KR*KC] block per chunk) while that table stays this small, so the kernels read it with plain vector
# loads instead of one gather per (query, key) pair; larger problems gather in the kernel, and 0 always does.
# RPB_CHUNK_PASSES names the launches that read it ("fwd", "bwd" = dQ, "dkdv"), and "dsum" has the dQ launch also
# sum the score gradients over the batch in that layout by atomics (with "bwd"; else it writes them per pair for
# the host to sum). On an H200 (NAT-T's stages, bf16, batch 64) the chunk-layout forward took 0.62-0.73x the
# gathering forward's GPU time at stages 1-3, while the backward with all three and the atomics took 1.5-1.8x
# the gathering backward's; reading the layout in all three launches without the atomics took forward+backward
# 826 / 493 us at stages 1 / 2 against 951 / 564 with the layout in the forward only.
RPB_CHUNK_BYTES = 8 << 20
RPB_CHUNK_PASSES = ("fwd", "bwd", "dkdv")


@functools.lru_cache(maxsize=256)
def _axis_rel(length: int, kernel: int, dilation: int, stride: int, causal: bool, tile: int, chunk: int,
              keys_own: bool):
    """One axis of the chunk-layout RPB index: ``(pattern, rel)`` where ``rel[p, c, u, o]`` is the relative
    offset ``key - query + kernel - 1`` (-1 outside the window) between the tile's ``u``-th own position and the
    ``o``-th position of its ``c``-th chunk (own = queries, chunk = keys; ``keys_own``: the other way round, as in
    the dk/dv kernel), for each distinct tile pattern ``p``; ``pattern[g * NT + t]`` is tile t of group g's."""
    lo_t, hi_t, qmin_t, qmax_t = _tables(length, kernel, dilation, stride, causal, "cpu")
    groups, gmax = lo_t.shape
    nt = -(-gmax // tile)
    first_t, last_t = (qmin_t, qmax_t) if keys_own else (lo_t, hi_t)
    boxes = []
    for g in range(groups):
        n = -(-(length - g) // dilation)
        for t in range(nt):
            if t * tile >= n:
                boxes.append(None)
                continue
            boxes.append((n, t, int(first_t[g, t * tile]), int(last_t[g, min(t * tile + tile, n) - 1])))
    n_chunks = max([1] + [-(-(b[3] - b[2] + 1) // chunk) for b in boxes if b is not None])
    blocks = []
    for g, box in zip((g for g in range(groups) for _ in range(nt)), boxes):
        if box is None:
            blocks.append(torch.full((n_chunks, tile, chunk), -1, dtype=torch.long))
            continue
        n, t, first, last = box
        own = torch.arange(t * tile, t * tile + tile)[:, None]
        other = (first + torch.arange(n_chunks * chunk))[None, :]
        q, k = (other, own) if keys_own else (own, other)
        qc = q.clamp(max=n - 1)
        ok = (other <= last) & (q < n) & (k < n) & (lo_t[g][qc].long() <= k) & (k <= hi_t[g][qc].long())
        rel = torch.where(ok, k - q + kernel - 1, -1)  # [tile, n_chunks * chunk]
        blocks.append(rel.view(tile, n_chunks, chunk).transpose(0, 1))
    patterns, inverse = torch.unique(torch.stack(blocks), dim=0, return_inverse=True)
    return inverse.to(torch.int32), patterns


class _Layout(NamedTuple):
    """The chunk layout of one launch's RPB: the tile-pattern tables per axis (``pat_y``, ``pat_x``), the flat
    RPB-table index of every ``[pattern_y * NPX + pattern_x, chunk_y * NCX + chunk_x, own, other]`` entry
    (``gather``; outside the windows it holds the table's last slot, whose value the kernels mask), ``counts =
    (NPX, NPAT, NCH, NCX)`` and the pattern of each program tile (grid axis 0)."""
    pat_y: torch.Tensor
    pat_x: torch.Tensor
    gather: torch.Tensor
    counts: tuple
    tile_pattern: torch.Tensor


def _rpb_chunk_index(shape, kernel, dilation, stride, causal, cfg, keys_own: bool, device) -> _Layout:
    return _rpb_chunk_index_cached(tuple(shape), tuple(kernel), tuple(dilation), tuple(stride), tuple(causal),
                                   cfg["TH"], cfg["TW"], cfg["KR"], cfg["KC"], keys_own, str(device))


@functools.lru_cache(maxsize=64)
def _rpb_chunk_index_cached(shape, kernel, dilation, stride, causal, TH, TW, KR, KC, keys_own, device):
    pat_y, ry = _axis_rel(shape[0], kernel[0], dilation[0], stride[0], causal[0], TH, KR, keys_own)
    pat_x, rx = _axis_rel(shape[1], kernel[1], dilation[1], stride[1], causal[1], TW, KC, keys_own)
    npy, ncy = ry.shape[:2]
    npx, ncx = rx.shape[:2]
    ey = ry.view(npy, 1, ncy, 1, TH, 1, KR, 1)
    ex = rx.view(1, npx, 1, ncx, 1, TW, 1, KC)
    last = (2 * kernel[0] - 1) * (2 * kernel[1] - 1) - 1
    index = torch.where((ey >= 0) & (ex >= 0), ey * (2 * kernel[1] - 1) + ex, last)
    # grid axis 0 runs over (group y, group x, tile y, tile x); pat_y / pat_x are indexed group * NT + tile
    tiles_y, tiles_x = pat_y.view(dilation[0], 1, -1, 1).long(), pat_x.view(1, dilation[1], 1, -1).long()
    tile_pattern = (tiles_y * npx + tiles_x).reshape(-1)
    return _Layout(pat_y.to(device), pat_x.to(device), index.reshape(-1).to(device),
                   (npx, npy * npx, ncy * ncx, ncx), tile_pattern.to(device))


def _rpb_chunks_fit(heads: int, layout: _Layout) -> bool:
    """Whether the chunk-layout bias stays within ``RPB_CHUNK_BYTES`` (float32)."""
    return heads * layout.gather.numel() * 4 <= RPB_CHUNK_BYTES


def _rpb_args(rpb_f, dummy, layout: Optional[_Layout]):
    """The RPB arguments of one launch: ``(RPB, PAT_Y, PAT_X, (NPX, NPAT, NCH, NCX))``. With a ``layout``
    (``_launch_geometry``'s choice) the bias gathered into the kernels' chunk layout ``[heads, patterns, chunks,
    own, other]`` (float32, one ``index_select``), else the table as it is (``dummy`` without RPB). Entries outside
    the windows hold any table value: the kernels mask them."""
    if layout is None:
        return (dummy if rpb_f is None else rpb_f), dummy, dummy, (0, 0, 0, 0)
    return rpb_f.view(rpb_f.shape[0], -1).index_select(1, layout.gather), layout.pat_y, layout.pat_x, layout.counts


def _config(kernel: tuple, shape: tuple, dim: int, which: str = "fwd", rpb: bool = False) -> dict:
    """Tile sizes: query tile TH x TW, key chunk KR x KC (powers of two); picked by sweeps on an H200
    (``vizoo bench --tune``, NAT-Tiny's stage shapes with and without RPB; docs/benchmarks.md). The RPB
    gather needs smaller chunks per warp than plain NA (fewer live registers)."""
    H, W = shape
    if H == 1:  # 1-D
        return dict(TH=1, TW=64, KR=1, KC=64 if kernel[1] > 16 else 32, num_warps=4)
    if kernel[1] <= 9:
        if which == "dkdv" and rpb:  # its own sweep (docs/benchmarks.md): RPB fwd+bwd 21-30% faster
            return dict(TH=8, TW=8, KR=2, KC=16, num_warps=4, num_stages=1)
        if which in ("bwd", "dkdv"):
            return dict(TH=4, TW=8, KR=2, KC=16, num_warps=2 if rpb else 1)
        if rpb:
            return dict(TH=8, TW=8, KR=2, KC=16, num_warps=2, num_stages=1)
        return dict(TH=8, TW=8, KR=2, KC=16, num_warps=4)
    KC = min(pow2(16 + kernel[1] - 1), 32)
    return dict(TH=4, TW=16, KR=max(1, min(64 // KC, 4)), KC=KC, num_warps=4)


# tile overrides used by the benchmark's sweeps: "fwd", "bwd" (both backward kernels) and "dkdv" (that one only)
CONFIG_OVERRIDE: dict = {"fwd": {}, "bwd": {}, "dkdv": {}}
_OVERRIDES = {"fwd": ("fwd",), "bwd": ("bwd",), "dkdv": ("bwd", "dkdv")}  # applied in this order per launch


@triton.jit
def _program_tile(H, W, HEADS, D, NT_Y, NT_X, SB, SY, SX, SH, DIL_Y: tl.constexpr, DIL_X: tl.constexpr):
    """Decode this program's ids, shared by all three kernels.

    Returns the flat (batch, head) index and the head, the tile (ty, tx) in group coordinates, the dilation
    group (gy, gx) and its lengths, then for the inputs q/k/v (strides ``SB, SY, SX, SH``, e.g. views into
    one packed qkv tensor) the y / x steps and this (batch, head)'s offset, and the same for the dense
    heads-last tensors (out, lse-shaped rows aside, grad_out and the gradients).
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    tx = pid % NT_X
    t = pid // NT_X
    ty = t % NT_Y
    t = t // NT_Y
    gx = t % DIL_X
    gy = t // DIL_X
    len_y = (H - gy + DIL_Y - 1) // DIL_Y
    len_x = (W - gx + DIL_X - 1) // DIL_X
    base_in = b.to(tl.int64) * SB + h * SH
    sx = HEADS * D
    sy = W * sx
    base = b.to(tl.int64) * H * sy + h * D
    return bh, h, ty, tx, gy, gx, len_y, len_x, SX, SY, base_in, sx, sy, base


@triton.jit
def _query_windows(LO_Y, HI_Y, LO_X, HI_X, qy, qx, qvalid, gy, gx, GMAX_Y, GMAX_X, h, KH: tl.constexpr,
                   KW: tl.constexpr):
    """Each query's window: first key per axis, window widths (0 for padding queries; key (ky, kx) is attended
    iff ``0 <= ky - lo_y < wy`` and the same for x) and the RPB table offset of its window's first key."""
    lo_y = tl.load(LO_Y + gy * GMAX_Y + qy, mask=qvalid, other=0)
    lo_x = tl.load(LO_X + gx * GMAX_X + qx, mask=qvalid, other=0)
    wy = (tl.load(HI_Y + gy * GMAX_Y + qy, mask=qvalid, other=-1) - lo_y + 1).to(tl.uint32)
    wx = (tl.load(HI_X + gx * GMAX_X + qx, mask=qvalid, other=-1) - lo_x + 1).to(tl.uint32)
    r_base = ((h * (2 * KH - 1) + lo_y - qy + KH - 1) * (2 * KW - 1) + lo_x - qx + KW - 1)
    return lo_y, lo_x, wy, wx, r_base


@triton.jit
def _tile_box(FIRST_Y, LAST_Y, FIRST_X, LAST_X, ty, tx, gy, gx, len_y, len_x, GMAX_Y, GMAX_X, TH: tl.constexpr,
              TW: tl.constexpr):
    """The box of partners (keys of a query tile, or queries of a key tile) from monotone first/last tables."""
    row_lo = tl.load(FIRST_Y + gy * GMAX_Y + ty * TH)
    row_hi = tl.load(LAST_Y + gy * GMAX_Y + tl.minimum(ty * TH + TH, len_y) - 1)
    col_lo = tl.load(FIRST_X + gx * GMAX_X + tx * TW)
    col_hi = tl.load(LAST_X + gx * GMAX_X + tl.minimum(tx * TW + TW, len_x) - 1)
    return row_lo, row_hi, col_lo, col_hi


@triton.jit
def _chunk_scores(q, K, RPB, ibase, isy, isx, ky0, kx0, row_hi, col_hi, gy, gx, offs_d, dmask, lo_y, lo_x, wy, wx,
                  r_base, rpb_block, scale_log2, DIL_Y: tl.constexpr, DIL_X: tl.constexpr, KW: tl.constexpr,
                  KR: tl.constexpr, KC: tl.constexpr, HAS_RPB: tl.constexpr, RPB_CHUNKS: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Load the ``KR x KC`` key chunk at (ky0, kx0) and score it against the query tile (log2 units, RPB added:
    with ``RPB_CHUNKS`` the chunk's block of the host-gathered bias at ``rpb_block``, else gathered per pair);
    also returns the chunk's offsets and masks and each pair's window offsets (dy, dx) and attended mask."""
    j = tl.arange(0, KR * KC)
    ky = ky0 + j // KC
    kx = kx0 + j % KC
    kvalid = (ky <= row_hi) & (kx <= col_hi)
    k_off = (ky * DIL_Y + gy) * isy + (kx * DIL_X + gx) * isx
    kv_mask = kvalid[:, None] & dmask[None, :]
    k = tl.load(K + ibase + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    dy = ky[None, :] - lo_y[:, None]
    dx = kx[None, :] - lo_x[:, None]
    mask = (dy.to(tl.uint32, bitcast=True) < wy[:, None]) & (dx.to(tl.uint32, bitcast=True) < wx[:, None])
    if RPB_CHUNKS:
        s += tl.load(rpb_block) * 1.4426950408889634
    elif HAS_RPB:
        s += tl.load(RPB + r_base[:, None] + dy * (2 * KW - 1) + dx, mask=mask, other=0.0) * 1.4426950408889634
    return k, k_off, kv_mask, s, dy, dx, mask


@triton.jit
def _chunk_blocks(BASE, slot, NCH, TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """Pointers to chunk 0 of ``slot``'s blocks in a chunk-layout tensor ``[slots, NCH, TH*TW, KR*KC]``."""
    own = tl.arange(0, TH * TW)
    other = tl.arange(0, KR * KC)
    return BASE + slot.to(tl.int64) * NCH * (TH * TW * KR * KC) + own[:, None] * (KR * KC) + other[None, :]


@triton.jit
def _rpb_tile(RPB, PAT_Y, PAT_X, NPX, NPAT, NCH, gy, gx, ty, tx, h, NT_Y, NT_X, TH: tl.constexpr, TW: tl.constexpr,
              KR: tl.constexpr, KC: tl.constexpr):
    """Pointers to chunk 0 of this program's block of the chunk-layout RPB ``[heads, NPAT, NCH, TH*TW, KR*KC]``
    (its tile pattern is the pair of per-axis patterns)."""
    pat = tl.load(PAT_Y + gy * NT_Y + ty) * NPX + tl.load(PAT_X + gx * NT_X + tx)
    return _chunk_blocks(RPB, h * NPAT + pat, NCH, TH, TW, KR, KC)


@triton.jit
def _fwd_kernel(
    Q, K, V, OUT, LSE, RPB, PAT_Y, PAT_X,
    LO_Y, HI_Y, LO_X, HI_X,
    H, W, HEADS, D, GMAX_Y, GMAX_X, NT_Y, NT_X, SB, SY, SX, SH, NPX, NPAT, NCH, NCX,
    scale_log2,
    DIL_Y: tl.constexpr, DIL_X: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_RPB: tl.constexpr, RPB_CHUNKS: tl.constexpr, PRECISION: tl.constexpr,
):
    bh, h, ty, tx, gy, gx, len_y, len_x, isx, isy, ibase, sx, sy, base = _program_tile(
        H, W, HEADS, D, NT_Y, NT_X, SB, SY, SX, SH, DIL_Y, DIL_X)
    if ty * TH >= len_y or tx * TW >= len_x:
        return

    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D

    i = tl.arange(0, TH * TW)
    qy = ty * TH + i // TW
    qx = tx * TW + i % TW
    qvalid = (qy < len_y) & (qx < len_x)
    q_off = (qy * DIL_Y + gy) * sy + (qx * DIL_X + gx) * sx
    qi_off = (qy * DIL_Y + gy) * isy + (qx * DIL_X + gx) * isx
    q = tl.load(Q + ibase + qi_off[:, None] + offs_d[None, :], mask=qvalid[:, None] & dmask[None, :], other=0.0)
    lo_y, lo_x, wy, wx, r_base = _query_windows(LO_Y, HI_Y, LO_X, HI_X, qy, qx, qvalid, gy, gx, GMAX_Y, GMAX_X,
                                                h, KH, KW)
    row_lo, row_hi, col_lo, col_hi = _tile_box(LO_Y, HI_Y, LO_X, HI_X, ty, tx, gy, gx, len_y, len_x, GMAX_Y,
                                               GMAX_X, TH, TW)

    rpb_tile = RPB
    if RPB_CHUNKS:
        rpb_tile = _rpb_tile(RPB, PAT_Y, PAT_X, NPX, NPAT, NCH, gy, gx, ty, tx, h, NT_Y, NT_X, TH, TW, KR, KC)

    m_i = tl.full([TH * TW], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([TH * TW], dtype=tl.float32)
    acc = tl.zeros([TH * TW, BLOCK_D], dtype=tl.float32)
    for ky0 in range(row_lo, row_hi + 1, KR):
        for kx0 in range(col_lo, col_hi + 1, KC):
            rpb_block = rpb_tile + ((ky0 - row_lo) // KR * NCX + (kx0 - col_lo) // KC) * (TH * TW * KR * KC)
            k, k_off, kv_mask, s, dy, dx, mask = _chunk_scores(
                q, K, RPB, ibase, isy, isx, ky0, kx0, row_hi, col_hi, gy, gx, offs_d, dmask, lo_y, lo_x, wy, wx,
                r_base, rpb_block, scale_log2, DIL_Y, DIL_X, KW, KR, KC, HAS_RPB, RPB_CHUNKS, PRECISION)
            s = tl.where(mask, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + ibase + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + base + q_off[:, None] + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=qvalid[:, None] & dmask[None, :])
    lse = (m_i + tl.log2(l_safe)) / 1.4426950408889634
    lse_off = bh.to(tl.int64) * H * W + (qy * DIL_Y + gy) * W + qx * DIL_X + gx
    tl.store(LSE + lse_off, lse, mask=qvalid)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, OUT, DO, LSE, DELTA, RPB, PAT_Y, PAT_X, DQ, DS,
    LO_Y, HI_Y, LO_X, HI_X,
    H, W, HEADS, D, GMAX_Y, GMAX_X, NT_Y, NT_X, SB, SY, SX, SH, NPX, NPAT, NCH, NCX,
    scale, scale_log2,
    DIL_Y: tl.constexpr, DIL_X: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_RPB: tl.constexpr, RPB_CHUNKS: tl.constexpr, RPB_GRAD: tl.constexpr,
    DS_CHUNKS: tl.constexpr, PRECISION: tl.constexpr,
):
    bh, h, ty, tx, gy, gx, len_y, len_x, isx, isy, ibase, sx, sy, base = _program_tile(
        H, W, HEADS, D, NT_Y, NT_X, SB, SY, SX, SH, DIL_Y, DIL_X)
    if ty * TH >= len_y or tx * TW >= len_x:
        return

    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D

    i = tl.arange(0, TH * TW)
    qy = ty * TH + i // TW
    qx = tx * TW + i % TW
    qvalid = (qy < len_y) & (qx < len_x)
    q_off = (qy * DIL_Y + gy) * sy + (qx * DIL_X + gx) * sx
    qd_mask = qvalid[:, None] & dmask[None, :]
    qi_off = (qy * DIL_Y + gy) * isy + (qx * DIL_X + gx) * isx
    q = tl.load(Q + ibase + qi_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + base + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
    row_off = bh.to(tl.int64) * H * W + (qy * DIL_Y + gy) * W + qx * DIL_X + gx
    lse2 = tl.load(LSE + row_off, mask=qvalid, other=0.0) * 1.4426950408889634
    o = tl.load(OUT + base + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row_off, delta, mask=qvalid)  # read by the dk/dv kernel that runs next
    lo_y, lo_x, wy, wx, r_base = _query_windows(LO_Y, HI_Y, LO_X, HI_X, qy, qx, qvalid, gy, gx, GMAX_Y, GMAX_X,
                                                h, KH, KW)
    row_lo, row_hi, col_lo, col_hi = _tile_box(LO_Y, HI_Y, LO_X, HI_X, ty, tx, gy, gx, len_y, len_x, GMAX_Y,
                                               GMAX_X, TH, TW)

    rpb_tile = RPB
    ds_tile = DS
    if RPB_CHUNKS:
        rpb_tile = _rpb_tile(RPB, PAT_Y, PAT_X, NPX, NPAT, NCH, gy, gx, ty, tx, h, NT_Y, NT_X, TH, TW, KR, KC)
    if DS_CHUNKS:
        ds_tile = _chunk_blocks(DS, h * tl.num_programs(0) + tl.program_id(0), NCH, TH, TW, KR, KC)

    dq = tl.zeros([TH * TW, BLOCK_D], dtype=tl.float32)
    for ky0 in range(row_lo, row_hi + 1, KR):
        for kx0 in range(col_lo, col_hi + 1, KC):
            rpb_block = rpb_tile + ((ky0 - row_lo) // KR * NCX + (kx0 - col_lo) // KC) * (TH * TW * KR * KC)
            k, k_off, kv_mask, s, dy, dx, mask = _chunk_scores(
                q, K, RPB, ibase, isy, isx, ky0, kx0, row_hi, col_hi, gy, gx, offs_d, dmask, lo_y, lo_x, wy, wx,
                r_base, rpb_block, scale_log2, DIL_Y, DIL_X, KW, KR, KC, HAS_RPB, RPB_CHUNKS, PRECISION)
            v = tl.load(V + ibase + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if RPB_GRAD and DS_CHUNKS:  # dS summed over the batch per (tile, chunk, query, key): contiguous adds
                chunk = (ky0 - row_lo) // KR * NCX + (kx0 - col_lo) // KC
                tl.atomic_add(ds_tile + chunk * (TH * TW * KR * KC), ds, mask=mask)
            elif RPB_GRAD:  # dS of each (query, neighbour j = dy * KW + dx); reduced into d_rpb on the host
                tl.store(DS + row_off[:, None] * (KH * KW) + dy * KW + dx, ds, mask=mask)
    tl.store(DQ + base + q_off[:, None] + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, PAT_Y, PAT_X, DK, DV,
    LO_Y, HI_Y, LO_X, HI_X, QMIN_Y, QMAX_Y, QMIN_X, QMAX_X,
    H, W, HEADS, D, GMAX_Y, GMAX_X, NT_Y, NT_X, SB, SY, SX, SH, NPX, NPAT, NCH, NCX,
    scale, scale_log2,
    DIL_Y: tl.constexpr, DIL_X: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_RPB: tl.constexpr, RPB_CHUNKS: tl.constexpr, PRECISION: tl.constexpr,
):
    bh, h, ty, tx, gy, gx, len_y, len_x, isx, isy, ibase, sx, sy, base = _program_tile(
        H, W, HEADS, D, NT_Y, NT_X, SB, SY, SX, SH, DIL_Y, DIL_X)
    if ty * TH >= len_y or tx * TW >= len_x:
        return

    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D

    # this program's keys (group coordinates)
    i = tl.arange(0, TH * TW)
    ky = ty * TH + i // TW
    kx = tx * TW + i % TW
    kvalid = (ky < len_y) & (kx < len_x)
    k_off = (ky * DIL_Y + gy) * sy + (kx * DIL_X + gx) * sx
    kd_mask = kvalid[:, None] & dmask[None, :]
    ki_off = (ky * DIL_Y + gy) * isy + (kx * DIL_X + gx) * isx
    k = tl.load(K + ibase + ki_off[:, None] + offs_d[None, :], mask=kd_mask, other=0.0)
    v = tl.load(V + ibase + ki_off[:, None] + offs_d[None, :], mask=kd_mask, other=0.0)

    row_lo, row_hi, col_lo, col_hi = _tile_box(QMIN_Y, QMAX_Y, QMIN_X, QMAX_X, ty, tx, gy, gx, len_y, len_x,
                                               GMAX_Y, GMAX_X, TH, TW)

    rpb_tile = RPB
    if RPB_CHUNKS:
        rpb_tile = _rpb_tile(RPB, PAT_Y, PAT_X, NPX, NPAT, NCH, gy, gx, ty, tx, h, NT_Y, NT_X, TH, TW, KR, KC)

    dk = tl.zeros([TH * TW, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([TH * TW, BLOCK_D], dtype=tl.float32)
    j = tl.arange(0, KR * KC)
    for qy0 in range(row_lo, row_hi + 1, KR):
        for qx0 in range(col_lo, col_hi + 1, KC):
            qy = qy0 + j // KC
            qx = qx0 + j % KC
            qvalid = (qy <= row_hi) & (qx <= col_hi)
            q_off = (qy * DIL_Y + gy) * sy + (qx * DIL_X + gx) * sx
            qd_mask = qvalid[:, None] & dmask[None, :]
            qi_off = (qy * DIL_Y + gy) * isy + (qx * DIL_X + gx) * isx
            q = tl.load(Q + ibase + qi_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(DO + base + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
            row_off = bh.to(tl.int64) * H * W + (qy * DIL_Y + gy) * W + qx * DIL_X + gx
            lse2 = tl.load(LSE + row_off, mask=qvalid, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + row_off, mask=qvalid, other=0.0)
            lo_y = tl.load(LO_Y + gy * GMAX_Y + qy, mask=qvalid, other=0)
            lo_x = tl.load(LO_X + gx * GMAX_X + qx, mask=qvalid, other=0)
            wy = (tl.load(HI_Y + gy * GMAX_Y + qy, mask=qvalid, other=-1) - lo_y + 1).to(tl.uint32)
            wx = (tl.load(HI_X + gx * GMAX_X + qx, mask=qvalid, other=-1) - lo_x + 1).to(tl.uint32)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2  # [keys, queries]
            dy = ky[:, None] - lo_y[None, :]
            dx = kx[:, None] - lo_x[None, :]
            mask = ((dy.to(tl.uint32, bitcast=True) < wy[None, :])
                    & (dx.to(tl.uint32, bitcast=True) < wx[None, :])
                    & kvalid[:, None])
            if RPB_CHUNKS:
                chunk = (qy0 - row_lo) // KR * NCX + (qx0 - col_lo) // KC
                st += tl.load(rpb_tile + chunk * (TH * TW * KR * KC)) * 1.4426950408889634
            elif HAS_RPB:
                r_off = ((h * (2 * KH - 1) + lo_y[None, :] - qy[None, :] + KH - 1) * (2 * KW - 1)
                         + lo_x[None, :] - qx[None, :] + KW - 1) + dy * (2 * KW - 1) + dx
                st += tl.load(RPB + r_off, mask=mask, other=0.0) * 1.4426950408889634
            pt = tl.where(mask, tl.exp2(st - lse2[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    tl.store(DK + base + k_off[:, None] + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + base + k_off[:, None] + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kd_mask)


def _as_2d(q, kernel_size, dilation, stride, is_causal, rpb):
    """View 1-D problems as 2-D problems of height 1 (options as tuples; 2-D inputs pass through)."""
    if q.dim() == 5:
        return q, tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal), rpb
    heads = q.shape[2]
    rpb2 = None if rpb is None else rpb.reshape(heads, 1, -1)
    return (_to_2d(q), (1, kernel_size[0]), (1, dilation[0]), (1, stride[0]), (False, is_causal[0]), rpb2)


def _to_2d(t):
    """A heads-last tensor as a 2-D problem (1-D inputs get height 1)."""
    return t if t.dim() == 5 else t.unsqueeze(1)


def _shared_strides(q, k, v):
    """q, k, v as the kernels read them: unit stride on ``dim`` and one set of strides for all three (views
    into one packed qkv tensor qualify, so the layer's projection output needs no copies); else contiguous."""
    if q.stride(-1) == 1 and q.stride() == k.stride() == v.stride():
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()



_GEOMETRY: dict = {}


def _launch_geometry(q, kernel_size, dilation, stride, is_causal, which, rpb):
    """Tables, tile config, runtime sizes, grid, constexprs, the plan key and the RPB chunk layout (None when the
    launch reads the RPB table as it is, or has none) of one launch (cached)."""
    key = (tuple(q.shape), q.dtype, q.device, kernel_size, dilation, stride, is_causal, which, rpb,
           RPB_CHUNK_BYTES, RPB_CHUNK_PASSES,
           tuple(tuple(sorted(CONFIG_OVERRIDE.get(name, {}).items())) for name in _OVERRIDES[which]))
    hit = _GEOMETRY.get(key)
    if hit is not None:
        return hit
    B, H, W, heads, dim = q.shape
    dev = str(q.device)
    ty = _tables(H, kernel_size[0], dilation[0], stride[0], is_causal[0], dev)
    tx = _tables(W, kernel_size[1], dilation[1], stride[1], is_causal[1], dev)
    def config(gathered_rpb: bool) -> dict:
        cfg = dict(_config(tuple(kernel_size), (H, W), dim, which, gathered_rpb))
        for name in _OVERRIDES[which]:
            cfg.update(CONFIG_OVERRIDE.get(name, {}))
        return cfg

    cfg, layout = config(rpb), None
    if rpb and which in RPB_CHUNK_PASSES:  # the chunk layout, while it fits in RPB_CHUNK_BYTES
        # the bias read from the chunk layout costs few registers: plain NA's tiles, with two warps
        plain = config(False)   # at least in the backward (one spills there, tools/sm90_compile.py)
        if which != "fwd" and plain.get("num_warps", 4) < 2 and "num_warps" not in CONFIG_OVERRIDE.get(which, {}):
            plain["num_warps"] = 2
        for tiles in (plain, cfg):
            layout = _rpb_chunk_index((H, W), kernel_size, dilation, stride, is_causal, tiles, which == "dkdv", dev)
            if _rpb_chunks_fit(heads, layout):
                cfg = tiles
                break
            layout = None
    gmax_y, gmax_x = ty[0].shape[1], tx[0].shape[1]
    nt_y, nt_x = -(-gmax_y // cfg["TH"]), -(-gmax_x // cfg["TW"])
    grid = (dilation[0] * dilation[1] * nt_y * nt_x, B * heads)
    common = dict(DIL_Y=dilation[0], DIL_X=dilation[1], KH=kernel_size[0], KW=kernel_size[1],
                  BLOCK_D=max(16, pow2(dim)), PRECISION=dot_precision(q.dtype))
    meta, launch = _split(cfg)
    common.update(meta)
    common.update(launch)
    hit = (ty, tx, (H, W, heads, dim, gmax_y, gmax_x, nt_y, nt_x), grid, common, key, layout)
    _GEOMETRY[key] = hit
    return hit


def _split(cfg):
    meta = {k: cfg[k] for k in ("TH", "TW", "KR", "KC")}
    return meta, dict(num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))


def forward(q, k, v, rpb, kernel_size, dilation, stride, is_causal, scale):
    """Fused forward. Returns ``(out, lse)`` with lse ``[B, heads, *spatial]`` in float32 (natural log)."""
    q, k, v = _shared_strides(q, k, v)
    q2, ks, dil, st, causal, rpb2 = _as_2d(q, kernel_size, dilation, stride, is_causal, rpb)
    ty, tx, dims, grid, common, plan, layout = _launch_geometry(q2, ks, dil, st, causal, "fwd", rpb2 is not None)
    B, H, W, heads, _ = q2.shape
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((B, heads, H, W), device=q.device, dtype=torch.float32)
    rpb_f = rpb2.float().contiguous() if rpb2 is not None else None
    bias, pat_y, pat_x, counts = _rpb_args(rpb_f, ty[0], layout)
    chunks = layout is not None
    strides = q2.stride()[:4]
    launch(_fwd_kernel, grid, (plan, strides, chunks),
            (q2, _to_2d(k), _to_2d(v), _to_2d(out), lse, bias, pat_y, pat_x, ty[0], ty[1], tx[0], tx[1], *dims,
             *strides, *counts, scale * LOG2E), dict(common, HAS_RPB=rpb2 is not None, RPB_CHUNKS=chunks))
    return out, (lse if q.dim() == 5 else lse.view(B, heads, W))


def backward(grad_out, q, k, v, out, lse, rpb, kernel_size, dilation, stride, is_causal, scale, rpb_grad):
    """Fused backward. Returns ``(dq, dk, dv, d_rpb)``; d_rpb is None unless ``rpb_grad``."""
    q, k, v = _shared_strides(q, k, v)
    q2, ks, dil, st, causal, rpb2 = _as_2d(q, kernel_size, dilation, stride, is_causal, rpb)
    ty, tx, dims, grid, common, plan, layout = _launch_geometry(q2, ks, dil, st, causal, "bwd", rpb2 is not None)
    B, H, W, heads, _ = q2.shape
    strides = q2.stride()[:4]
    k2, v2, do2, out2 = _to_2d(k), _to_2d(v), _to_2d(grad_out.contiguous()), _to_2d(out)
    lse2 = lse if lse.dim() == 4 else lse.unsqueeze(2)
    delta = torch.empty_like(lse2)
    dq, dk, dv = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
    has_rpb, rpb_grad = rpb2 is not None, bool(rpb_grad)
    rpb_f = rpb2.float().contiguous() if has_rpb else None
    kk = ks[0] * ks[1]
    bias, pat_y, pat_x, counts = _rpb_args(rpb_f, ty[0], layout)
    chunks = layout is not None
    ds_chunks = chunks and rpb_grad and "dsum" in RPB_CHUNK_PASSES
    if ds_chunks:  # dS summed over the batch in the chunk layout [heads, tiles, chunks, own, other]
        ds = torch.zeros(heads * grid[0] * (layout.gather.numel() // counts[1]), device=q.device, dtype=torch.float32)
    elif rpb_grad:  # dS per (query, neighbour); only causal windows leave entries unwritten
        ds = (torch.zeros if any(causal) else torch.empty)(B * heads * H * W * kk, device=q.device,
                                                           dtype=torch.float32)
    else:
        ds = dq
    launch(_bwd_dq_kernel, grid, (plan, strides, rpb_grad, chunks, ds_chunks),
            (q2, k2, v2, out2, do2, lse2, delta, bias, pat_y, pat_x, _to_2d(dq), ds, ty[0], ty[1], tx[0], tx[1],
             *dims, *strides, *counts, scale, scale * LOG2E),
            dict(common, HAS_RPB=has_rpb, RPB_CHUNKS=chunks, RPB_GRAD=rpb_grad, DS_CHUNKS=ds_chunks))
    ty, tx, dims, grid, common, plan, kv_layout = _launch_geometry(q2, ks, dil, st, causal, "dkdv", has_rpb)
    bias, pat_y, pat_x, counts = _rpb_args(rpb_f, ty[0], kv_layout)
    kv_chunks = kv_layout is not None
    launch(_bwd_dkdv_kernel, grid, (plan, strides, kv_chunks),
            (q2, k2, v2, do2, lse2, delta, bias, pat_y, pat_x, _to_2d(dk), _to_2d(dv), ty[0], ty[1], tx[0], tx[1],
             ty[2], ty[3], tx[2], tx[3], *dims, *strides, *counts, scale, scale * LOG2E),
            dict(common, HAS_RPB=has_rpb, RPB_CHUNKS=kv_chunks))
    if rpb_grad:
        drpb = torch.zeros(heads, rpb_f.numel() // heads, device=q.device, dtype=torch.float32)
        if ds_chunks:  # tiles -> their patterns, then each pattern's entries -> the table
            per_tile = ds.view(heads, layout.tile_pattern.numel(), -1)
            per_pattern = per_tile.new_zeros(heads, layout.counts[1], per_tile.shape[2])
            per_pattern.index_add_(1, layout.tile_pattern, per_tile)
            drpb.index_add_(1, layout.gather, per_pattern.view(heads, -1))  # entries outside windows hold zeros
        else:
            rel = _cached_indices((H, W), ks, dil, st, causal, q.device)[2]  # [N, K] flat index into the table
            per_pair = ds.view(B, heads * H * W * kk).sum(0).view(heads, H * W * kk)
            drpb.index_add_(1, rel.view(-1), per_pair)
        return dq, dk, dv, drpb.view(rpb.shape).to(rpb.dtype)
    return dq, dk, dv, None

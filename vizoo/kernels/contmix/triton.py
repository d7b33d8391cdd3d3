"""Fused ``na2d_av`` in Triton: forward, and a backward that returns d_attn and d_v without atomics.

Same operator as ``reference.py`` (see there for the window rules). Two sets of kernels share the host tables:
the gather kernels (any dilation) and the band-matrix kernels (dilation 1, where they are the default: on an H200
their forward was faster at every OverLoCK shape timed, their backward at all but 7x7, within 5% there). The
gather kernels:

* Host tables per axis (tiny, cached): ``first[p]``, the image coordinate of pixel p's first key (tap r of the
  window sits at ``first[p] + r * dilation``), and the inverse, ``qfirst[j]`` / ``qcount[j]``: the pixels whose
  windows hold key j are ``qfirst[j] + i * dilation`` for ``i < qcount[j]`` (windows are monotone, so this is a
  contiguous run inside j's dilation group).
* Forward and d_attn: a program owns ``BLOCK_P`` pixels of one (batch, head) and walks the window's taps in
  chunks of ``BLOCK_O``: it loads the ``[BLOCK_P, BLOCK_O]`` weight tile (contiguous per pixel) and gathers the
  ``[BLOCK_P, BLOCK_O, dim]`` values, then reduces over taps (forward) or over dim against the output gradient
  (d_attn). Weights are read once; each value is re-read by up to ``kh * kw`` pixels, from cache.
* d_v: a program owns ``BLOCK_P`` keys and walks the box of pixels that attend them (the inverse tables),
  reading each pixel's weight at the tap that points back at the key. Accumulation is float32 throughout.

Band-matrix kernels (``method="rows"``; dilation 1 only; ``method="auto"`` takes them for the passes in
``ROWS_PASSES``, both by default): a program owns ``BLOCK_X`` pixels of one image row. Windows are clamped, so along
a row each pixel's first key column moves by 0 or 1 from its neighbour's and the tile's windows together cover at
most ``BLOCK_X + kw - 1`` consecutive columns. For each kernel row the program loads those columns of one value row
as a contiguous ``[BLOCK_J, dim]`` tile and multiplies it on tensor cores by the band matrix ``band[x, j] = attn[x,
ky, j - off(x)]`` (zero outside the pixel's ``kw`` taps): no per-tap gather of the values. d_attn is the same
product turned around (``G @ rows^T``, each pixel's ``kw`` band entries stored back to its taps), and d_v the
transposed band over the pixel rows and columns that attend a tile of keys (the inverse tables), again without
atomics. (A form that moved the weights as dense tiles and built the bands with ``tl.gather`` was slower at every
OverLoCK shape on an H200, 1.3x to 16x in GPU time, and was dropped; the fused forward below works that way.)

``fused_forward`` (``_fused_tile_kernel``, ContMix inference) computes the weights of a row tile's pixels in the
program as one ``[BLOCK_X, BLOCK_T]`` tile and builds each kernel row's band from it with ``tl.gather``: logits
``q @ kp`` (one ``tl.dot`` of the tile's queries with the image's projected keys), the tap bias and the relative
position bias, softmax in float32; the weights never reach memory.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from vizoo.kernels._backend import cdiv, dot_precision, launch, pow2
from vizoo.kernels.neighborhood.reference import axis_windows

# the passes ("fwd", "bwd") whose dilation-1 calls take the band-matrix kernels under ``method="auto"``, and their
# tile. Timed on an H200 (bf16, GPU-only, 16-pixel tiles and 2 warps against the gather kernels): forward 5.0x
# faster at 14x14 k=13 (batch 128, 8 heads of 16 channels), 2.4x at 14x14 k=5, 2.0x at 7x7 k=7 and 5.4x at 56x56
# k=13; backward 2.4x, 1.4x, 0.95x and 3.1x. Tiles of 32 or 64 pixels and 1, 4 or 8 warps were all slower.
ROWS_PASSES = ("fwd", "bwd")
ROWS_BLOCK_X = 16  # pixels of one image row per program (a tensor-core tile needs at least 16)
ROWS_WARPS = 2
TILE_WARPS = 4  # warps of the fused kernel: its [16, BLOCK_T] float32 tiles need the registers (at 2 they spill)
# later calls of one problem launch the compiled kernels directly (``_backend.launch``, as NA's kernels do): on an
# H200 it cut the public op's host time per forward from 95 to 57 us at 7x7 k=7 and per forward+backward from 713
# to 583 us at 14x14 k=13 (bf16, batch 128)
DIRECT_LAUNCH = True


@functools.lru_cache(maxsize=256)
def _axis_tables(length: int, kernel: int, dilation: int, device: str) -> tuple:
    """int32 ``first``, ``qfirst``, ``qcount`` for one axis, and the largest ``qcount`` (a loop bound)."""
    lo, hi = axis_windows(length, kernel, dilation, 1, False)
    pos = torch.arange(length)
    first = lo * dilation + pos % dilation
    # attends[q, j]: key j lies in q's window (same dilation group, lo <= j // d <= hi)
    kg = pos // dilation
    attends = (pos[:, None] % dilation == pos[None, :] % dilation) & (lo[:, None] <= kg) & (kg <= hi[:, None])
    qcount = attends.sum(0)
    qfirst = attends.int().argmax(0)
    tables = tuple(t.to(torch.int32).to(device) for t in (first, qfirst, qcount))
    return tables + (int(qcount.max()),)


def _blocks(dim: int, taps: int) -> tuple:
    block_d = pow2(dim)
    block_p = 32
    block_o = max(1, min(pow2(taps), 8192 // (block_p * block_d)))
    return block_p, block_o, block_d


@triton.jit
def _gather_values(V, fy, fx, o, pmask, omask, v_img, h, W, HEADS, D, offs_d, dmask, KW: tl.constexpr,
                   DIL_Y, DIL_X):
    """The ``[P, O, BLOCK_D]`` values at taps ``o`` of each pixel's window (float32), and the tile mask."""
    ky = fy[:, None] + (o // KW)[None, :] * DIL_Y
    kx = fx[:, None] + (o % KW)[None, :] * DIL_X
    vrow = ((v_img + ky * W + kx) * HEADS + h) * D
    m2 = pmask[:, None] & omask[None, :]
    vals = tl.load(V + vrow[:, :, None] + offs_d[None, None, :], mask=m2[:, :, None] & dmask[None, None, :],
                   other=0.0)
    return vals.to(tl.float32), m2


@triton.jit
def _av_kernel(A, V, G, OUT, FY, FX, H, W, HEADS, D, DIL_Y, DIL_X, KH: tl.constexpr, KW: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, GRAD_ATTN: tl.constexpr):
    """``GRAD_ATTN=False``: OUT = sum_t A[., t] * V[key t] (forward). ``True``: OUT[., t] = <G, V[key t]>."""
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < H * W
    fy = tl.load(FY + p // W, mask=pmask, other=0)
    fx = tl.load(FX + p % W, mask=pmask, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    v_img = b.to(tl.int64) * H * W
    row = (v_img + p) * HEADS + h  # (pixel, head) row of A, G and OUT
    a_row = row * (KH * KW)
    io_mask = pmask[:, None] & dmask[None, :]
    if GRAD_ATTN:
        g = tl.load(G + row[:, None] * D + offs_d[None, :], mask=io_mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for o0 in range(0, KH * KW, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        omask = o < KH * KW
        vals, m2 = _gather_values(V, fy, fx, o, pmask, omask, v_img, h, W, HEADS, D, offs_d, dmask, KW, DIL_Y,
                                  DIL_X)
        if GRAD_ATTN:
            da = tl.sum(g[:, None, :] * vals, axis=2)
            tl.store(OUT + a_row[:, None] + o[None, :], da.to(OUT.dtype.element_ty), mask=m2)
        else:
            a = tl.load(A + a_row[:, None] + o[None, :], mask=m2, other=0.0).to(tl.float32)
            acc += tl.sum(a[:, :, None] * vals, axis=1)
    if not GRAD_ATTN:
        tl.store(OUT + row[:, None] * D + offs_d[None, :], acc.to(OUT.dtype.element_ty), mask=io_mask)


@triton.jit
def _dv_kernel(A, G, DV, FY, FX, QFY, QCY, QFX, QCX, H, W, HEADS, D, DIL_Y, DIL_X, NQY, NQX,
               KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """DV[key] = sum over the pixels q whose window holds key of A[q, tap(q, key)] * G[q]."""
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    j = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    jmask = j < H * W
    jy = j // W
    jx = j % W
    qfy = tl.load(QFY + jy, mask=jmask, other=0)
    qcy = tl.load(QCY + jy, mask=jmask, other=0)
    qfx = tl.load(QFX + jx, mask=jmask, other=0)
    qcx = tl.load(QCX + jx, mask=jmask, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    img = b.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for iy in range(0, NQY):
        qy = qfy + iy * DIL_Y
        my = jmask & (iy < qcy)
        ty = (jy - tl.load(FY + qy, mask=my, other=0)) // DIL_Y
        for ix in range(0, NQX):
            qx = qfx + ix * DIL_X
            m = my & (ix < qcx)
            tx = (jx - tl.load(FX + qx, mask=m, other=0)) // DIL_X
            row = (img + qy * W + qx) * HEADS + h
            a = tl.load(A + row * (KH * KW) + ty * KW + tx, mask=m, other=0.0).to(tl.float32)
            g = tl.load(G + row[:, None] * D + offs_d[None, :], mask=m[:, None] & dmask[None, :], other=0.0)
            acc += a[:, None] * g.to(tl.float32)
    out_row = (img + j) * HEADS + h
    tl.store(DV + out_row[:, None] * D + offs_d[None, :], acc.to(DV.dtype.element_ty),
             mask=jmask[:, None] & dmask[None, :])


@triton.jit
def _row_tile(W, HEADS, BLOCK_X: tl.constexpr):
    """This program's image row, first column, its ``BLOCK_X`` columns (and their mask), batch and head."""
    tiles_x = tl.cdiv(W, BLOCK_X)
    x0 = (tl.program_id(0) % tiles_x) * BLOCK_X
    xs = x0 + tl.arange(0, BLOCK_X)
    bh = tl.program_id(1)
    return tl.program_id(0) // tiles_x, x0, xs, xs < W, bh // HEADS, bh % HEADS


@triton.jit
def _av_rows_kernel(A, V, G, OUT, FY, FX, H, W, HEADS, D, KH: tl.constexpr, KW: tl.constexpr,
                    BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, GRAD_ATTN: tl.constexpr,
                    PREC: tl.constexpr):
    """Band-matrix form, dilation 1. ``GRAD_ATTN=False``: OUT = na2d_av(A, V). ``True``: OUT = d_attn for the
    output gradient G."""
    y, x0, xs, xmask, b, h = _row_tile(W, HEADS, BLOCK_X)
    base = tl.load(FX + x0)  # the tile's first key column (windows are monotone along the row)
    tap = tl.arange(0, BLOCK_J)[None, :] - (tl.load(FX + xs, mask=xmask, other=0) - base)[:, None]  # [X, J]
    band_mask = xmask[:, None] & (tap >= 0) & (tap < KW)
    cols = base + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    vmask = (cols < W)[:, None] & (offs_d < D)[None, :]
    img = b.to(tl.int64) * H * W
    row = (img + y * W + xs) * HEADS + h  # (pixel, head) rows of A, G and OUT
    io_mask = xmask[:, None] & (offs_d < D)[None, :]
    fy = tl.load(FY + y)
    if GRAD_ATTN:
        g = tl.load(G + row[:, None] * D + offs_d[None, :], mask=io_mask, other=0.0)
    else:
        acc = tl.zeros([BLOCK_X, BLOCK_D], dtype=tl.float32)
    for ky in range(KH):
        vals = tl.load(V + ((img + (fy + ky) * W + cols) * HEADS + h)[:, None] * D + offs_d[None, :], mask=vmask,
                       other=0.0)  # [J, BLOCK_D]: the window columns of value row fy + ky
        taps = row[:, None] * (KH * KW) + ky * KW + tap
        if GRAD_ATTN:
            prod = tl.dot(g.to(vals.dtype), tl.trans(vals), input_precision=PREC)  # [X, J]: <G[x], V[col j]>
            tl.store(OUT + taps, prod.to(OUT.dtype.element_ty), mask=band_mask)
        else:
            band = tl.load(A + taps, mask=band_mask, other=0.0)
            acc = tl.dot(band.to(vals.dtype), vals, acc, input_precision=PREC)
    if not GRAD_ATTN:
        tl.store(OUT + row[:, None] * D + offs_d[None, :], acc.to(OUT.dtype.element_ty), mask=io_mask)


@triton.jit
def _dv_rows_kernel(A, G, DV, FY, FX, QFY, QCY, QFX, H, W, HEADS, D, KH: tl.constexpr, KW: tl.constexpr,
                    BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """Band-matrix form of d_v, dilation 1: ``BLOCK_X`` keys of one image row; for each pixel row that attends
    it, ``d_v += band^T @ G`` over the ``BLOCK_J`` pixel columns that can reach these keys."""
    r, c0, ks, kmask, b, h = _row_tile(W, HEADS, BLOCK_X)
    ps = tl.load(QFX + c0) + tl.arange(0, BLOCK_J)  # pixel columns whose windows may hold these keys
    pmask = ps < W
    tap = ks[:, None] - tl.load(FX + ps, mask=pmask, other=0)[None, :]  # [X, J]: the tap of key k in pixel p
    band_mask = kmask[:, None] & pmask[None, :] & (tap >= 0) & (tap < KW)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = pmask[:, None] & (offs_d < D)[None, :]
    img = b.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK_X, BLOCK_D], dtype=tl.float32)
    qfy = tl.load(QFY + r)
    for iy in range(tl.load(QCY + r)):
        y = qfy + iy
        ky = r - tl.load(FY + y)
        prow = (img + y * W + ps) * HEADS + h  # [J]
        band = tl.load(A + prow[None, :] * (KH * KW) + ky * KW + tap, mask=band_mask, other=0.0)
        g = tl.load(G + prow[:, None] * D + offs_d[None, :], mask=gmask, other=0.0)
        acc = tl.dot(band.to(g.dtype), g, acc, input_precision=PREC)
    out_row = (img + r * W + ks) * HEADS + h
    tl.store(DV + out_row[:, None] * D + offs_d[None, :], acc.to(DV.dtype.element_ty),
             mask=kmask[:, None] & (offs_d < D)[None, :])


@triton.jit
def _fused_tile_kernel(Q, KP, BP, RPB, V, OUT, FY, FX, H, W, HEADS, C, D, KH: tl.constexpr, KW: tl.constexpr,
                       BLOCK_X: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_D: tl.constexpr, PREC_Q: tl.constexpr, PREC: tl.constexpr):
    """ContMix's weights and their aggregation in one pass, the ``[BLOCK_X, BLOCK_T]`` weight tile in registers.
    Logits are ``Q @ KP[b, head]`` (queries against the image's projected keys, ``[C, kh * kw]``) plus the tap
    bias ``BP`` plus the relative position bias ``RPB[head, key_y - y + kh - 1, key_x - x + kw - 1]``; taps past
    ``kh * kw`` are -inf and the softmax along the taps runs in float32."""
    y, x0, xs, xmask, b, h = _row_tile(W, HEADS, BLOCK_X)
    base = tl.load(FX + x0)  # the tile's first key column (windows are monotone along the row)
    fx = tl.load(FX + tl.minimum(xs, W - 1))  # [X]: each pixel's first key column (past the edge: the last one's)
    off = (fx - base)[:, None]
    tap = tl.arange(0, BLOCK_J)[None, :] - off  # [X, J]: the tap of window column j in the pixel's kernel row
    in_band = (tap >= 0) & (tap < KW)
    t = tl.arange(0, BLOCK_T)[None, :]  # [1, T]: the taps
    t_ok = t < KH * KW
    cols = base + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    img = b.to(tl.int64) * H * W
    row = (img + y * W + xs) * HEADS + h  # (pixel, head) rows of Q, V and OUT
    io_mask = xmask[:, None] & (offs_d < D)[None, :]
    fy = tl.load(FY + y)
    # logits [X, T]: queries [X, BLOCK_C] against this image's projected keys [BLOCK_C, T]
    offs_c = tl.arange(0, BLOCK_C)
    q = tl.load(Q + row[:, None] * C + offs_c[None, :], mask=xmask[:, None] & (offs_c < C)[None, :], other=0.0)
    kp_rows = ((b * HEADS + h) * C + offs_c).to(tl.int64) * (KH * KW)
    kp = tl.load(KP + kp_rows[:, None] + t, mask=(offs_c < C)[:, None] & t_ok, other=0.0)
    logits = tl.dot(q, kp, input_precision=PREC_Q) + tl.load(BP + t, mask=t_ok, other=0.0)
    # tap (ky, kx) of pixel (y, x) looks at key (fy + ky, fx + kx): its offset from the pixel indexes the table
    rel_y = fy + t // KW - y + KH - 1  # [1, T]
    rel_x = fx[:, None] + t % KW - xs[:, None] + KW - 1  # [X, T]
    bias = tl.load(RPB + (h * (2 * KH - 1) + rel_y) * (2 * KW - 1) + rel_x, mask=xmask[:, None] & t_ok, other=0.0)
    logits = tl.where(t_ok, logits + bias, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    weights = e / tl.sum(e, axis=1)[:, None]
    vmask = (cols < W)[:, None] & (offs_d < D)[None, :]
    acc = tl.zeros([BLOCK_X, BLOCK_D], dtype=tl.float32)
    for ky in range(KH):  # kernel row ky's band, gathered from the weight tile, times the window's value row
        vals = tl.load(V + ((img + (fy + ky) * W + cols) * HEADS + h)[:, None] * D + offs_d[None, :], mask=vmask,
                       other=0.0)  # [J, BLOCK_D]: the window columns of value row fy + ky
        band = tl.gather(weights, tl.where(in_band, ky * KW + tap, 0), axis=1)  # [X, J]
        acc = tl.dot(tl.where(in_band, band, 0.0).to(vals.dtype), vals, acc, input_precision=PREC)
    tl.store(OUT + row[:, None] * D + offs_d[None, :], acc.to(OUT.dtype.element_ty), mask=io_mask)


def _rows(method: str, dilation, pass_: str) -> bool:
    if method not in ("auto", "gather", "rows"):
        raise ValueError(f"method must be 'auto', 'gather' or 'rows', got {method!r}")
    if method == "rows" and tuple(dilation) != (1, 1):
        raise ValueError(f"the band-matrix kernels take dilation 1 only, got {tuple(dilation)}")
    return method == "rows" or (method == "auto" and pass_ in ROWS_PASSES and tuple(dilation) == (1, 1))


def _rows_launch(shape, dtype, kernel_size):
    """Grid and block sizes of the band-matrix kernels."""
    B, H, W, heads, dim = shape
    block_x = ROWS_BLOCK_X
    block_j = pow2(block_x + kernel_size[1] - 1)
    block_d = max(16, pow2(dim))
    grid = (H * cdiv(W, block_x), B * heads)
    return grid, dict(BLOCK_X=block_x, BLOCK_J=block_j, BLOCK_D=block_d, PREC=dot_precision(dtype),
                      num_warps=ROWS_WARPS)


def _tables(H: int, W: int, kernel_size, dilation, device) -> tuple:
    """The per-axis host tables (``_axis_tables``) of the map's rows and columns."""
    device = str(device)
    return (_axis_tables(H, kernel_size[0], dilation[0], device), _axis_tables(W, kernel_size[1], dilation[1], device))


def _launch(kernel, grid, plan, args, meta) -> None:
    launch(kernel, grid, plan, args, meta, direct=DIRECT_LAUNCH)


class _Setup(NamedTuple):
    """What every call of one problem shares. ``plan`` fixes every int argument and pointer dtype of the launches
    (see ``_backend.launch``); ``av_args`` / ``dv_args`` are the arguments after the tensors of the ``_av*`` /
    ``_dv*`` kernels (tables, sizes), the metas their constexprs and launch options."""

    grid: tuple
    plan: tuple
    av_args: tuple
    dv_args: tuple
    out_meta: dict
    d_attn_meta: dict
    d_v_meta: dict


@functools.lru_cache(maxsize=256)
def _setup(shape, dtypes: tuple, device, kernel_size: tuple, dilation: tuple, rows: bool) -> _Setup:
    """The launch setup of one problem, built once. ``dtypes``: attn's, v's and the output gradient's (``None`` in
    the forward); ``rows``: the band-matrix kernels, else the gather ones. Holds no tensor but the int32 tables."""
    B, H, W, heads, dim = shape
    (fy, qfy, qcy, nqy), (fx, qfx, qcx, nqx) = _tables(H, W, kernel_size, dilation, device)
    plan = (tuple(shape), *dtypes, device, kernel_size, dilation)
    ks = dict(KH=kernel_size[0], KW=kernel_size[1])
    if rows:
        grid, blocks = _rows_launch(shape, dtypes[1], kernel_size)
        return _Setup(grid, plan, (fy, fx, H, W, heads, dim), (fy, fx, qfy, qcy, qfx, H, W, heads, dim),
                      dict(ks, GRAD_ATTN=False, **blocks), dict(ks, GRAD_ATTN=True, **blocks), dict(ks, **blocks))
    bp, bo, bd = _blocks(dim, kernel_size[0] * kernel_size[1])
    grid = (cdiv(H * W, bp), B * heads)
    av = dict(ks, BLOCK_P=bp, BLOCK_O=bo, BLOCK_D=bd, num_warps=4)
    return _Setup(grid, plan, (fy, fx, H, W, heads, dim, *dilation),
                  (fy, fx, qfy, qcy, qfx, qcx, H, W, heads, dim, *dilation, nqy, nqx),
                  dict(av, GRAD_ATTN=False), dict(av, GRAD_ATTN=True), dict(ks, BLOCK_P=bp, BLOCK_D=bd, num_warps=4))


def forward(attn, v, kernel_size, dilation, method: str = "auto"):
    """``[B, H, W, heads, dim]`` output of ``na2d_av`` (contiguous inputs, any float dtype Triton loads);
    ``method``: ``"gather"``, ``"rows"`` (band matrices, dilation 1) or ``"auto"`` (rows for the passes in
    ``ROWS_PASSES`` at dilation 1)."""
    attn, v = attn.contiguous(), v.contiguous()
    rows = _rows(method, dilation, "fwd")
    s = _setup(v.shape, (attn.dtype, v.dtype, None), v.device, tuple(kernel_size), tuple(dilation), rows)
    out = torch.empty_like(v)
    _launch(_av_rows_kernel if rows else _av_kernel, s.grid, s.plan, (attn, v, v, out, *s.av_args), s.out_meta)
    return out


def backward(grad_out, attn, v, kernel_size, dilation, method: str = "auto", need_attn: bool = True,
             need_v: bool = True):
    """``(d_attn, d_v)`` of ``na2d_av`` for the output gradient ``grad_out`` (``method`` as in :func:`forward`); a
    gradient not needed (``need_attn`` / ``need_v`` false) is not computed and returned as ``None``."""
    grad_out, attn, v = grad_out.contiguous(), attn.contiguous(), v.contiguous()
    rows = _rows(method, dilation, "bwd")
    s = _setup(v.shape, (attn.dtype, v.dtype, grad_out.dtype), v.device, tuple(kernel_size), tuple(dilation), rows)
    d_attn = d_v = None
    if need_attn:
        d_attn = torch.empty_like(attn)
        _launch(_av_rows_kernel if rows else _av_kernel, s.grid, s.plan, (attn, v, grad_out, d_attn, *s.av_args),
                s.d_attn_meta)
    if need_v:
        d_v = torch.empty_like(v)
        _launch(_dv_rows_kernel if rows else _dv_kernel, s.grid, s.plan, (attn, grad_out, d_v, *s.dv_args),
                s.d_v_meta)
    return d_attn, d_v


def fused_forward(q, kp, bp, rpb, v, kernel_size: int):
    """``[B, H, W, heads, dim]`` ContMix output from queries ``q`` ``[B, H, W, heads, c]``, projected keys ``kp``
    ``[B, heads, c, k*k]`` (q's dtype), tap bias ``bp`` ``[k*k]`` and relative position table ``rpb`` ``[heads,
    2k-1, 2k-1]`` (both read in float32) and values ``v`` (see ``vizoo.kernels.contmix.contmix_fused_forward``):
    one launch of ``_fused_tile_kernel``, no weight tensor in memory. Arguments assumed valid."""
    q, kp, v = q.contiguous(), kp.contiguous(), v.contiguous()
    bp, rpb = bp.float().contiguous(), rpb.float().contiguous()
    grid, plan, tail, meta = _fused_setup(v.shape, q.shape[-1], q.dtype, v.dtype, v.device, kernel_size)
    out = torch.empty_like(v)
    _launch(_fused_tile_kernel, grid, plan, (q, kp, bp, rpb, v, out, *tail), meta)
    return out


@functools.lru_cache(maxsize=256)
def _fused_setup(shape, c: int, q_dtype, v_dtype, device, k: int) -> tuple:
    """``fused_forward``'s launch setup of one problem, built once: grid, plan, the arguments after the tensors
    (tables, sizes) and the constexprs with launch options."""
    B, H, W, heads, dim = shape
    (fy, _, _, _), (fx, _, _, _) = _tables(H, W, (k, k), (1, 1), device)
    grid, blocks = _rows_launch(shape, v_dtype, (k, k))
    meta = dict(KH=k, KW=k, BLOCK_T=max(16, pow2(k * k)), BLOCK_C=max(16, pow2(c)), PREC_Q=dot_precision(q_dtype),
                **{**blocks, "num_warps": TILE_WARPS})
    return grid, (tuple(shape), c, q_dtype, v_dtype, device, k), (fy, fx, H, W, heads, c, dim), meta

"""Fused depthwise "same" convolution in Triton: forward, input gradient and weight gradient (NCHW).

Same operator as ``reference.py``. cuDNN's direct kernel reloads the input for every tap and runs on CUDA cores;
here the taps of one kernel row become one matrix product on tensor cores, so a loaded row segment serves all
``k`` taps of that row and the halo block is read once per program:

* Forward (``_dw_rows_kernel``): a program owns ``ROWS`` map rows of ``IMGS`` images of one channel (stacked into
  the dot's M dimension, ``M = ROWS * IMGS``) and ``BLOCK_O`` output columns. For each kernel row ``ky`` it loads
  the rows shifted by ``ky * d - pad`` over ``BLOCK_E >= BLOCK_O + 2 * pad`` columns (tile plus halo; masked loads
  give the zero padding) and multiplies them by the banded ``[BLOCK_E, BLOCK_O]`` matrix
  ``T_ky[j, o] = w[ky, (j - o) / d]`` (zero where ``j - o`` is not a multiple of d in ``[0, d * (k - 1)]``),
  accumulating in float32. The band wastes multiplies (``BLOCK_E`` per output and kernel row instead of ``k``),
  which tensor cores pay for many times over. 16-bit inputs multiply exactly; float32 uses three TF32 products
  (``tf32x3``, about float32 accuracy). ROWS / IMGS and the warp count are autotuned per shape; BLOCK_O is the
  narrowest tile (>= 16) with the least band work for the map width.
* Input gradient: the same correlation applied to the output gradient with the kernel flipped in both axes
  (``d_x[p] = sum_t w[t] * g[p - offset_t]``; for an odd kernel with "same" padding that is the forward with
  ``w[k-1-ky, k-1-kx]``), so it reuses the forward kernel.
* Weight gradient ``d_w[c, t] = sum over images and pixels of g * x shifted by offset_t``, a reduction over batch
  and pixels (``_dw_wgrad_rows_kernel``): a program owns one channel and a chunk of images; for each kernel row it
  accumulates ``P = G^T @ X_ky`` (``[BLOCK_O, BLOCK_E]``) over all its tiles on tensor cores, then tap ``(ky, kx)``
  is the sum of P along the diagonal ``j - o = kx * d``. Each program writes one partial row per (image chunk,
  channel) and one ``sum`` over the chunks finishes: no atomics (deterministic), and the partial buffer
  (``chunks x C x k*k`` floats) does not depend on the tile. The bias gradient is ``g.sum((0, 2, 3))``.
* CUDA-core kernels (``method="direct"``) for halos wider than 112 columns (``BLOCK_E`` would exceed 128) and
  for kernels up to ``DIRECT_MAX_KERNEL`` (3x3, where the band would waste most of its multiplies): they load the
  shifted ``BLOCK_H x BLOCK_W`` tile once per tap (``_dw_fwd_kernel``, tile autotuned; the repeated loads of the
  tile plus halo hit the L1 cache); the weight gradient reduces per tap (``_dw_wgrad_kernel``), or for kernels up
  to 3x3 all taps from one read of the output gradient (``_dw_wgrad_taps_kernel``).

Accumulation is float32 throughout; outputs are cast to the input's dtype.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from vizoo.kernels._backend import cdiv, launch, pow2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# (BLOCK_H, BLOCK_W, num_warps); under the interpreter one small tile (autotuning there only costs time)
_TILES = [(8, 8, 1), (8, 16, 2), (16, 16, 4), (16, 32, 4), (8, 64, 4)]
_CONFIGS = [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw) for bh, bw, nw in
            ([(8, 16, 1)] if _INTERPRET else _TILES)]
# tensor-core forward: (ROWS, IMGS, num_warps), the dot's M = ROWS * IMGS >= 16
# (a few: OverLoCK has about 30 distinct shapes, each config of each is compiled once on first use)
_ROWS_TILES = [(8, 16, 4), (8, 8, 4), (8, 16, 8), (16, 8, 8), (4, 16, 4)]
_ROWS_CONFIGS = [triton.Config({"ROWS": r, "IMGS": i}, num_warps=nw) for r, i, nw in
                 ([(4, 4, 1)] if _INTERPRET else _ROWS_TILES)]


def _prune_rows(configs, named_args, **kwargs):
    """Drop tiles that stack more rows or images than the map and batch hold (masked waste); keep one at least."""
    rows_max, imgs_max = pow2(named_args["H"]), pow2(named_args["B"])
    kept = [c for c in configs if c.kwargs["ROWS"] <= rows_max and c.kwargs["IMGS"] <= imgs_max]
    if kept:
        return kept
    rows = min(8, rows_max)
    return [triton.Config({"ROWS": rows, "IMGS": cdiv(16, rows) if rows * imgs_max < 16 else imgs_max},
                          num_warps=4)]


# weight gradient: image-chunk count aims at about this many programs in all (C x chunks)
_WGRAD_PROGRAMS = 2048
# "auto" runs kernels at most this wide on the CUDA-core kernels ("direct") and the others that fit as band-matrix
# products ("rows"), which waste most of their multiplies on small kernels: at 3x3 (C=256, 56x56, bf16, batch 256,
# H200) the direct kernels took forward+backward 4.50 ms against 5.32 ms as bands (cuDNN: 8.49 ms).
DIRECT_MAX_KERNEL = 3


# Later calls of one problem launch the compiled kernels directly (``_backend.launch``; an autotuned forward after
# its first call of the problem, which tunes): Triton's per-call specialization of every argument and the
# autotuner's key lookup cost host time at each of a model's many depthwise calls. Off until timed on a GPU.
DIRECT_LAUNCH = False
_TUNED: dict = {}  # (autotuned kernel, plan) -> its best config


def _run(kernel, grid, plan: tuple, args: tuple, meta: dict) -> None:
    """``kernel[grid](*args, **meta)``; ``grid`` a tuple, or for an autotuned kernel a function of its config.
    With ``DIRECT_LAUNCH`` through ``_backend.launch`` (``plan`` fixes every int argument and the tensors'
    dtypes, as there)."""
    if not DIRECT_LAUNCH:
        kernel[grid](*args, **meta)
        return
    if isinstance(kernel, Autotuner):
        config = _TUNED.get((kernel, plan))
        if config is None:  # tune (or look up) as usual, remember the winner
            kernel[grid](*args, **meta)
            _TUNED[(kernel, plan)] = kernel.best_config
            return
        meta = {**meta, **config.all_kwargs()}
        kernel, grid = kernel.fn, grid(meta)
    launch(kernel, grid, plan, args, meta)


def _method(method: str, kernel_size: int) -> str:
    return "direct" if method == "auto" and kernel_size <= DIRECT_MAX_KERNEL else method


@triton.autotune(configs=_CONFIGS, key=["H", "W", "KS", "DIL"])
@triton.jit
def _dw_fwd_kernel(X, Wt, Bias, OUT, C, H, W, DIL, PAD, KS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """OUT[plane, tile] = sum_t Wt[c, t] * X[plane, tile shifted by offset_t] (+ Bias[c])."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles = tl.cdiv(H, BLOCK_H) * tiles_w
    pid = tl.program_id(0)
    plane = pid // tiles
    tile = pid % tiles
    c = plane % C
    oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    base = plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for ky in range(KS):
        iy = oy + ky * DIL - PAD
        my = (iy >= 0) & (iy < H)
        row = base + iy * W
        for kx in tl.static_range(KS):
            ix = ox + kx * DIL - PAD
            mx = (ix >= 0) & (ix < W)
            w = tl.load(Wt + c * KS * KS + ky * KS + kx).to(tl.float32)
            v = tl.load(X + row[:, None] + ix[None, :], mask=my[:, None] & mx[None, :], other=0.0)
            acc += v.to(tl.float32) * w
    if HAS_BIAS:
        acc += tl.load(Bias + c).to(tl.float32)
    omask = (oy < H)[:, None] & (ox < W)[None, :]
    tl.store(OUT + base + oy[:, None] * W + ox[None, :], acc.to(OUT.dtype.element_ty), mask=omask)


@triton.autotune(configs=_ROWS_CONFIGS, key=["B", "H", "W", "KS", "DIL", "BLOCK_O", "BLOCK_E"],
                 prune_configs_by={"early_config_prune": _prune_rows})
@triton.jit
def _dw_rows_kernel(X, Wt, Bias, OUT, B, C, H, W, DIL, PAD, KS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    IMGS: tl.constexpr, ROWS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_E: tl.constexpr,
                    PRECISION: tl.constexpr):
    """The forward on tensor cores: per kernel row ky, ``OUT[rows, BLOCK_O] += X[rows shifted by ky, BLOCK_E] @
    T_ky`` with ``T_ky[j, o] = Wt[c, ky, (j - o) / DIL]`` (zero off the dilated band), so one row load serves all
    k taps of that kernel row. The M dimension stacks ROWS map rows of IMGS images of one channel."""
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(W, BLOCK_O)
    tiles_h = tl.cdiv(H, ROWS)
    c = pid % C
    rest = pid // C
    tw = rest % tiles_w
    rest = rest // tiles_w
    th = rest % tiles_h
    b0 = (rest // tiles_h) * IMGS
    m = tl.arange(0, IMGS * ROWS)
    b = b0 + m // ROWS
    oy = th * ROWS + m % ROWS
    mrow = (b < B) & (oy < H)
    plane = (b * C + c).to(tl.int64) * H * W
    ox0 = tw * BLOCK_O
    j = tl.arange(0, BLOCK_E)
    ix = ox0 - PAD + j
    mcol = (ix >= 0) & (ix < W)
    # band structure of T: entry (j, o) holds tap (j - o) / DIL of the kernel row when that is an integer < KS
    o = tl.arange(0, BLOCK_O)
    delta = j[:, None] - o[None, :]
    tap = delta // DIL
    band = (delta >= 0) & (delta % DIL == 0) & (tap < KS)
    acc = tl.zeros([IMGS * ROWS, BLOCK_O], dtype=tl.float32)
    for ky in range(KS):
        iy = oy + ky * DIL - PAD
        mr = mrow & (iy >= 0) & (iy < H)
        v = tl.load(X + (plane + iy * W)[:, None] + ix[None, :], mask=mr[:, None] & mcol[None, :], other=0.0)
        t = tl.load(Wt + c * KS * KS + ky * KS + tap, mask=band, other=0.0)
        acc = tl.dot(v, t.to(v.dtype), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + c).to(tl.float32)
    ox = ox0 + o
    omask = mrow[:, None] & (ox < W)[None, :]
    tl.store(OUT + (plane + oy * W)[:, None] + ox[None, :], acc.to(OUT.dtype.element_ty), mask=omask)


@triton.jit
def _dw_wgrad_kernel(X, G, PART, B, C, H, W, DIL, PAD, B_PER, KS: tl.constexpr, BLOCK_T: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """PART[chunk, c, t] = sum over the chunk's images and all pixels of G * X shifted by offset_t."""
    pid = tl.program_id(0)
    c = pid % C
    chunk = pid // C
    taps = tl.arange(0, BLOCK_T)
    acc_t = tl.zeros([BLOCK_T], dtype=tl.float32)
    tiles_w = tl.cdiv(W, BLOCK_W)
    for tile in range(tl.cdiv(H, BLOCK_H) * tiles_w):
        oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
        ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
        omask = (oy < H)[:, None] & (ox < W)[None, :]
        for ky in range(KS):
            iy = oy + ky * DIL - PAD
            my = (iy >= 0) & (iy < H)
            for kx in range(KS):
                ix = ox + kx * DIL - PAD
                m = omask & my[:, None] & ((ix >= 0) & (ix < W))[None, :]
                s = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                for i in range(B_PER):
                    b = chunk * B_PER + i
                    base = (b * C + c).to(tl.int64) * H * W
                    ok = b < B
                    g = tl.load(G + base + oy[:, None] * W + ox[None, :], mask=omask & ok, other=0.0)
                    v = tl.load(X + base + iy[:, None] * W + ix[None, :], mask=m & ok, other=0.0)
                    s += g.to(tl.float32) * v.to(tl.float32)
                acc_t = tl.where(taps == ky * KS + kx, acc_t + tl.sum(s), acc_t)
    tl.store(PART + pid.to(tl.int64) * KS * KS + taps, acc_t, mask=taps < KS * KS)


@triton.jit
def _dw_wgrad_taps_kernel(X, G, PART, B, C, H, W, DIL, PAD, B_PER, KS: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """``_dw_wgrad_kernel`` for small kernels (``KS * KS <= BLOCK_T <= 16``): every tap's shifted tile is one
    ``[BLOCK_T, BLOCK_H, BLOCK_W]`` load, so the output-gradient tile is read once per image instead of once per
    tap, and the per-tap sums stay in registers until the end."""
    pid = tl.program_id(0)
    c = pid % C
    chunk = pid // C
    t = tl.arange(0, BLOCK_T)
    shift_y = ((t // KS) * DIL - PAD)[:, None, None]
    shift_x = ((t % KS) * DIL - PAD)[:, None, None]
    acc = tl.zeros([BLOCK_T, BLOCK_H, BLOCK_W], dtype=tl.float32)
    tiles_w = tl.cdiv(W, BLOCK_W)
    for tile in range(tl.cdiv(H, BLOCK_H) * tiles_w):
        oy = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
        ox = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
        omask = (oy < H)[:, None] & (ox < W)[None, :]
        iy = oy[None, :, None] + shift_y  # [BLOCK_T, BLOCK_H, 1]
        ix = ox[None, None, :] + shift_x  # [BLOCK_T, 1, BLOCK_W]
        m = (t < KS * KS)[:, None, None] & omask[None] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        for i in range(B_PER):
            b = chunk * B_PER + i
            base = (b * C + c).to(tl.int64) * H * W
            ok = b < B
            g = tl.load(G + base + oy[:, None] * W + ox[None, :], mask=omask & ok, other=0.0)
            v = tl.load(X + base + iy * W + ix, mask=m & ok, other=0.0)
            acc += v.to(tl.float32) * g.to(tl.float32)[None]
    tl.store(PART + pid.to(tl.int64) * KS * KS + t, tl.sum(tl.sum(acc, 2), 1), mask=t < KS * KS)


@triton.jit
def _dw_wgrad_rows_kernel(X, G, PART, B, C, H, W, DIL, PAD, B_PER, KS: tl.constexpr, BLOCK_T: tl.constexpr,
                          IMGS: tl.constexpr, ROWS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_E: tl.constexpr,
                          PRECISION: tl.constexpr):
    """PART[chunk, c, t] on tensor cores: per kernel row ky, ``P = G[rows, BLOCK_O]^T @ X[rows shifted by ky,
    BLOCK_E]`` summed over the chunk's images and the map's tiles; tap ``(ky, kx)`` is the sum of P along the
    diagonal ``j - o = kx * DIL``."""
    pid = tl.program_id(0)
    c = pid % C
    chunk = pid // C
    tiles_w = tl.cdiv(W, BLOCK_O)
    tiles_h = tl.cdiv(H, ROWS)
    m = tl.arange(0, IMGS * ROWS)
    o = tl.arange(0, BLOCK_O)
    j = tl.arange(0, BLOCK_E)
    delta = o[:, None] * 0 + j[None, :] - o[:, None]
    tap = delta // DIL
    band = (delta >= 0) & (delta % DIL == 0) & (tap < KS)
    taps = tl.arange(0, BLOCK_T)
    acc_t = tl.zeros([BLOCK_T], dtype=tl.float32)
    for ky in range(KS):
        p = tl.zeros([BLOCK_O, BLOCK_E], dtype=tl.float32)
        for i0 in range(0, B_PER, IMGS):
            b = chunk * B_PER + i0 + m // ROWS
            mb = (b < B) & (i0 + m // ROWS < B_PER)
            plane = (b * C + c).to(tl.int64) * H * W
            for tile in range(tiles_h * tiles_w):
                oy = (tile // tiles_w) * ROWS + m % ROWS
                ox0 = (tile % tiles_w) * BLOCK_O
                ox = ox0 + o
                mrow = mb & (oy < H)
                g = tl.load(G + (plane + oy * W)[:, None] + ox[None, :], mask=mrow[:, None] & (ox < W)[None, :],
                            other=0.0)
                iy = oy + ky * DIL - PAD
                ix = ox0 - PAD + j
                mr = mrow & (iy >= 0) & (iy < H)
                v = tl.load(X + (plane + iy * W)[:, None] + ix[None, :],
                            mask=mr[:, None] & ((ix >= 0) & (ix < W))[None, :], other=0.0)
                p = tl.dot(tl.trans(g), v, p, input_precision=PRECISION)
        p = tl.where(band, p, 0.0)
        for kx in range(KS):
            acc_t = tl.where(taps == ky * KS + kx, acc_t + tl.sum(tl.where(tap == kx, p, 0.0)), acc_t)
    tl.store(PART + pid.to(tl.int64) * KS * KS + taps, acc_t, mask=taps < KS * KS)


def _precision(dtype) -> str:
    """float32: three TF32 products per dot (about float32 accuracy); 16-bit inputs multiply exactly on tensor
    cores and the setting is unused (Triton's default)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _rows_plan(B: int, H: int, W: int, halo: int):
    """``(IMGS, ROWS, BLOCK_O, BLOCK_E)`` of the tensor-core forward, or None when the halo is too wide for it.

    BLOCK_O output columns read BLOCK_E = nextpow2(BLOCK_O + halo) input columns; the dot's work per output is
    about ``2 * BLOCK_E`` per kernel row, so the narrowest tile (>= 16, the dot's minimum) that covers W with the
    least work wins. The rows and images stacked into the dot's M are autotuned for the forward; the weight
    gradient takes 8 rows per image and up to 16 images (M = 128; 64 under the interpreter)."""
    best = None
    for block_o in (16, 32, 64):
        block_e = pow2(block_o + halo)
        if block_e > 128:
            continue
        cost = cdiv(W, block_o) * block_o * block_e
        if best is None or cost < best[0]:
            best = (cost, block_o, block_e)
    if best is None:
        return None
    rows = min(8, pow2(H))
    imgs = max(1, min((64 if _INTERPRET else 128) // rows, pow2(B)))
    imgs = max(imgs, cdiv(16, rows))  # the dot needs M >= 16
    return imgs, rows, best[1], best[2]


def _correlate(x, weight, bias, dilation, method="auto"):
    """The fused forward on contiguous NCHW ``x`` with ``weight`` ``[C, 1, k, k]``.

    ``method``: ``"rows"`` (tensor cores, kernel rows as band-matrix products), ``"direct"`` (one masked tile load
    per tap on CUDA cores) or ``"auto"`` (rows whenever the halo fits its tile)."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    out = torch.empty_like(x)
    bias_arg = bias if bias is not None else weight
    plan = _rows_plan(B, H, W, 2 * pad) if method in ("auto", "rows") else None
    key = (tuple(x.shape), x.dtype, weight.dtype, None if bias is None else bias.dtype, k, dilation, plan)
    args = (x, weight, bias_arg, out, B, C, H, W, dilation, pad)
    if plan is not None:
        _, _, block_o, block_e = plan
        grid = lambda meta: (C * cdiv(W, block_o) * cdiv(H, meta["ROWS"])  # noqa: E731
                             * cdiv(B, meta["IMGS"]),)
        _run(_dw_rows_kernel, grid, key, args, dict(KS=k, HAS_BIAS=bias is not None, BLOCK_O=block_o,
                                                    BLOCK_E=block_e, PRECISION=_precision(x.dtype)))
        return out
    if method == "rows":
        raise ValueError(f"the halo {2 * pad} is too wide for the tensor-core forward (at most 112)")
    grid = lambda meta: (B * C * cdiv(H, meta["BLOCK_H"]) * cdiv(W, meta["BLOCK_W"]),)  # noqa: E731
    _run(_dw_fwd_kernel, grid, key, (x, weight, bias_arg, out, *args[5:]), dict(KS=k, HAS_BIAS=bias is not None))
    return out


def forward(x, weight, bias, dilation, method="auto"):
    """``[B, C, H, W]`` depthwise "same" conv of x (any float dtype Triton loads; accumulates in float32)."""
    bias = bias.contiguous() if bias is not None else None
    return _correlate(x.contiguous(), weight.contiguous(), bias, dilation, _method(method, weight.shape[-1]))


def _wgrad_tile(H: int, W: int, pixels: int = 0) -> tuple:
    """Tile of the weight-gradient kernels: up to ``pixels`` (default 1024; 128 interpreted), as wide as the map
    allows (16 columns interpreted, else 64)."""
    block_w = min(16 if _INTERPRET else 64, pow2(W))
    block_h = min(pow2(H), max(1, (pixels or (128 if _INTERPRET else 1024)) // block_w))
    return block_h, block_w


def backward(grad_out, x, weight, dilation, method="auto"):
    """``(d_x, d_weight, d_bias)``; d_weight and d_bias in the weight's dtype. ``method`` as for the forward."""
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    B, C, H, W = x.shape
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    method = _method(method, k)
    d_x = _correlate(grad_out, weight.flip(-1, -2).contiguous(), None, dilation, method)
    chunks = min(B, max(1, cdiv(_WGRAD_PROGRAMS, C)))
    b_per = cdiv(B, chunks)
    chunks = cdiv(B, b_per)
    part = torch.empty(chunks, C, k * k, device=x.device, dtype=torch.float32)
    plan = _rows_plan(b_per, H, W, 2 * pad) if method in ("auto", "rows") else None
    key = (tuple(x.shape), x.dtype, grad_out.dtype, k, dilation, b_per, plan)
    args = (x, grad_out, part, B, C, H, W, dilation, pad, b_per)
    if plan is not None:
        imgs, rows, block_o, block_e = plan
        _run(_dw_wgrad_rows_kernel, (chunks * C,), key, args,
             dict(KS=k, BLOCK_T=pow2(k * k), IMGS=imgs, ROWS=rows, BLOCK_O=block_o, BLOCK_E=block_e,
                  PRECISION=_precision(x.dtype), num_warps=4))
    elif k * k <= 16:
        block_h, block_w = _wgrad_tile(H, W, pixels=128 if _INTERPRET else 256)
        _run(_dw_wgrad_taps_kernel, (chunks * C,), key, args,
             dict(KS=k, BLOCK_T=pow2(k * k), BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4))
    else:
        block_h, block_w = _wgrad_tile(H, W)
        _run(_dw_wgrad_kernel, (chunks * C,), key, args,
             dict(KS=k, BLOCK_T=pow2(k * k), BLOCK_H=block_h, BLOCK_W=block_w,
                  num_warps=4 if block_h * block_w >= 512 else 2))
    d_weight = part.sum(0).view_as(weight).to(weight.dtype)
    d_bias = grad_out.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return d_x, d_weight, d_bias

"""Fused depthwise "same" convolution in Triton: forward, input gradient and weight gradient (NCHW).

Same operator as ``reference.py``. The design:

* Forward: a program owns one ``BLOCK_H x BLOCK_W`` output tile of one (image, channel) plane and walks the
  ``k x k`` taps; tap ``(ky, kx)`` adds ``w[ky, kx]`` times the input tile shifted by
  ``(ky * d - pad, kx * d - pad)`` (masked loads give the zero padding) to a float32 accumulator. The tile plus
  its halo is what the program reads from HBM; the ``k * k`` shifted loads of it are served by the L1 cache
  (Triton has no explicitly addressed shared memory; the loads stay inside one small block, which is exactly what
  L1 holds), so each input byte comes from HBM about once per program instead of once per tap. Tile shapes are
  autotuned per map size, kernel and dilation (a 7x7 map wants small tiles, a 56x56 map wide ones).
* Input gradient: the same correlation applied to the output gradient with the kernel flipped in both axes
  (``d_x[p] = sum_t w[t] * g[p - offset_t]``; for an odd kernel with "same" padding that is the forward with
  ``w[k-1-ky, k-1-kx]``), so it reuses the forward kernel.
* Weight gradient ``d_w[c, t] = sum over images and pixels of g * x shifted by offset_t``: a reduction over
  batch and pixels. A program owns one channel and a chunk of images and walks every tile of the map; per tap it
  accumulates ``g * x_shifted`` elementwise over its images, reduces the tile once, and adds it to a per-tap
  float32 vector. It writes one partial row per (image chunk, channel), and one ``sum`` over the chunks finishes.
  No atomics, so the result is deterministic, and the partial buffer (``chunks x C x k*k`` floats) does not
  depend on the tile shape. The bias gradient is ``g.sum((0, 2, 3))``.

Accumulation is float32 throughout; outputs are cast to the input's dtype.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# (BLOCK_H, BLOCK_W, num_warps); under the interpreter one small tile (autotuning there only costs time)
_TILES = [(8, 8, 1), (8, 16, 2), (16, 16, 4), (8, 32, 4), (16, 32, 4), (32, 32, 8), (8, 64, 4), (16, 64, 8)]
_CONFIGS = [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw) for bh, bw, nw in
            ([(8, 16, 1)] if _INTERPRET else _TILES)]
# weight gradient: image-chunk count aims at about this many programs in all (C x chunks)
_WGRAD_PROGRAMS = 2048


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


def _correlate(x, weight, bias, dilation):
    """The fused forward on contiguous NCHW ``x`` with ``weight`` ``[C, 1, k, k]``."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    out = torch.empty_like(x)
    grid = lambda meta: (B * C * triton.cdiv(H, meta["BLOCK_H"]) * triton.cdiv(W, meta["BLOCK_W"]),)  # noqa: E731
    _dw_fwd_kernel[grid](x, weight, bias if bias is not None else weight, out, C, H, W, dilation,
                         dilation * (k - 1) // 2, KS=k, HAS_BIAS=bias is not None)
    return out


def forward(x, weight, bias, dilation):
    """``[B, C, H, W]`` depthwise "same" conv of x (any float dtype Triton loads; accumulates in float32)."""
    bias = bias.contiguous() if bias is not None else None
    return _correlate(x.contiguous(), weight.contiguous(), bias, dilation)


def _wgrad_tile(H: int, W: int) -> tuple:
    """Tile of the weight-gradient kernel: up to 1024 pixels, as wide as the map allows (8 x 16 interpreted)."""
    block_w = min(16 if _INTERPRET else 64, triton.next_power_of_2(W))
    block_h = min(triton.next_power_of_2(H), max(1, (128 if _INTERPRET else 1024) // block_w))
    return block_h, block_w


def backward(grad_out, x, weight, dilation):
    """``(d_x, d_weight, d_bias)``; d_weight and d_bias in the weight's dtype."""
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    B, C, H, W = x.shape
    k = weight.shape[-1]
    d_x = _correlate(grad_out, weight.flip(-1, -2).contiguous(), None, dilation)
    chunks = min(B, max(1, triton.cdiv(_WGRAD_PROGRAMS, C)))
    b_per = triton.cdiv(B, chunks)
    chunks = triton.cdiv(B, b_per)
    part = torch.empty(chunks, C, k * k, device=x.device, dtype=torch.float32)
    block_h, block_w = _wgrad_tile(H, W)
    _dw_wgrad_kernel[(chunks * C,)](x, grad_out, part, B, C, H, W, dilation, dilation * (k - 1) // 2, b_per,
                                    KS=k, BLOCK_T=triton.next_power_of_2(k * k), BLOCK_H=block_h,
                                    BLOCK_W=block_w, num_warps=4 if block_h * block_w >= 512 else 2)
    d_weight = part.sum(0).view_as(weight).to(weight.dtype)
    d_bias = grad_out.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return d_x, d_weight, d_bias

"""Fused layer norm over the last axis, for channels-last feature maps with few channels.

PyTorch's CUDA layer norm gives one row to each thread block, which leaves most of an H200 idle on the
short rows (C = 64..512) of NAT-style NHWC maps: measured at 5-7x below the memory bandwidth. Here one
program normalises ``BLOCK_M`` rows at once (statistics in float32), reads any ``[B, R, C]`` strides (so
the NHWC view of an NCHW convolution output needs no copy), and writes the output directly in the dtype the
next layer consumes (bf16 under autocast), which saves the separate cast kernel. It also writes the mean and
the reciprocal standard deviation for the backward.

The backward has the same problem in PyTorch (its input-gradient and weight-gradient kernels together took
15 ms of NAT-Tiny's 117 ms training step at batch 256 on the H200). Here a fixed number of programs each walks
a contiguous range of rows ``BLOCK_M`` at a time: it writes d_x for those rows (one pass over x and the output
gradient, in their own dtypes) and accumulates its partial d_weight and d_bias in registers; a sum over the
programs' partials finishes them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizoo.kernels._backend import cdiv, pow2


@triton.jit
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, M, R, C, stride_b, stride_r, stride_c, eps,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < M
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)
    x_off = (r64 // R) * stride_b + (r64 % R) * stride_r
    x = tl.load(X + x_off[:, None] + cols[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + r64[:, None] * C + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _ln_bwd_kernel(X, DY, W, MEAN, RSTD, DX, DW, DB, M, R, C, stride_b, stride_r, stride_c, rows_per_program,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, HAS_W: tl.constexpr, PARAM_GRAD: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32) if HAS_W else tl.where(cmask, 1.0, 0.0)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < last
        mask = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        x_off = (r64 // R) * stride_b + (r64 % R) * stride_r
        x = tl.load(X + x_off[:, None] + cols[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + r64[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, 1) / C
        c2 = tl.sum(wdy, 1) / C
        dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + r64[:, None] * C + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if PARAM_GRAD:
            dw += tl.sum(dy * xhat, 0)
            db += tl.sum(dy, 0)
    if PARAM_GRAD:
        tl.store(DW + pid * C + cols, dw, mask=cmask)
        tl.store(DB + pid * C + cols, db, mask=cmask)


# elements per block in the backward: it keeps more row tensors live than the forward, and at 4096 they spill on
# sm_90 (tools/sm90_compile.py); at 2048 they fit in registers
BWD_ELEMENTS = 2048


def _blocks(C: int, elements: int = 4096):
    """(BLOCK_M, BLOCK_C, num_warps) for rows of C channels, about ``elements`` per block."""
    block_c = pow2(C)
    return max(1, min(64, elements // block_c)), block_c, 4 if block_c <= 1024 else 8


def _brc(x: torch.Tensor) -> torch.Tensor:
    """A ``[B, R, C]`` view of ``x`` (axes between the first and the last merged), copying only if strides
    do not allow a view (the NHWC permutation of a contiguous NCHW tensor does allow one)."""
    while x.dim() < 3:
        x = x.unsqueeze(0)
    try:
        return x.view(x.shape[0], -1, x.shape[-1])
    except RuntimeError:
        return x.contiguous().view(x.shape[0], -1, x.shape[-1])


def forward(x, weight, bias, eps, out_dtype):
    """Returns ``(y, mean, rstd)``: y contiguous in ``out_dtype``, mean and rstd ``x.shape[:-1] + (1,)`` fp32."""
    C = x.shape[-1]
    brc = _brc(x)
    M = brc.shape[0] * brc.shape[1]
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    mean = torch.empty(x.shape[:-1] + (1,), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if M == 0:
        return y, mean, rstd
    block_m, block_c, num_warps = _blocks(C)
    _ln_fwd_kernel[(cdiv(M, block_m),)](
        brc, weight if weight is not None else y, bias if bias is not None else y, y, mean, rstd,
        M, brc.shape[1], C, brc.stride(0), brc.stride(1), brc.stride(2), eps,
        BLOCK_M=block_m, BLOCK_C=block_c, HAS_W=weight is not None, HAS_B=bias is not None,
        num_warps=num_warps)
    return y, mean, rstd


def backward(grad, x, weight, mean, rstd, param_grad: bool):
    """Returns ``(d_x, d_weight_and_bias)``: d_x contiguous in x's dtype; the float32 ``[2, C]`` sums of
    ``grad * x_hat`` and ``grad`` over all rows when ``param_grad``, else None."""
    C = x.shape[-1]
    brc = _brc(x)
    M = brc.shape[0] * brc.shape[1]
    grad = grad.contiguous()
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    block_m, block_c, num_warps = _blocks(C, BWD_ELEMENTS)
    slots = 4 * (torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2)
    programs = max(1, min(cdiv(M, block_m), slots))
    per_program = cdiv(cdiv(M, programs), block_m) * block_m
    programs = max(1, cdiv(M, per_program))
    partial = torch.empty((2, programs, C), device=x.device, dtype=torch.float32) if param_grad else dx
    if M:
        _ln_bwd_kernel[(programs,)](
            brc, grad, weight if weight is not None else dx, mean, rstd, dx, partial[0], partial[1],
            M, brc.shape[1], C, brc.stride(0), brc.stride(1), brc.stride(2), per_program,
            BLOCK_M=block_m, BLOCK_C=block_c, HAS_W=weight is not None, PARAM_GRAD=param_grad,
            num_warps=num_warps)
    elif param_grad:
        partial.zero_()
    return dx, (partial.sum(1) if param_grad else None)

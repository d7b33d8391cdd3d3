"""Fused InLine attention in Triton: two streaming passes forward, two backward, no N x N matrix.

Same operator as ``reference.py``: ``out = Q M + mean(V)`` with ``M = (scale/N) (K - mean K)^T V`` per
(batch, head). The work is memory-bound (head dim 32: 2 d^2 FLOPs per token against 4 d bytes per tensor), so
the kernels stream each tensor once per pass in tiles of ``BLOCK_N`` tokens, read any ``[B, N, heads, dim]``
strides (views into a packed qkv need no copy) and accumulate in float32:

* ``_gram``: for a chunk of tokens, the partial ``A^T B`` ([dim, dim]) and the column sums of ``A`` and ``B``.
  Forward: (A, B) = (K, V); backward: (Q, dO). The chunks give enough programs to fill the GPU at batch 1.
* ``_finalize``: sums the chunk partials (in a fixed order: deterministic) into the per-head state
  ``M = (scale/N)(K^T V - sum(K) mean(V)^T)`` (backward: ``G = (scale/N) Q^T dO``) and the column means, one
  program per state row. Three launches per direction in all.
* ``_apply``: ``out = Q M + mean V`` per tile.
* ``_apply_bwd``: with ``G = (scale/N) Q^T dO``: ``dQ = dO M^T``, ``dK = (V - mean V) G^T`` and
  ``dV = (K - mean K) G + sum(dO) / N``, all from one read of dO, K and V.
* ``_fused_fwd`` / ``_fused_bwd`` (``CONFIG["fused"]``, on by default): one program per (batch, head) does both
  passes, one launch per direction and no partial sums, for 16-bit calls where each (batch, head) would get a
  single chunk anyway, as InLine-DeiT's many short sequences at 224 px do (there they halve the kernel time).

Products of 16-bit tiles run on tensor cores with exact float32 accumulation; products with the float32
state use TF32 for 16-bit inputs (their mantissa fits) and IEEE float32 for float32 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizoo.kernels._backend import cdiv, dot_precision, pow2

BLOCK_N = 64
# Launch settings; 0 = the default named in the comment. ``tools/bench_inline.py --tune`` sweeps them on a GPU.
CONFIG = dict(
    gram_block_n=0,  # tokens per tile of _gram (BLOCK_N)
    gram_programs=528,  # target number of _gram programs (chunks x batch*heads): about four per SM of an H200
    gram_warps=0,  # 2 up to head dim 32, else by head dim
    gram_stages=0,  # Triton's default software pipelining
    apply_block_n=0,  # tokens per program of _apply / _apply_bwd (BLOCK_N)
    # 2 up to head dim 32 for 16-bit inputs, else by head dim. 2 instead of 4 warps at head dim 32 (H200, bf16, 6
    # heads, GPU-only us, forward / forward+backward): N = 196 51.7 / 127.0 against 74.8 / 165.7 (the one-launch
    # kernels, whose backward spills 200 bytes at 2 warps), N = 3136 47.2 / 132.7 against 48.6 / 142.1, N = 65536
    # 47.1 / 141.1 against 48.7 / 148.7
    apply_warps=0,
    # one launch per direction (_fused_fwd / _fused_bwd: a program per (batch, head) walks its tokens twice) when
    # the chunked path would give every (batch, head) a single chunk anyway and the head dim is at most 64 (on an
    # H200 at N = 196, 334 x 6 heads of dim 32, bf16: forward 75 us against 121, forward+backward 165 against 301)
    fused=1,
)


def _setting(name: str, default: int) -> int:
    return CONFIG[name] or default


@triton.jit
def _gram(
    A,
    B,
    PART,
    N,
    HEADS,
    CHUNK,
    sa_b,
    sa_n,
    sa_h,
    sb_b,
    sb_n,
    sb_h,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    chunk = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = tl.num_programs(0)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    a_ptr = A + b * sa_b + h * sa_h
    b_ptr = B + b * sb_b + h * sb_h
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    sum_a = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    sum_b = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, N)
    for off in range(start, end, BLOCK_N):
        rows = off + tl.arange(0, BLOCK_N)
        mask = (rows < end)[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        a = tl.load(a_ptr + r64[:, None] * sa_n + cols[None, :], mask=mask, other=0.0)
        bb = tl.load(b_ptr + r64[:, None] * sb_n + cols[None, :], mask=mask, other=0.0)
        acc = tl.dot(tl.trans(a), bb, acc, input_precision=PREC)
        # column sums: tiles added up here, their rows summed once after the loop (a row reduction per tile costs
        # a cross-warp exchange; H200, bf16, 6 heads of 32, forward GPU-only us: N = 3136 43.7 against 47.0)
        sum_a += a.to(tl.float32)
        sum_b += bb.to(tl.float32)
    # this chunk's slot of PART [B*heads, chunks, BLOCK_D + 2, BLOCK_D]: A^T B, then the column sums
    base = PART + (bh.to(tl.int64) * n_chunks + chunk) * (BLOCK_D + 2) * BLOCK_D
    tl.store(base + cols[:, None] * BLOCK_D + cols[None, :], acc)
    tl.store(base + BLOCK_D * BLOCK_D + cols, tl.sum(sum_a, 0))
    tl.store(base + (BLOCK_D + 1) * BLOCK_D + cols, tl.sum(sum_b, 0))


@triton.jit
def _sum_row(ptr, row, n_chunks, cols, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sum over chunks of one row of PART (``ptr`` at this (batch, head)'s first chunk)."""
    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        offs = c[:, None].to(tl.int64) * ((BLOCK_D + 2) * BLOCK_D) + row * BLOCK_D + cols[None, :]
        total += tl.sum(tl.load(ptr + offs, mask=(c < n_chunks)[:, None], other=0.0), 0)
    return total


@triton.jit
def _finalize(
    PART,
    STATE,
    MEANS,
    n_chunks,
    N,
    factor,
    CENTER: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Row ``r`` of the per-(batch, head) state from the chunk partials:
    ``factor * (A^T B - sum(A) mean(B)^T)`` (``CENTER``) or ``factor * A^T B``; row 0's program also writes
    the column means of A and B."""
    bh = tl.program_id(0)
    r = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    part = PART + bh.to(tl.int64) * n_chunks * (BLOCK_D + 2) * BLOCK_D
    row = _sum_row(part, r, n_chunks, cols, BLOCK_D, BLOCK_C)
    sum_a = _sum_row(part, BLOCK_D, n_chunks, cols, BLOCK_D, BLOCK_C)
    sum_b = _sum_row(part, BLOCK_D + 1, n_chunks, cols, BLOCK_D, BLOCK_C)
    if CENTER:
        sum_a_r = tl.sum(tl.where(cols == r, sum_a, 0.0), 0)
        row = row - sum_a_r * sum_b / N
    tl.store(STATE + (bh.to(tl.int64) * BLOCK_D + r) * BLOCK_D + cols, row * factor)
    first = (cols * 0 + r) == 0
    tl.store(MEANS + bh.to(tl.int64) * 2 * BLOCK_D + cols, sum_a / N, mask=first)
    tl.store(MEANS + (bh.to(tl.int64) * 2 + 1) * BLOCK_D + cols, sum_b / N, mask=first)


@triton.jit
def _load_tile(ptr, r64, s_n, cols, mask):
    return tl.load(ptr + r64[:, None] * s_n + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _apply(
    Q,
    STATE,
    MEANS,
    OUT,
    N,
    HEADS,
    sq_b,
    sq_n,
    sq_h,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    cols = tl.arange(0, BLOCK_D)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    r64 = rows.to(tl.int64)
    sbh = bh.to(tl.int64)
    m = tl.load(STATE + sbh * BLOCK_D * BLOCK_D + cols[:, None] * BLOCK_D + cols[None, :])
    v_mean = tl.load(MEANS + (sbh * 2 + 1) * BLOCK_D + cols)
    q = _load_tile(Q + b * sq_b + h * sq_h, r64, sq_n, cols, mask)
    out = tl.dot(q, m, input_precision=PREC) + v_mean[None, :]
    o_ptr = OUT + b * N * HEADS * D + h * D
    tl.store(o_ptr + r64[:, None] * (HEADS * D) + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _apply_bwd(
    DO,
    K,
    V,
    STATE,
    G,
    MEANS,
    BWD_MEANS,
    DQ,
    DK,
    DV,
    N,
    HEADS,
    sk_b,
    sk_n,
    sk_h,
    sv_b,
    sv_n,
    sv_h,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    cols = tl.arange(0, BLOCK_D)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    r64 = rows.to(tl.int64)
    sbh = bh.to(tl.int64)
    square = sbh * BLOCK_D * BLOCK_D
    m_t = tl.load(STATE + square + cols[None, :] * BLOCK_D + cols[:, None])  # M^T
    g = tl.load(G + square + cols[:, None] * BLOCK_D + cols[None, :])
    g_t = tl.load(G + square + cols[None, :] * BLOCK_D + cols[:, None])
    k_mean = tl.load(MEANS + sbh * 2 * BLOCK_D + cols)
    v_mean = tl.load(MEANS + (sbh * 2 + 1) * BLOCK_D + cols)
    do_mean = tl.load(BWD_MEANS + (sbh * 2 + 1) * BLOCK_D + cols)
    dense = b * N * HEADS * D + h * D
    do = _load_tile(DO + dense, r64, HEADS * D, cols, mask)
    k = _load_tile(K + b * sk_b + h * sk_h, r64, sk_n, cols, mask) - k_mean[None, :]
    v = _load_tile(V + b * sv_b + h * sv_h, r64, sv_n, cols, mask) - v_mean[None, :]
    dq = tl.dot(do, m_t, input_precision=PREC)
    dk = tl.dot(v, g_t, input_precision=PREC)
    dv = tl.dot(k, g, input_precision=PREC) + do_mean[None, :]
    offs = dense + r64[:, None] * (HEADS * D) + cols[None, :]
    tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _fused_fwd(Q, K, V, OUT, STATE, MEANS, N, HEADS, sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, factor,
               D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """One (batch, head): the state from all its keys and values, then ``out = Q M + mean V``; also stores M and
    the means for the backward (the layouts of ``_finalize``)."""
    bh = tl.program_id(0)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    k_ptr, v_ptr = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    sum_k = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_v = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        r64 = (off + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask = (r64 < N)[:, None] & cmask[None, :]
        k = tl.load(k_ptr + r64[:, None] * sk_n + cols[None, :], mask=mask, other=0.0)
        v = tl.load(v_ptr + r64[:, None] * sv_n + cols[None, :], mask=mask, other=0.0)
        acc = tl.dot(tl.trans(k), v, acc, input_precision=PREC)
        sum_k += tl.sum(k.to(tl.float32), 0)
        sum_v += tl.sum(v.to(tl.float32), 0)
    k_mean, v_mean = sum_k / N, sum_v / N
    m = (acc - sum_k[:, None] * v_mean[None, :]) * factor
    sbh = bh.to(tl.int64)
    tl.store(STATE + sbh * BLOCK_D * BLOCK_D + cols[:, None] * BLOCK_D + cols[None, :], m)
    tl.store(MEANS + sbh * 2 * BLOCK_D + cols, k_mean)
    tl.store(MEANS + (sbh * 2 + 1) * BLOCK_D + cols, v_mean)
    q_ptr, o_ptr = Q + b * sq_b + h * sq_h, OUT + b * N * HEADS * D + h * D
    for off in range(0, N, BLOCK_N):
        r64 = (off + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask = (r64 < N)[:, None] & cmask[None, :]
        out = tl.dot(_load_tile(q_ptr, r64, sq_n, cols, mask), m, input_precision=PREC) + v_mean[None, :]
        tl.store(o_ptr + r64[:, None] * (HEADS * D) + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _fused_bwd(DO, Q, K, V, STATE, MEANS, DQ, DK, DV, N, HEADS, sq_b, sq_n, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n,
               sv_h, factor, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """One (batch, head): ``G = factor Q^T dO`` from all its tokens, then ``_apply_bwd``'s dQ, dK, dV."""
    bh = tl.program_id(0)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    dense = b * N * HEADS * D + h * D
    q_ptr = Q + b * sq_b + h * sq_h
    g = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    sum_do = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        r64 = (off + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask = (r64 < N)[:, None] & cmask[None, :]
        q = tl.load(q_ptr + r64[:, None] * sq_n + cols[None, :], mask=mask, other=0.0)
        do = tl.load(DO + dense + r64[:, None] * (HEADS * D) + cols[None, :], mask=mask, other=0.0)
        g = tl.dot(tl.trans(q), do, g, input_precision=PREC)
        sum_do += tl.sum(do.to(tl.float32), 0)
    g = g * factor
    g_t = tl.trans(g)
    do_mean = sum_do / N
    sbh = bh.to(tl.int64)
    m_t = tl.load(STATE + sbh * BLOCK_D * BLOCK_D + cols[None, :] * BLOCK_D + cols[:, None])  # M^T
    k_mean = tl.load(MEANS + sbh * 2 * BLOCK_D + cols)
    v_mean = tl.load(MEANS + (sbh * 2 + 1) * BLOCK_D + cols)
    k_ptr, v_ptr = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
    for off in range(0, N, BLOCK_N):
        r64 = (off + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask = (r64 < N)[:, None] & cmask[None, :]
        do = _load_tile(DO + dense, r64, HEADS * D, cols, mask)
        k = _load_tile(k_ptr, r64, sk_n, cols, mask) - k_mean[None, :]
        v = _load_tile(v_ptr, r64, sv_n, cols, mask) - v_mean[None, :]
        offs = dense + r64[:, None] * (HEADS * D) + cols[None, :]
        tl.store(DQ + offs, tl.dot(do, m_t, input_precision=PREC).to(DQ.dtype.element_ty), mask=mask)
        tl.store(DK + offs, tl.dot(v, g_t, input_precision=PREC).to(DK.dtype.element_ty), mask=mask)
        dv = tl.dot(k, g, input_precision=PREC) + do_mean[None, :]
        tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)


def _block_d(dim: int) -> int:
    return max(16, pow2(dim))


def _warps(name: str, block_d: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """``CONFIG[name]``, or by default 2 warps up to head dim 32 (16-bit inputs; float32 spills there), 4 up to 64
    and 8 beyond."""
    return _setting(name, 2 if block_d <= 32 and (name == "gram_warps" or dtype != torch.float32)
                    else 4 if block_d <= 64 else 8)


def _gram_state(a: torch.Tensor, b: torch.Tensor, factor: float, center: bool):
    """Per (batch, head) float32 state ``factor * (A - mean A)^T B`` (``center``) or ``factor * A^T B``,
    ``[B*heads, BD, BD]``, and the column means of A and B, ``[B*heads, 2, BD]`` (zero-padded to
    ``BD = _block_d(dim)``). Two launches: chunked partial sums, then one program per state row."""
    B, N, heads, dim = a.shape
    bd = _block_d(dim)
    bh = B * heads
    # enough programs to fill a large GPU even at batch 1, chunks of whole tiles
    block_n = _setting("gram_block_n", BLOCK_N)
    chunks = max(1, min(cdiv(N, block_n), cdiv(CONFIG["gram_programs"], bh)))
    chunk = cdiv(cdiv(N, chunks), block_n) * block_n
    chunks = cdiv(N, chunk)
    stages = {"num_stages": CONFIG["gram_stages"]} if CONFIG["gram_stages"] else {}
    part = torch.empty(bh, chunks, bd + 2, bd, device=a.device, dtype=torch.float32)
    _gram[(chunks, bh)](
        a,
        b,
        part,
        N,
        heads,
        chunk,
        a.stride(0),
        a.stride(1),
        a.stride(2),
        b.stride(0),
        b.stride(1),
        b.stride(2),
        D=dim,
        BLOCK_D=bd,
        BLOCK_N=block_n,
        PREC=dot_precision(a.dtype),
        num_warps=_warps("gram_warps", bd),
        **stages,
    )
    state = torch.empty(bh, bd, bd, device=a.device, dtype=torch.float32)
    means = torch.empty(bh, 2, bd, device=a.device, dtype=torch.float32)
    block_c = min(64, pow2(chunks))
    _finalize[(bh, bd)](
        part,
        state,
        means,
        chunks,
        N,
        factor,
        CENTER=center,
        BLOCK_D=bd,
        BLOCK_C=block_c,
        num_warps=1 if block_c * bd <= 1024 else 4,
    )
    return state, means


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _fused(N: int, bh: int, bd: int, dtype: torch.dtype) -> bool:
    """Whether a call takes the one-launch kernels (``CONFIG["fused"]``): the chunked gram would give each
    (batch, head) one chunk, and the states fit one program's registers (16-bit inputs, head dim at most 64; in
    float32 the backward spills on sm_90)."""
    if not CONFIG["fused"] or bd > 64 or dtype == torch.float32:
        return False
    return min(cdiv(N, _setting("gram_block_n", BLOCK_N)), cdiv(CONFIG["gram_programs"], bh)) == 1


def _strides(*tensors) -> tuple:
    return tuple(stride for t in tensors for stride in t.stride()[:3])


def forward(q, k, v, scale: float):
    """Returns ``out`` (contiguous, q's dtype), the state ``M`` ``[B*heads, BD, BD]`` and the means of K and V
    ``[B*heads, 2, BD]`` (float32, zero-padded to ``BD``), which the backward reuses."""
    q, k, v = (_last_contiguous(t) for t in (q, k, v))
    B, N, heads, dim = q.shape
    bd = _block_d(dim)
    if _fused(N, B * heads, bd, q.dtype):
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        state = torch.empty(B * heads, bd, bd, device=q.device, dtype=torch.float32)
        means = torch.empty(B * heads, 2, bd, device=q.device, dtype=torch.float32)
        _fused_fwd[(B * heads,)](q, k, v, out, state, means, N, heads, *_strides(q, k, v), scale / N, D=dim,
                                 BLOCK_D=bd, BLOCK_N=_setting("apply_block_n", BLOCK_N), PREC=dot_precision(q.dtype),
                                 num_warps=_warps("apply_warps", bd, q.dtype))
        return out, state, means
    state, means = _gram_state(k, v, scale / N, center=True)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    block_n = _setting("apply_block_n", BLOCK_N)
    _apply[(cdiv(N, block_n), B * heads)](
        q,
        state,
        means,
        out,
        N,
        heads,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        D=dim,
        BLOCK_D=bd,
        BLOCK_N=block_n,
        PREC=dot_precision(q.dtype),
        num_warps=_warps("apply_warps", bd, q.dtype),
    )
    return out, state, means


def backward(grad_out, q, k, v, state, means, scale: float):
    """Returns ``dq, dk, dv`` (contiguous, in the inputs' dtype)."""
    q, k, v = (_last_contiguous(t) for t in (q, k, v))
    grad_out = grad_out.contiguous()
    B, N, heads, dim = q.shape
    bd = _block_d(dim)
    dq, dk, dv = (torch.empty(q.shape, device=q.device, dtype=t.dtype) for t in (q, k, v))
    if _fused(N, B * heads, bd, q.dtype):
        _fused_bwd[(B * heads,)](grad_out, q, k, v, state, means, dq, dk, dv, N, heads, *_strides(q, k, v),
                                 scale / N, D=dim, BLOCK_D=bd, BLOCK_N=_setting("apply_block_n", BLOCK_N),
                                 PREC=dot_precision(q.dtype), num_warps=_warps("apply_warps", bd, q.dtype))
        return dq, dk, dv
    g, bwd_means = _gram_state(q, grad_out, scale / N, center=False)
    block_n = _setting("apply_block_n", BLOCK_N)
    _apply_bwd[(cdiv(N, block_n), B * heads)](
        grad_out,
        k,
        v,
        state,
        g,
        means,
        bwd_means,
        dq,
        dk,
        dv,
        N,
        heads,
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        D=dim,
        BLOCK_D=bd,
        BLOCK_N=block_n,
        PREC=dot_precision(q.dtype),
        num_warps=_warps("apply_warps", bd, q.dtype),
    )
    return dq, dk, dv

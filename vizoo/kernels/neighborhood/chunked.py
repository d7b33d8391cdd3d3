"""Memory-lean neighborhood attention in plain PyTorch: the CPU path of the models, and TorchScript's.

Same math and the same candidate-key tables as ``reference.py`` (the specification, which this file is tested
against in values and gradients), computed differently. The reference gathers every query's
``prod(kernel_size)`` keys and values at once and autograd keeps both gathers, so a training step holds
``2 * N * K * heads * dim`` extra numbers per layer (``K = prod(kernel_size)``): 32x the layer's own
activations for NAT's 7x7 windows, gigabytes for DiNAT-L at 384. Here the queries are processed in chunks
whose gathered keys and values stay under ``chunk_elements`` numbers each (4M by default, 16 MiB in fp32),
and the backward (``ChunkedNA``) keeps only q, k, v, the output and the log-sum-exp, then re-gathers each chunk and
scatters the key/value gradients back with ``index_add_``, in the manner of FlashAttention's recomputation.

Under TorchScript, ``torch.compile``/``torch.export`` and FX the forward runs without the custom autograd
function (plain differentiable ops, chunk by chunk), so it can be scripted and traced.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vizoo.kernels.neighborhood.reference import _cached_indices, neighborhood_indices
from vizoo.utils import tracing


def _scores(q: Tensor, kg: Tensor, bias: Optional[Tensor], rel: Tensor, valid: Tensor, masked: bool) -> Tensor:
    """Scaled scores ``[B, M, heads, K]`` of the query chunk ``q [B, M, heads, dim]`` (already scaled) against
    its gathered keys ``kg [B, M, K, heads, dim]``, with the bias and the causal mask of the chunk."""
    s = torch.einsum("bmhd,bmkhd->bmhk", q, kg)
    if bias is not None:
        s = s + bias[:, rel].permute(1, 0, 2)
    if masked:
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
    return s


def _forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key: Tensor, valid: Tensor, rel: Tensor,
             scale: float, masked: bool, chunk: int) -> Tuple[Tensor, Tensor]:
    """Output ``[B, N, heads, dim]`` and log-sum-exp ``[B, N, heads]`` of flattened ``[B, N, heads, dim]``
    inputs, ``chunk`` queries at a time (differentiable; only the custom function's forward runs it without
    gradients)."""
    outs: List[Tensor] = []
    lses: List[Tensor] = []
    n = q.shape[1]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = key[start:stop]
        s = _scores(q[:, start:stop] * scale, k[:, idx], bias, rel[start:stop], valid[start:stop], masked)
        lse = s.logsumexp(-1)
        p = torch.exp(s - lse[..., None])
        outs.append(torch.einsum("bmhk,bmkhd->bmhd", p, v[:, idx]))
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, 1)


class ChunkedNA(torch.autograd.Function):
    """Chunked forward; the backward re-gathers each chunk's keys and values instead of keeping them."""

    @staticmethod
    def forward(ctx, q, k, v, bias, key, valid, rel, scale, masked, chunk):
        out, lse = _forward(q, k, v, bias, key, valid, rel, scale, masked, chunk)
        ctx.save_for_backward(q, k, v, bias, key, valid, rel, out, lse)
        ctx.options = (scale, masked, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, bias, key, valid, rel, out, lse = ctx.saved_tensors
        scale, masked, chunk = ctx.options
        B, n, heads, dim = q.shape
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dbias = None if bias is None else torch.zeros_like(bias)
        delta = (dout * out).sum(-1)  # [B, N, heads]: the softmax backward's row term
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            idx = key[start:stop]
            flat = idx.reshape(-1)
            kg, vg = k[:, idx], v[:, idx]
            qc, do = q[:, start:stop], dout[:, start:stop]
            s = _scores(qc * scale, kg, bias, rel[start:stop], valid[start:stop], masked)
            p = torch.exp(s - lse[:, start:stop, :, None])  # [B, M, heads, K]
            dv.index_add_(1, flat, torch.einsum("bmhk,bmhd->bmkhd", p, do).flatten(1, 2))
            ds = p * (torch.einsum("bmhd,bmkhd->bmhk", do, vg) - delta[:, start:stop, :, None])
            dq[:, start:stop] = torch.einsum("bmhk,bmkhd->bmhd", ds, kg) * scale
            dk.index_add_(1, flat, torch.einsum("bmhk,bmhd->bmkhd", ds, qc * scale).flatten(1, 2))
            if dbias is not None:
                dbias.index_add_(1, rel[start:stop].reshape(-1), ds.sum(0).permute(1, 0, 2).flatten(1))
        return dq, dk, dv, dbias, None, None, None, None, None, None


def chunk_queries(batch: int, k: int, heads: int, dim: int, budget: int) -> int:
    """Queries per chunk so that a chunk's gathered keys ``[batch, chunk, k, heads, dim]`` hold <= budget."""
    return max(1, budget // max(1, batch * k * heads * dim))


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: List[int],
    dilation: List[int],
    stride: List[int],
    is_causal: List[bool],
    rpb: Optional[Tensor] = None,
    scale: Optional[float] = None,
    chunk_elements: int = 1 << 22,
) -> Tensor:
    """N-D neighborhood attention on heads-last tensors ``[B, *spatial, heads, dim]``, chunked.

    Same arguments, semantics and dtypes as ``reference.neighborhood_attention`` (arguments assumed valid; the
    public ``na1d``/``na2d`` check them); TorchScript-compatible. ``chunk_elements`` bounds the numbers in one
    chunk's gathered keys (and as many in its values).
    """
    B, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    spatial: List[int] = q.shape[1:-2]
    scale_ = dim**-0.5 if scale is None else scale
    compute = q.dtype if q.dtype == torch.float32 or q.dtype == torch.float64 else torch.float32
    if torch.jit.is_scripting():
        key, valid, rel = neighborhood_indices(spatial, kernel_size, dilation, stride, is_causal, q.device)
    elif tracing():  # never cache tensors made under a tracer (export's fake tensors, for one)
        key, valid, rel = neighborhood_indices(list(spatial), kernel_size, dilation, stride, is_causal, q.device)
    else:
        key, valid, rel = _cached_indices(tuple(spatial), tuple(kernel_size), tuple(dilation), tuple(stride),
                                          tuple(is_causal), q.device)
    n, kk = key.shape[0], key.shape[1]
    qf = q.reshape(B, n, heads, dim).to(compute)
    kf = k.reshape(B, n, heads, dim).to(compute)
    vf = v.reshape(B, n, heads, dim).to(compute)
    bias = None if rpb is None else rpb.reshape(heads, -1).to(compute)
    masked = any(is_causal)
    chunk = chunk_queries(B, kk, heads, dim, chunk_elements)
    if torch.jit.is_scripting():
        out, _ = _forward(qf, kf, vf, bias, key, valid, rel, scale_, masked, chunk)
    elif tracing():  # compilers and FX see plain ops
        out, _ = _forward(qf, kf, vf, bias, key, valid, rel, scale_, masked, chunk)
    else:
        out = ChunkedNA.apply(qf, kf, vf, bias, key, valid, rel, float(scale_), masked, chunk)
    return out.to(q.dtype).reshape(q.shape)


__all__ = ["neighborhood_attention", "ChunkedNA", "chunk_queries"]

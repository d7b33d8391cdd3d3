"""Injective linear attention (InLine), the plain PyTorch specification.

Han, Pu, Xia, Song, Huang. "Bridging the Divide: Reconsidering Softmax and Linear Attention." NeurIPS 2024,
arXiv 2412.06590. Official code: github.com/LeapLabTHU/InLine (every released model uses the identity kernel).

For one head with ``N`` tokens, the weight of key ``j`` for query ``i`` is

    w_ij = (scale / N) * (q_i . k_j - q_i . mean_s k_s) + 1 / N

so every row sums to exactly 1 (no division) and weights may be negative. ``scale / N`` is the factor the
official code really applies (it multiplies K and V by ``sqrt(scale / N)`` before ``K^T V``, with
``scale = dim ** -0.5``; the paper's equation folds it into the kernel function). The output is computed
without forming the ``N x N`` matrix, in O(N d^2):

    out_i = q_i^T M + mean_j v_j,   M = (scale / N) * (K - mean K)^T V    ([dim, dim] per batch and head)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def inline_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """InLine attention on ``[B, N, heads, dim]`` tensors (float32 accumulation for 16-bit inputs)."""
    dtype = q.dtype
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v = (t.transpose(1, 2).to(acc) for t in (q, k, v))  # [B, heads, N, dim]
    n = q.shape[-2]
    state = (k - k.mean(-2, keepdim=True)).transpose(-1, -2) @ v * (scale / n)
    out = q @ state + v.mean(-2, keepdim=True)
    return out.transpose(1, 2).to(dtype)


def local_residual(taps: Tensor, v: Tensor) -> Tensor:
    """InLine's local residual: a per-sample depthwise 3x3 convolution (zero padding, no bias) of ``v``
    ``[B, H, W, C]`` with ``taps`` ``[B, 9C]`` or ``[B, 9C, 1]`` (entry ``9c + 3 ky + kx`` is channel c's tap at
    row ky, column kx). Returns ``[B, H, W, C]`` in v's dtype. The batch folds into the channels, so one grouped
    convolution applies every sample's own kernels."""
    B, H, W, C = v.shape
    kernels = taps.reshape(B * C, 1, 3, 3).to(v.dtype)
    out = F.conv2d(v.permute(0, 3, 1, 2).reshape(1, B * C, H, W), kernels, None, padding=1, groups=B * C)
    return out.reshape(B, C, H, W).permute(0, 2, 3, 1)


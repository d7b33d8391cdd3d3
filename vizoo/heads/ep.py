"""EP, efficient probing: multi-query cross-attention without query/key/output projections.

Psomas et al., "Attention, Please! Revisiting Attentive Probing Through the Lens of Efficiency", ICLR 2026
(arXiv 2506.10178); official code ``poolings/ep.py`` of github.com/billpsomas/efficient-probing.

With tokens X [N, D], M learned queries U [M, D] and a value projection W_V [D', D] (D' = D / d_out, no bias)
whose output channels are split into M contiguous slices of D'/M channels, query j produces

    a_j = softmax_n( U_j . x_n / sqrt(D) )            (keys are the raw tokens: no W_K, one head)
    y_j = W_V^(j) (X^T a_j)                           (the j-th D'/M-channel slice)
    y   = concat_j y_j  in R^{D'}                     (concatenated, never averaged)

followed by BatchNorm1d(D', affine=False, eps=1e-6) and Linear(D', C).

Faithful: parameters (U ~ N(0, 0.02^2), W_V without bias; D*D' + M*D + D'*C + C in all, 1,383,400 for
D=768, M=32, C=1000), the 1/sqrt(D) scale, the channel split, the outputs. ``use_prefix=True`` is the
official ``ep_all``: the prefix tokens join the keys and values.

Differs: the official code projects every token first (V = X W_V, N*D*D' multiply-adds) and then pools.
Pooling is linear, so vizoo pools first and projects each query's pooled vector with its own slice of W_V:
M*N*D + D*D' multiply-adds instead of N*D*D' (about 11x fewer for ViT-B, N=196, M=32) and an M x D
activation instead of N x D'. The outputs agree to float rounding (tests/heads check both orders).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head


@register_head("ep")
class EfficientProbe(ProbeHead):
    """EP_M: M full-width learned queries on the raw tokens, a bias-free value projection, slices concatenated.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_queries: M, the number of queries (paper default 32; sweeps 8..128). ``D / d_out`` must be
            divisible by M.
        d_out: width reduction of the value projection, D' = D / d_out (default 1).
        use_prefix: also attend to and pool the prefix tokens (official ``ep_all``); they are then required.
    """

    def __init__(self, in_dim: int, num_classes: int, num_queries: int = 32, d_out: int = 1,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_queries", num_queries)
        check_positive_int("d_out", d_out)
        check_divisible("in_dim", in_dim, d_out, "d_out")
        width = in_dim // d_out
        check_divisible("in_dim // d_out", width, num_queries, "num_queries")
        self.num_queries = num_queries
        self.d_out = d_out
        self._set_use_prefix(use_prefix)
        self.scale = 1.0 / math.sqrt(in_dim)
        self.value = nn.Linear(in_dim, width, bias=False)
        self.queries = nn.Parameter(torch.randn(num_queries, in_dim) * 0.02)
        self._init_classifier(width)

    def attention(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Attention maps ``[B, M, (P +) N]`` of the M queries (rows sum to one), for inspection."""
        tokens, prefix, _ = self.check_inputs(tokens, prefix, None)
        if self.use_prefix:
            tokens = torch.cat([prefix, tokens], dim=1)
        return self._attention(tokens)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("md,bnd->bmn", self.queries.to(x.dtype), x) * self.scale
        return logits.softmax(dim=-1)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        x = tokens
        attn = self._attention(x)                      # [B, M, N]
        pooled = torch.bmm(attn, x)                    # [B, M, D]   pool first ...
        w = self.value.weight.view(self.num_queries, self.width // self.num_queries, self.in_dim)
        y = torch.einsum("bmd,mkd->bmk", pooled, w)    # ... then query j's slice of W_V
        return y.flatten(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, m, d = num_tokens, self.num_queries, self.in_dim
        return 2 * m * n * d + d * self.width

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", num_queries={self.num_queries}, d_out={self.d_out}, "
                                       f"use_prefix={self.use_prefix}")

"""MHCA: the default multi-head cross-attention probe (AIM's attention-pooling classifier).

El-Nouby et al., "Scalable Pre-training of Large Autoregressive Image Models" (AIM), ICML 2024; the
efficient-probing code uses it as ``--cls_features aim`` (``poolings/aim.py``,
``AttentionPoolingClassifier``) and the EP paper calls it the default MHCA.

    x      = BN(tokens)                       non-affine BatchNorm over the token channels, eps 1e-6
    k, v   = W_K x, W_V x                     D x D each, no bias; no W_Q, no W_O
    q      = one learned query [D] ~ N(0, 0.02^2), split into h heads of D/h channels
    head j : softmax_n(q^(j) . k_n^(j) / sqrt(D/h)) weighted sum of v^(j);  heads concatenated

then BatchNorm1d(D, affine=False, eps=1e-6) and Linear(D, C). Parameters 2D^2 + D (+ D*C + C), independent
of h: 1,949,416 for D=768, C=1000.

Faithful: all of the above; ``num_queries > 1`` averages the queries' outputs like the official class.
Default ``num_heads=16``: the official ``--num_heads`` flag default that the published runs used (the class
default and the paper's AIM_12 use 12).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head


@register_head("mhca")
class MultiHeadCrossAttentionProbe(ProbeHead):
    """AIM-style MHCA probe: BN on tokens, learned query split into heads, W_K and W_V.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: h, number of heads (default 16); must divide D.
        num_queries: learned queries whose outputs are averaged (default 1).
        token_norm: apply the non-affine BatchNorm to the tokens before W_K/W_V (default True, as AIM).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 16, num_queries: int = 1,
                 token_norm: bool = True) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_queries", num_queries)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.head_dim = in_dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.key = nn.Linear(in_dim, in_dim, bias=False)
        self.value = nn.Linear(in_dim, in_dim, bias=False)
        self.query = nn.Parameter(torch.randn(num_queries, in_dim) * 0.02)
        self.token_bn = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if token_norm else nn.Identity()
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        b, n, d = tokens.shape
        h, dh, m = self.num_heads, self.head_dim, self.num_queries
        x = self.token_bn(tokens.transpose(1, 2)).transpose(1, 2)
        k = self.key(x).view(b, n, h, dh).transpose(1, 2)            # [B, h, N, dh]
        v = self.value(x).view(b, n, h, dh).transpose(1, 2)
        q = self.query.to(x.dtype).view(m, h, dh).transpose(0, 1)     # [h, M, dh]
        attn = (torch.matmul(q, k.transpose(-2, -1)) * self.scale).softmax(dim=-1)   # [B, h, M, N]
        out = torch.matmul(attn, v)                                   # [B, h, M, dh]
        return out.transpose(1, 2).reshape(b, m, d).mean(dim=1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d, m = num_tokens, self.in_dim, self.num_queries
        return 2 * n * d * d + 2 * m * n * d

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_heads={self.num_heads}, num_queries={self.num_queries}"

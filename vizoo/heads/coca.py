"""CoCa attentional pooler: a learned query, multi-query cross-attention (one shared key/value head).

Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", TMLR 2022; the efficient-probing
code uses lucidrains' ``CrossAttention`` (``poolings/coca_pytorch.py``: ``dim_head=64``, 8 heads,
``num_img_queries=196``, no biases, no feed-forward) and returns the output of query 0.

    q = W_Q LN(u)          LayerNorm with a weight and no bias (eps 1e-5); u ~ N(0, 1); W_Q: D -> 8 x 64
    k, v = W_KV x          D -> 64 + 64, shared by the 8 heads (multi-query attention); tokens not normalised
    out = W_O concat_h( softmax_n(q_h . k_n / 8) v )        W_O: 512 -> D

Faithful: layers, defaults, initialisation and the output.
Differs: the official module allocates 196 queries, attends with all of them and returns only the first; the
other 195 never reach the output and get zero gradient. vizoo keeps one query (vizoo = official - 195 D
parameters: 1,655,272 instead of 1,805,032 at D=768) and computes one query's attention (~21M instead of
~213M multiply-adds at D=768, N=196).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_positive_int, register_head


@register_head("coca")
class CoCaProbe(ProbeHead):
    """CoCa attentional pooling with one learned query.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: query heads (default 8).
        head_dim: width of each head and of the shared key/value head (default 64).
        use_prefix: prefix tokens are attended to with the patch tokens (official ``coca_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 8, head_dim: int = 64,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_positive_int("head_dim", head_dim)
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.norm = nn.LayerNorm(in_dim, bias=False)
        self.query = nn.Parameter(torch.randn(in_dim))
        self.to_q = nn.Linear(in_dim, inner, bias=False)
        self.to_kv = nn.Linear(in_dim, 2 * head_dim, bias=False)
        self.to_out = nn.Linear(inner, in_dim, bias=False)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        q = self.to_q(self.norm(self.query.to(tokens.dtype))).view(self.num_heads, self.head_dim)
        k, v = self.to_kv(tokens).chunk(2, dim=-1)                               # [B, N, dh] each
        attn = (torch.einsum("hd,bnd->bhn", q, k) / math.sqrt(self.head_dim)).softmax(dim=-1)
        out = torch.bmm(attn, v)                                                 # [B, h, dh]
        return self.to_out(out.flatten(1))

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d, h, dh = num_tokens, self.in_dim, self.num_heads, self.head_dim
        return 2 * h * dh * d + 2 * n * dh * d + 2 * h * n * dh

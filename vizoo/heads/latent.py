"""Latent-query attentive poolers with an MLP: SigLIP's MAP head and V-JEPA's attentive pooler.

* ``siglip``: Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023, the multihead attention
  pooling (MAP) head; the efficient-probing code uses timm's ``AttentionPoolLatent(in_features=D)``
  (8 heads, qkv bias, mlp_ratio 4, ``norm_layer=None``; latent trunc-normal(tf) std D^-0.5, PyTorch
  defaults elsewhere):  y = proj(MHA(W_Q u, W_K x, W_V x));  out = y + MLP(y).
* ``vjepa``: Bardes et al., "Revisiting Feature Prediction for Learning Visual Representations from Video"
  (V-JEPA), 2024, ``AttentivePooler`` with one cross-attention block (``poolings/jepa``; heads from the
  shared ``--num_heads`` flag, default 16; qkv bias; mlp_ratio 4; LayerNorm eps 1e-5; query and Linear weights
  trunc-normal std 0.02, zero biases, proj/fc2 weights divided by sqrt(2)):
  q = u + proj(MHA(W_Q u, W_K LN1(x), W_V LN1(x)));  out = q + MLP(LN2(q)).

Faithful: layers, defaults, initialisation and outputs of both (up to a constant shift that the head's
BatchNorm removes).
Differs: two biases whose gradient is always zero are left out of both (vizoo = official - 2D parameters:
7,853,032 for siglip and 7,856,104 for vjepa at D=768): the key bias shifts all logits of a query by the
same amount (the softmax cancels it), and the MLP's output bias shifts the pooled vector by a constant
(the head's train-mode BatchNorm removes it). V-JEPA's ``depth > 1`` (extra self-attention blocks), unused
by the probing code, is not offered.
"""
from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_, trunc_normal_tf_
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import FeedForward, attention_macs, multihead_attention


class _LatentQueryProbe(ProbeHead):
    """One learned query, cross-attention (q/v bias, no k bias) + output projection, then a residual MLP."""

    def __init__(self, in_dim: int, num_classes: int, num_heads: int, mlp_ratio: float, use_prefix: bool,
                 norms: bool) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"{self.head_name}: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(in_dim))
        self.norm1 = nn.LayerNorm(in_dim) if norms else nn.Identity()
        self.q = nn.Linear(in_dim, in_dim)
        self.k = nn.Linear(in_dim, in_dim, bias=False)
        self.v = nn.Linear(in_dim, in_dim)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim) if norms else nn.Identity()
        self.mlp = FeedForward(in_dim, int(in_dim * mlp_ratio), out_bias=False)

    query_residual = False

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        x = self.norm1(tokens)
        u = self.query.to(x.dtype)
        y = self.proj(multihead_attention(self.q(u)[None], self.k(x), self.v(x), self.num_heads)).squeeze(1)
        if self.query_residual:
            y = u + y
        return y + self.mlp(self.norm2(y))

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens, self.in_dim
        return 2 * d * d + 2 * n * d * d + attention_macs(1, n, d, d) + self.mlp.macs()


@register_head("siglip")
class SigLIPMAPProbe(_LatentQueryProbe):
    """SigLIP MAP head (timm ``AttentionPoolLatent``): no norms, no query residual.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 8); must divide D.
        mlp_ratio: MLP hidden width / D (default 4).
        use_prefix: prefix tokens are attended to with the patch tokens (official ``siglip_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 8, mlp_ratio: float = 4.0,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes, num_heads, mlp_ratio, use_prefix, norms=False)
        trunc_normal_tf_(self.query, std=in_dim ** -0.5)
        self._init_classifier(in_dim)


@register_head("vjepa")
class VJEPAProbe(_LatentQueryProbe):
    """V-JEPA attentive pooler (one cross-attention block with query residual and pre-norms).

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 16, the official ``--num_heads`` default); must divide D.
        mlp_ratio: MLP hidden width / D (default 4).
        use_prefix: prefix tokens are attended to with the patch tokens (official ``jepa_all``).
    """

    query_residual = True

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 16, mlp_ratio: float = 4.0,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes, num_heads, mlp_ratio, use_prefix, norms=True)
        trunc_normal_(self.query, std=0.02)
        for lin in (self.q, self.k, self.v, self.proj, self.mlp.fc1, self.mlp.fc2):
            trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        with torch.no_grad():
            self.proj.weight.div_(math.sqrt(2.0))
            self.mlp.fc2.weight.div_(math.sqrt(2.0))
        self._init_classifier(in_dim)

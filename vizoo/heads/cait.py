"""CaiT class-attention pooling: a learned class token attends to [itself; tokens], with LayerScale and an MLP.

Touvron et al., "Going deeper with Image Transformers" (CaiT), ICCV 2021; the efficient-probing code's
``CAPooling`` (``poolings/other_pool.py``: one class-attention block, 4 heads, qkv bias, LayerNorm eps 1e-6
inside the block, LayerScale init 1e-5, mlp_ratio 4, final LayerNorm eps 1e-5; class token trunc-normal
std 0.02, PyTorch defaults elsewhere).

    u = LN1([c; x]);  c = c + g1 * proj(MHA(W_Q u_0, W_K u, W_V u));  c = c + g2 * MLP(LN2(c));  out = LN(c)

Faithful: layers, defaults, initialisation and outputs (up to a constant shift that the head's BatchNorm
removes).
Differs: two biases whose gradient is always zero are left out (vizoo = official - 2D parameters: 7,859,176
at D=768): the key bias shifts all logits by the same amount (the softmax cancels it), and the final
LayerNorm's bias shifts the pooled vector by a constant (the head's train-mode BatchNorm removes it).
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import FeedForward, attention_macs, multihead_attention


@register_head("cait")
class CaiTProbe(ProbeHead):
    """One CaiT class-attention block.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 4); must divide D.
        mlp_ratio: MLP hidden width / D (default 4).
        init_scale: LayerScale initial value (default 1e-5).
        use_prefix: the backbone's prefix tokens join the keys and values (official ``cait_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 4, mlp_ratio: float = 4.0,
                 init_scale: float = 1e-5, use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"cait: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(in_dim, eps=1e-6)
        self.q = nn.Linear(in_dim, in_dim)
        self.k = nn.Linear(in_dim, in_dim, bias=False)
        self.v = nn.Linear(in_dim, in_dim)
        self.proj = nn.Linear(in_dim, in_dim)
        self.gamma1 = nn.Parameter(torch.full((in_dim,), float(init_scale)))
        self.norm2 = nn.LayerNorm(in_dim, eps=1e-6)
        self.mlp = FeedForward(in_dim, int(in_dim * mlp_ratio))
        self.gamma2 = nn.Parameter(torch.full((in_dim,), float(init_scale)))
        self.norm = nn.LayerNorm(in_dim, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(in_dim))
        trunc_normal_(self.cls_token, std=0.02)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        c = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        u = self.norm1(torch.cat([c, tokens], dim=1))
        attn = multihead_attention(self.q(u[:, :1]), self.k(u), self.v(u), self.num_heads)
        c = c + self.gamma1 * self.proj(attn)
        c = c + self.gamma2 * self.mlp(self.norm2(c))
        return self.norm(c).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens + 1, self.in_dim
        return 2 * d * d + 2 * n * d * d + attention_macs(1, n, d, d) + self.mlp.macs()

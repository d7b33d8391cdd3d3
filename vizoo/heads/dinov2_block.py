"""DINOv2-block pooling: one pre-norm transformer block over the tokens, then their mean.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024, its ``Block``; the
efficient-probing code's ``DinoViTBlockPooling`` (``--cls_features dinovit``: 8 heads, no qkv bias, proj and
MLP bias, mlp_ratio 4, no LayerScale, LayerNorm eps 1e-5, PyTorch default initialisation).

    x = x + proj(MHSA(LN1(x)));  x = x + MLP(LN2(x));  out = mean_n x_n

Faithful: layers, defaults, initialisation and outputs (up to a constant shift that the head's BatchNorm
removes).
Differs: the MLP's output bias is left out (vizoo = official - D parameters: 7,853,800 at D=768). It is added
to every token and so shifts the mean by a constant, which the head's train-mode BatchNorm removes; its
gradient is always zero.
"""
from __future__ import annotations

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import FeedForward, attention_macs, multihead_attention


@register_head("dinov2_block")
class DINOv2BlockProbe(ProbeHead):
    """One DINOv2 transformer block followed by token averaging.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 8); must divide D.
        mlp_ratio: MLP hidden width / D (default 4).
        use_prefix: prefix tokens join the block and the average (official ``dinovit_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 8, mlp_ratio: float = 4.0,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"dinov2_block: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(in_dim)
        self.qkv = nn.Linear(in_dim, 3 * in_dim, bias=False)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = FeedForward(in_dim, int(in_dim * mlp_ratio), out_bias=False)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(tokens)).chunk(3, dim=-1)
        x = tokens + self.proj(multihead_attention(q, k, v, self.num_heads))
        x = x + self.mlp(self.norm2(x))
        return x.mean(dim=1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens, self.in_dim
        return 4 * n * d * d + attention_macs(n, n, d, d) + n * self.mlp.macs()

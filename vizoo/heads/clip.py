"""CLIP attention pooling (AttentionPool2d): a GAP token attends to the position-embedded patch tokens.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), ICML 2021,
the attention pooling that ends CLIP's ResNets; the efficient-probing code uses timm's ``AttentionPool2d``
(``poolings/clip/attention_pool2d.py``: 4 heads, qkv bias, ``feat_size=14``) behind a LayerNorm (eps 1e-6).

    x   = LN(tokens);  x = [mean_n x_n ; x_1..x_N] + P          P: learned absolute position table (g^2 + 1) x D
    out = proj( MHA(q = W_Q x_0, k = W_K x, v = W_V x) )        4 heads over all N + 1 tokens; token 0's output

Faithful: layers, initialisation (trunc-normal std D^-0.5 for P and the q/k/v weights, zero q bias),
outputs on the official 14 x 14 grid (up to a constant shift that the head's BatchNorm removes).
Differs:
* three biases whose gradient is always zero are left out (vizoo = official - 3D parameters: 3,281,896 at
  D=768): the key bias shifts every logit of a query by the same amount (the softmax cancels it); the value
  and output-projection biases shift the pooled vector by a constant (attention weights sum to one), which
  the head's train-mode BatchNorm removes;
* the official module computes queries, attention and the output projection for all N + 1 tokens and keeps
  token 0; vizoo computes token 0 only (same output; ~235M instead of ~525M multiply-adds at D=768, N=196);
* other grids work: the position table (built for ``feat_size`` x ``feat_size``) is resampled bicubically
  to the token grid (timm's ``resample_abs_pos_embed``), where the official head fails for any grid but
  14 x 14. The absolute position embedding makes this head depend on token order (not permutation invariant).
"""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import attention_macs, multihead_attention


@register_head("clip")
class CLIPAttentionPoolProbe(ProbeHead):
    """CLIP's AttentionPool2d on a ViT token grid.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 4); must divide D.
        feat_size: side of the grid the position table is built for (default 14; the official code uses 16
            for CAPI ViT-L/14). Other grids are served by resampling the table.
    """

    needs_grid = True
    permutation_invariant = False

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 4, feat_size: int = 14) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_positive_int("feat_size", feat_size)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        self.num_heads = num_heads
        self.feat_size = feat_size
        std = in_dim ** -0.5
        self.q = nn.Linear(in_dim, in_dim)
        self.k = nn.Linear(in_dim, in_dim, bias=False)
        self.v = nn.Linear(in_dim, in_dim, bias=False)
        self.proj = nn.Linear(in_dim, in_dim, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(feat_size * feat_size + 1, in_dim))
        trunc_normal_(self.pos_embed, std=std)
        for lin in (self.q, self.k, self.v):
            trunc_normal_(lin.weight, std=std)
        nn.init.zeros_(self.q.bias)
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self._init_classifier(in_dim)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The ``(H*W + 1) x D`` position table for ``grid`` (row 0 is the GAP token's)."""
        if tuple(grid) == (self.feat_size, self.feat_size):
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed[None], new_size=list(grid),
                                      old_size=[self.feat_size, self.feat_size], num_prefix_tokens=1)[0]

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        x = self.norm(tokens)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.position_embedding(grid).to(x.dtype)
        out = multihead_attention(self.q(x[:, :1]), self.k(x), self.v(x), self.num_heads)
        return self.proj(out).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens + 1, self.in_dim
        return 2 * d * d + 2 * n * d * d + attention_macs(1, n, d, d)

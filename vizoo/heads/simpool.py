"""SimPool and its projection-free variant eSimPool.

Psomas et al., "Keep It SimPool: Who Said Supervised Transformers Suffer from Attention Deficit?", ICCV 2023
(github.com/billpsomas/simpool); as configured by the efficient-probing code (``poolings/simpool.py``:
``SimPool(num_heads=1, qkv_bias=False, gamma=None)`` for ``simpool`` and ``SimPool_nolinears(num_heads=12)``
for ``esimpool``).

simpool:   q = W_Q mean_n(x_n),  k_n = W_K LN(x_n),  v_n = LN(x_n);  y = sum_n softmax_n(q.k_n/sqrt(D/h)) v_n
esimpool:  q = LN(mean_n x_n),   k_n = LN(x_n),      v_n = x_n (raw); h channel-group heads, no projections

(LN: LayerNorm with affine parameters, eps 1e-6, shared by queries and keys in eSimPool.)

Faithful: layers, defaults and outputs; eSimPool's parameter count (2D).
Differs: SimPool's LayerNorm has no bias in vizoo (vizoo = official - D: 1,949,416 at D=768). In the keys that
bias adds the same amount to every logit (the softmax cancels it); in the values it shifts the pooled vector
by a constant (attention weights sum to one), which the head's train-mode BatchNorm removes; so its gradient
is always zero. Also fixing official failures: vizoo builds on any device (the official classes create tensors on
'cuda' in ``__init__``); it does not ``squeeze()`` the output, so a batch of one works; eSimPool's head count
defaults to 12 but falls back to the largest divisor of D below 12 when 12 does not divide D (the official
head crashes for D=1024; vizoo uses 8 heads there). SimPool's gamma (power-mean) option, unused by the
probing code, is not offered.
"""
from __future__ import annotations

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import attention_macs, multihead_attention


def _default_heads(dim: int, preferred: int = 12) -> int:
    return max(h for h in range(1, preferred + 1) if dim % h == 0)


@register_head("simpool")
class SimPoolProbe(ProbeHead):
    """SimPool: GAP query with W_Q, LayerNorm'd keys with W_K, LayerNorm'd tokens as values.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 1, as the probing code); must divide D.
        use_prefix: prefix tokens are pooled with the patch tokens (official ``simpool_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 1, use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(in_dim, eps=1e-6, bias=False)   # its bias would get no gradient (docstring)
        self.wq = nn.Linear(in_dim, in_dim, bias=False)
        self.wk = nn.Linear(in_dim, in_dim, bias=False)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        q = self.wq(tokens.mean(dim=1, keepdim=True))
        x = self.norm(tokens)
        return multihead_attention(q, self.wk(x), x, self.num_heads).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens, self.in_dim
        return d * d + n * d * d + attention_macs(1, n, d, d)


@register_head("esimpool")
class ESimPoolProbe(ProbeHead):
    """eSimPool: SimPool without projections; only the LayerNorm's affine parameters are learned.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: channel-group heads; None (default) means 12 when 12 divides D (official), else the largest
            divisor of D below 12.
        use_prefix: prefix tokens are pooled with the patch tokens (official ``esimpool_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int | None = None,
                 use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        if num_heads is None:
            num_heads = _default_heads(in_dim)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        q = self.norm(tokens.mean(dim=1, keepdim=True))
        return multihead_attention(q, self.norm(tokens), tokens, self.num_heads).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        return attention_macs(1, num_tokens, self.in_dim, self.in_dim)

"""CAE attentive pooling: a learned query cross-attends with separate LayerNorms on query, keys and values.

Chen et al., "Context Autoencoder for Self-Supervised Representation Learning", IJCV 2023 (its attentive
probe); the efficient-probing code's ``CAEAttentiveBlock`` (``poolings/cae_att.py``: 8 heads, no q/k/v
bias, output projection with bias, no residual, no MLP, query initialised to zeros).

    q = W_Q LN_q(u),  k_n = W_K LN_k(x_n),  v_n = W_V LN_v(x_n);  out = proj(MHA(q, k, v))   (LN eps 1e-5)

Faithful: layers, defaults, initialisation (zero query, PyTorch defaults elsewhere) and outputs (up to a
constant shift that the head's BatchNorm removes). With the
zero query, q is zero at initialisation: attention starts uniform, and W_Q, W_K and the LN_q/LN_k weights
get gradient only once LN_q's bias has moved (after the first step), exactly as in the official module.
Differs: parameters of the official module whose gradient is always zero are left out
(vizoo = official - 5D parameters: 3,132,136 at D=768):
* ``norm2_cross`` (2D) is built but never used;
* LN_k's bias (D) adds W_K b to every key, i.e. the same amount to every logit of the query;
* LN_v's bias and the output projection's bias (D each) shift the pooled vector by a constant (attention
  weights sum to one), which the head's train-mode BatchNorm removes.
"""
from __future__ import annotations

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_divisible, check_positive_int, register_head
from vizoo.heads.layers import attention_macs, multihead_attention


@register_head("cae")
class CAEProbe(ProbeHead):
    """CAE attentive block with one learned query.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_heads: heads (default 8); must divide D.
        use_prefix: prefix tokens are attended to with the patch tokens (official ``cae_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, num_heads: int = 8, use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("num_heads", num_heads)
        check_divisible("in_dim", in_dim, num_heads, "num_heads")
        self._set_use_prefix(use_prefix)
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(in_dim))
        self.norm_q = nn.LayerNorm(in_dim)
        self.norm_k = nn.LayerNorm(in_dim, bias=False)
        self.norm_v = nn.LayerNorm(in_dim, bias=False)
        self.q = nn.Linear(in_dim, in_dim, bias=False)
        self.k = nn.Linear(in_dim, in_dim, bias=False)
        self.v = nn.Linear(in_dim, in_dim, bias=False)
        self.proj = nn.Linear(in_dim, in_dim, bias=False)
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        q = self.q(self.norm_q(self.query.to(tokens.dtype)))[None]
        out = multihead_attention(q, self.k(self.norm_k(tokens)), self.v(self.norm_v(tokens)), self.num_heads)
        return self.proj(out).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens, self.in_dim
        return 2 * d * d + 2 * n * d * d + attention_macs(1, n, d, d)

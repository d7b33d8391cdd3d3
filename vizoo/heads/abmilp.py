"""AbMILP: attention-based multiple-instance-learning pooling, with the self-attention of Beyond [CLS].

Ilse et al., "Attention-based Deep Multiple Instance Learning", ICML 2018; the self-attention variant from
Przewiezlikowski et al., "Beyond [cls]: Exploring the true potential of Masked Image Modeling
representations" (gmum/beyond_cls); as used by the efficient-probing code (``poolings/abmilp.py``,
``--cls_features abmilp`` with the defaults ``--abmilp_sa both --abmilp_depth 2 --abmilp_act tanh``).

    z   = proj(SelfAttention_1head(x))             qkv D -> 3D without bias, proj with bias, scale 1/sqrt(D)
    s_n = w2 . tanh(W1 z_n + b1)                   predictor, ``depth`` linear layers
    a   = softmax_n(s)
    y   = sum_n a_n z_n                            (``self_attention='both'``; 'map' pools x, 'none' skips z)

Faithful: the layers, initialisation (PyTorch defaults) and outputs of the official head.
Differs: the predictor's last bias is left out. It adds the same constant to every token's score, which the
softmax cancels, so its gradient is always zero (vizoo = official - 1 parameter: 3,720,424 at D=768). The
official ``--abmilp_cond pe`` (fixed sin-cos position embedding) and ``--abmilp_content patch`` flags are
not offered: the first needs a grid the set pooling does not otherwise use, the second is expressed in vizoo
by passing only the patch tokens (the default).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_positive_int, register_head
from vizoo.heads.layers import attention_macs, multihead_attention

_SA = ("none", "map", "both")
_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU}


@register_head("abmilp")
class ABMILPProbe(ProbeHead):
    """Attention-MIL pooling over (self-attended) tokens.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        self_attention: ``'both'`` (default: self-attended tokens feed the predictor and are pooled),
            ``'map'`` (they only feed the predictor; raw tokens are pooled) or ``'none'``.
        depth: linear layers in the attention predictor (default 2: D -> D, activation, D -> 1).
        activation: ``'tanh'`` (default) or ``'relu'`` between predictor layers.
        use_prefix: prefix tokens are pooled with the patch tokens (official ``abmilp_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, self_attention: str = "both", depth: int = 2,
                 activation: str = "tanh", use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        if self_attention not in _SA:
            raise ValueError(f"abmilp: self_attention must be one of {_SA}, got {self_attention!r}")
        if activation not in _ACT:
            raise ValueError(f"abmilp: activation must be one of {tuple(_ACT)}, got {activation!r}")
        check_positive_int("depth", depth)
        self._set_use_prefix(use_prefix)
        self.self_attention = self_attention
        self.depth = depth
        if self_attention != "none":
            self.qkv = nn.Linear(in_dim, 3 * in_dim, bias=False)
            self.proj = nn.Linear(in_dim, in_dim)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(in_dim, in_dim), _ACT[activation]()]
        layers.append(nn.Linear(in_dim, 1, bias=False))
        self.predictor = nn.Sequential(*layers)
        self._init_classifier(in_dim)

    def _self_attend(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(multihead_attention(q, k, v, num_heads=1, scale=1.0 / math.sqrt(self.in_dim)))

    def attention(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The pooling weights ``[B, N]`` (sum to one), for inspection."""
        return self._weights_and_content(self._gather(tokens, prefix))[0]

    def _gather(self, tokens, prefix):
        tokens, prefix, _ = self.check_inputs(tokens, prefix, None)
        return torch.cat([prefix, tokens], dim=1) if self.use_prefix else tokens

    def _weights_and_content(self, x: torch.Tensor):
        z = self._self_attend(x) if self.self_attention != "none" else x
        weights = self.predictor(z if self.self_attention != "none" else x).squeeze(-1).softmax(dim=-1)
        content = z if self.self_attention == "both" else x
        return weights, content

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        weights, content = self._weights_and_content(tokens)
        return torch.bmm(weights.unsqueeze(1), content).squeeze(1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        n, d = num_tokens, self.in_dim
        macs = 0
        if self.self_attention != "none":
            macs += 4 * n * d * d + attention_macs(n, n, d, d)
        macs += (self.depth - 1) * n * d * d + n * d       # predictor
        return macs + n * d                                 # weighted sum

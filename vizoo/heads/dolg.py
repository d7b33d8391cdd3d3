"""DOLG/DELF local attention pooling: non-negative per-token weights on L2-normalised transformed tokens.

Yang et al., "DOLG: Single-Stage Image Retrieval with Deep Orthogonal Fusion of Local and Global Features",
ICCV 2021 (its ``SpatialAttention2d``, after DELF, Noh et al. ICCV 2017); the efficient-probing code's
``dolg`` head (``poolings/dolg/dolg.py``: ``s3_dim=D``, no ASPP, ReLU, BatchNorm2d eps 1e-5, ResNet-style
init: conv weights N(0, 2/fan_out)).

    f_n = BN(W1 x_n)                                1 x 1 conv D -> D, BatchNorm over channels (affine)
    a_n = softplus(w2 . ReLU(f_n) + b2)             1 x 1 conv D -> 1
    out = mean_n a_n f_n / |f_n|                    no softmax: the weights are not normalised

Faithful: layers, defaults, initialisation and outputs (train and eval mode).
Differs:
* the first conv's bias is left out: the train-mode BatchNorm subtracts it again, so its gradient is always
  zero (vizoo = official - D parameters: 1,361,129 at D=768);
* every operation is per token (1 x 1 convs) followed by a mean, so vizoo works on the token set directly:
  no square grid is needed (the official head assumes one), the output is invariant to token order, and
  ``use_prefix`` (official ``dolg_all``, which fails there on 197 tokens) works.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vizoo.heads.base import ProbeHead, register_head


@register_head("dolg")
class DOLGProbe(ProbeHead):
    """DOLG spatial attention (softplus weights on normalised features), then the mean over tokens.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        use_prefix: prefix tokens are pooled with the patch tokens (official ``dolg_all``).
    """

    def __init__(self, in_dim: int, num_classes: int, use_prefix: bool = False) -> None:
        super().__init__(in_dim, num_classes)
        self._set_use_prefix(use_prefix)
        self.conv1 = nn.Linear(in_dim, in_dim, bias=False)
        self.feature_bn = nn.BatchNorm1d(in_dim, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Linear(in_dim, 1)
        with torch.no_grad():      # ResNet-style: N(0, 2 / fan_out), fan_out = out channels for 1 x 1 convs
            self.conv1.weight.normal_(0.0, math.sqrt(2.0 / in_dim))
            self.conv2.weight.normal_(0.0, math.sqrt(2.0))
        self._init_classifier(in_dim)

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        f = self.feature_bn(self.conv1(tokens).transpose(1, 2)).transpose(1, 2)      # [B, N, D]
        weights = F.softplus(self.conv2(torch.relu(f)))                        # [B, N, 1]
        return (weights * F.normalize(f, p=2, dim=-1)).mean(dim=1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        return num_tokens * self.in_dim * (self.in_dim + 1)

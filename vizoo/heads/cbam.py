"""CBAM pooling: channel gate, spatial gate, residual + ReLU, then global average pooling.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018; the efficient-probing code's
``CbamPooling`` (``poolings/cbam.py``, after timm's CBAM: reduction 1/16, ReLU, no MLP bias, 7 x 7 spatial
conv without bias + BatchNorm2d(1), sigmoid gates).

    X = tokens as a D x H x W map (row-major)
    X1 = X * sigmoid(MLP(avg_hw X) + MLP(max_hw X))            MLP: D -> round(D/16) -> D, shared, ReLU
    X2 = X1 * sigmoid(BN(conv7x7([mean_c X1; max_c X1])))
    out = avg_hw ReLU(X2 + X)

Faithful: layers, defaults, initialisation (the 1 x 1 convs of the channel MLP are ``nn.Linear``s on the
pooled vectors, with the same default initialisation), parameter count (2 D round(D/16) + 100) and outputs.
Differs: the official head assumes a square grid and ends in ``squeeze()`` (a batch of one fails); vizoo
takes any ``grid=(H, W)`` and keeps the batch axis. The 7 x 7 conv makes it depend on token order.
"""
from __future__ import annotations

import torch
from torch import nn

from vizoo.heads.base import ProbeHead, check_positive_int, register_head


@register_head("cbam")
class CBAMProbe(ProbeHead):
    """CBAM attention followed by global average pooling.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        reduction: channel-MLP reduction (default 16; hidden width round(D / reduction), at least 1).
        spatial_kernel_size: odd kernel size of the spatial gate's conv (default 7).
    """

    needs_grid = True
    permutation_invariant = False

    def __init__(self, in_dim: int, num_classes: int, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__(in_dim, num_classes)
        check_positive_int("reduction", reduction)
        check_positive_int("spatial_kernel_size", spatial_kernel_size)
        if spatial_kernel_size % 2 == 0:
            raise ValueError(f"cbam: spatial_kernel_size must be odd, got {spatial_kernel_size}")
        hidden = max(1, int(in_dim / reduction + 0.5))
        self.fc1 = nn.Linear(in_dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, in_dim, bias=False)
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel_size, padding=spatial_kernel_size // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)
        self._init_classifier(in_dim)

    def _channel_mlp(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(v)))

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        b, _, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, *grid)                      # [B, D, H, W]
        gate = torch.sigmoid(self._channel_mlp(x.mean(dim=(2, 3))) + self._channel_mlp(x.amax(dim=(2, 3))))
        x1 = x * gate[:, :, None, None]
        s = torch.cat([x1.mean(dim=1, keepdim=True), x1.amax(dim=1, keepdim=True)], dim=1)
        x2 = x1 * torch.sigmoid(self.spatial_bn(self.spatial_conv(s)))
        return torch.relu(x2 + x).mean(dim=(2, 3))

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        k = self.spatial_conv.kernel_size[0]
        return 2 * 2 * self.fc1.in_features * self.fc1.out_features + num_tokens * 2 * k * k

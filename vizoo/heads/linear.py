"""Linear probe: non-affine BatchNorm + Linear on the class token or on the mean of the patch tokens.

The MAE linear-probing head (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
``main_linprobe.py``): ``BatchNorm1d(D, affine=False, eps=1e-6)`` followed by ``Linear(D, C)``, as also used
by the efficient-probing code for its ``cls`` and ``pos`` (GAP) baselines. Faithful: same layers and
parameter count (D*C + C). Differs: the official code reuses the encoder's own ``head`` Linear (whose
pretrained weights are dropped at load, leaving PyTorch's default init); vizoo builds a fresh Linear with
the same default init.
"""
from __future__ import annotations

import torch

from vizoo.heads.base import ProbeHead, register_head

_POOLS = ("auto", "cls", "avg")


@register_head("linear")
class LinearProbe(ProbeHead):
    """BN + Linear on one vector per image.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        pool: ``'cls'`` uses the first prefix token (the class token; required), ``'avg'`` the mean of the
            patch tokens (prefix ignored), ``'auto'`` (default) the class token when prefix tokens are given
            and the patch mean otherwise ("cls if available", as the efficient-probing code's linear baselines do).
    """

    uses_prefix = "optional"   # the default pool='auto'; set per instance from ``pool``

    def __init__(self, in_dim: int, num_classes: int, pool: str = "auto") -> None:
        super().__init__(in_dim, num_classes)
        if pool not in _POOLS:
            raise ValueError(f"linear: pool must be one of {_POOLS}, got {pool!r}")
        self.pool_mode = pool
        self.uses_prefix = {"auto": "optional", "cls": "required", "avg": "never"}[pool]
        self._init_classifier(in_dim)

    def _prefix_hint(self) -> str:
        return "Use pool='avg' for backbones without a class token."

    def pool(self, tokens, prefix, grid) -> torch.Tensor:
        if prefix is not None:
            return prefix[:, 0]
        return tokens.mean(dim=1)

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        return 0

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pool={self.pool_mode!r}"


@register_head("plain_linear")
class PlainLinear(LinearProbe):
    """DINOv2's linear classifier (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
    TMLR 2024, ``dinov2/eval/linear.py``): a bare ``Linear(D, C)`` with weight N(0, 0.01) and bias 0, no
    BatchNorm.

    Pools like ``linear`` (``pool``: ``auto``/``cls``/``avg``). On DINOv2's concatenated multi-block inputs
    (one token per image, no prefix tokens; see ``vizoo.probe.multiblock``) the pooling is the identity.
    """

    def __init__(self, in_dim: int, num_classes: int, pool: str = "auto") -> None:
        super().__init__(in_dim, num_classes, pool)
        self.head_bn = torch.nn.Identity()
        torch.nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        torch.nn.init.zeros_(self.classifier.bias)

"""InLine-DeiT: DeiT with injective linear attention in every block, registered with timm.

Papers: Han et al. "Bridging the Divide: Reconsidering Softmax and Linear Attention." NeurIPS 2024, arXiv
2412.06590; Touvron et al. "Training data-efficient image transformers." ICML 2021, arXiv 2012.12877.
Official code: github.com/LeapLabTHU/InLine (models/inline_deit.py, its own copy of timm-0.4.12's ViT);
written from reading it, nothing copied.

Faithful: timm's ViT with a class token, absolute position embedding, patch 16, pre-norm blocks (LayerNorm eps
1e-6), qkv bias, final norm and class-token head, with every attention layer an InLine attention over all
tokens
(class token included; its mean feeds the local residual, which applies to patch tokens only). Widths / heads:
T 192 / 6 at 224, S 320 / 10 at 288, B 384 / 12 at 448 (head dim 32; "B" is DeiT-S's width at 448 px).
Parameter counts equal the official ones; keys are timm ViT's, so official checkpoints load as they are.
Differs: the model subclasses timm 1.x's ``VisionTransformer`` (the official builders call timm-0.4's
``build_model_with_cfg(default_cfg=...)``, a TypeError on timm >= 0.9, and pointed ``pretrained`` at
Facebook's
DeiT weights); the patch grid is taken from ``img_size`` instead of ``sqrt(N)``, so non-square sizes work
(``set_input_size`` keeps the grids in step); register tokens, no class token and dynamic image sizes are not
supported (``ValueError``).
"""

from typing import Any, Dict, Optional, Tuple

import torch
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_filter
from torch import Tensor

from vizoo.backbones.inline import (
    CHECKPOINT_URL,
    InLineAttention,
    check_keys,
    inline_cfg,
)
from vizoo.hub.checkpoints import extract_state_dict

__all__ = ["InLineDeiT", "checkpoint_filter_fn"]


class InLineDeiT(VisionTransformer):
    """timm's ``VisionTransformer`` with ``InLineAttention`` in every block (class token, no register tokens).

    Takes ``VisionTransformer``'s arguments, except ``attn_layer``, ``reg_tokens``, ``class_token`` and
    ``dynamic_img_size`` which are fixed.
    """

    def __init__(self, img_size=224, patch_size=16, **kwargs) -> None:
        for key, allowed in (
            ("reg_tokens", 0),
            ("class_token", True),
            ("dynamic_img_size", False),
            ("no_embed_class", False),
        ):
            if key in kwargs and kwargs[key] != allowed:
                raise ValueError(f"InLineDeiT supports {key}={allowed!r} only, got {kwargs[key]!r}")
        if "attn_layer" in kwargs:
            raise ValueError("InLineDeiT fixes attn_layer to InLineAttention")
        grid = tuple(s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size)))
        super().__init__(img_size=img_size, patch_size=patch_size, attn_layer=InLineAttention, **kwargs)
        for block in self.blocks:
            block.attn.grid_size = grid
            block.attn.num_prefix_tokens = self.num_prefix_tokens

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Position embedding and class token (timm's ViT also names tokens this model does not have)."""
        return {"pos_embed", "cls_token"}

    def set_input_size(
        self, img_size: Optional[Tuple[int, int]] = None, patch_size: Optional[Tuple[int, int]] = None
    ) -> None:
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        for block in self.blocks:
            block.attn.grid_size = tuple(self.patch_embed.grid_size)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InLineDeiT) -> Dict[str, Tensor]:
    """Official InLine-DeiT checkpoint (the ``.pth`` dict as ``torch.load`` returns it, or a bare state dict):
    keys are timm ViT's already; timm's ViT filter resamples ``pos_embed`` to the model's grid. Then a strict
    key check.

    Raises:
        ValueError: naming missing and unexpected keys (another family) or shape mismatches (another width).
    """
    state_dict = extract_state_dict(state_dict, source="the InLine checkpoint")
    if "blocks.0.attn.residual.0.weight" not in state_dict:
        return check_keys(dict(state_dict), model, [], "InLine-DeiT")
    return check_keys(_vit_filter(state_dict, model), model, [], "InLine-DeiT")


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLineDeiT:
    return build_model_with_cfg(
        InLineDeiT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return inline_cfg(url, "patch_embed.proj", **{"pool_size": None, "classifier": "head", **kwargs})


default_cfgs = generate_default_cfgs(
    {
        "inline_deit_tiny.in1k": _cfg(CHECKPOINT_URL.format("1d6b8191ad6d4114b291")),
        "inline_deit_small.in1k": _cfg(CHECKPOINT_URL.format("2f3898b07e9247f3beb3"), input_size=(3, 288, 288)),
        "inline_deit_base.in1k": _cfg(CHECKPOINT_URL.format("10bdd726d4b0435eb34e"), input_size=(3, 448, 448)),
    }
)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T (6.5M params, 1.1 GFLOPs at 224)."""
    args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6)
    return _create("inline_deit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S (16.7M params, 5.0 GFLOPs at 288)."""
    args = dict(img_size=288, patch_size=16, embed_dim=320, depth=12, num_heads=10)
    return _create("inline_deit_small", pretrained, **dict(args, **kwargs))


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B (23.8M params, 17.2 GFLOPs at 448)."""
    args = dict(img_size=448, patch_size=16, embed_dim=384, depth=12, num_heads=12)
    return _create("inline_deit_base", pretrained, **dict(args, **kwargs))

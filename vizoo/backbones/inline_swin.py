"""InLine-Swin: the Swin Transformer with InLine attention in its early stages, registered with timm.

Papers: Han et al. "Bridging the Divide: Reconsidering Softmax and Linear Attention." NeurIPS 2024, arXiv
2412.06590; Liu et al. "Swin Transformer." ICCV 2021, arXiv 2103.14030. Official code:
github.com/LeapLabTHU/InLine (models/inline_swin.py, a fork of the Swin code); written from reading it,
nothing
copied.

Faithful: Swin's patch embedding (4x4 + LayerNorm), patch merging, pre-norm blocks, final norm, average pool;
the per-block attention layout of the released configs: ``IIIS`` (T), ``IISS`` (S), ``IIMS2`` (B: stage 3
opens with 2 InLine blocks, the other 16 are softmax); InLine blocks attend globally over the stage's whole
feature map (official window 56 at 224, i.e. 56/28/14/7, clamped to the map), softmax blocks are Swin's
window attention with relative position bias, window ``max(7, window // 8)`` (7; 12 for the 384 model, whose
official window is 96) and a shift of half a window on odd blocks of a stage. Parameter counts equal the
official ones.
Differs: the model subclasses timm 1.x's ``SwinTransformer`` (timm layout: patch merging opens stage i+1,
``head.fc``; ``checkpoint_filter_fn`` maps the official keys and drops the ``relative_position_index`` /
``attn_mask`` buffers, which are regenerated). Official defect fixed: at inputs above 224 (above 384 for the
384
model) the official InLine blocks cut 56-wide windows and shift them without applying the shift mask (the
InLine layer accepts and ignores it), so tokens mix across the wrapped border; here InLine blocks stay global
at every input size, which is what they compute at the training size. Softmax blocks at sizes that are not
window multiples are padded as timm's Swin does (the official code fails there).
"""

import re
from typing import Any, Dict

from timm.layers import resize_rel_pos_bias_table
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor

from vizoo.backbones.inline import (
    CHECKPOINT_URL,
    InLineAttention,
    block_types,
    check_keys,
    inline_cfg,
)
from vizoo.hub.checkpoints import extract_state_dict

__all__ = ["InLineSwin", "checkpoint_filter_fn"]


class InLineSwin(SwinTransformer):
    """timm's ``SwinTransformer`` whose InLine blocks (``attn_type``) attend globally with
    ``InLineAttention``.

    Args:
        attn_type: official layout string (``'IIIS'``, ``'IISS'``, ``'IIMS2'``).
        window_size: the softmax blocks' window (7; 12 for the 384 model).
        **kwargs: ``SwinTransformer``'s other arguments (``always_partition`` and ``dynamic_img_size`` are not
            supported).
    """

    def __init__(self, attn_type: str = "IIIS", window_size: int = 7, **kwargs) -> None:
        for key in ("always_partition", "dynamic_img_size"):
            if kwargs.get(key):
                raise ValueError(f"InLineSwin does not support {key}=True")
        super().__init__(window_size=window_size, **kwargs)
        self.attn_type = attn_type
        self.block_types = block_types(attn_type, [len(stage.blocks) for stage in self.layers])
        for stage, types in zip(self.layers, self.block_types):
            for block, kind in zip(stage.blocks, types):
                if kind == "I":
                    old = block.attn
                    block.attn = InLineAttention(
                        old.qkv.in_features,
                        old.num_heads,
                        old.qkv.bias is not None,
                        grid_size=block.input_resolution,
                    )
                    block.attn.proj_drop = old.proj_drop
        self._globalize()

    def _globalize(self) -> None:
        """InLine blocks: one window covering the stage's map, no shift, no mask."""
        for stage, types in zip(self.layers, self.block_types):
            for block, kind in zip(stage.blocks, types):
                if kind == "I":
                    res = tuple(block.input_resolution)
                    block.window_size, block.shift_size = res, (0, 0)
                    block.window_area = res[0] * res[1]
                    block.attn.grid_size = res
                    block.register_buffer("attn_mask", None, persistent=False)

    def set_input_size(self, *args, **kwargs) -> None:
        super().set_input_size(*args, **kwargs)
        self._globalize()


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InLineSwin) -> Dict[str, Tensor]:
    """Official InLine-Swin checkpoint (the ``.pth`` dict as ``torch.load`` returns it, or a bare state dict)
    -> timm's Swin layout: ``layers.i.downsample`` -> ``layers.{i+1}.downsample``, ``head`` -> ``head.fc``,
    the ``relative_position_index`` / ``attn_mask`` buffers dropped (the model regenerates them). Keys are
    checked strictly; then relative position tables of another window size are resized to the model's
    (timm's ``resize_rel_pos_bias_table``), and any other shape difference is an error.

    Raises:
        ValueError: naming missing and unexpected keys (another family or layout) or shape mismatches.
    """
    state_dict = extract_state_dict(state_dict, source="the InLine checkpoint")
    official = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if official:
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", key)
            key = re.sub(r"^head\.", "head.fc.", key)
        out[key] = value
    model_sd = model.state_dict()
    for key, value in out.items():
        target = model_sd.get(key)
        if (
            key.endswith("relative_position_bias_table")
            and target is not None
            and value.shape != target.shape
            and value.shape[1] == target.shape[1]
        ):
            window = model.get_submodule(key[: -len(".relative_position_bias_table")]).window_size
            out[key] = resize_rel_pos_bias_table(value, new_window_size=window, new_bias_shape=target.shape)
    return check_keys(out, model, [], "InLine-Swin")


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLineSwin:
    return build_model_with_cfg(
        InLineSwin,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return inline_cfg(url, "patch_embed.proj", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "inline_swin_tiny.in1k": _cfg(CHECKPOINT_URL.format("32810869fcc34410966b")),
        "inline_swin_small.in1k": _cfg(CHECKPOINT_URL.format("e9657fd247c04c7cb1a1")),
        "inline_swin_base.in1k": _cfg(CHECKPOINT_URL.format("bf23564bb64c420aafe1")),
        # the paper's 384 fine-tune config; no released checkpoint
        "inline_swin_base_384": _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    }
)


def _swin(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> InLineSwin:
    return _create(variant, pretrained, **dict(model_args, **kwargs))


_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_type="IIIS", drop_path_rate=0.2)
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_type="IISS", drop_path_rate=0.3)
_B = dict(
    embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_type="IIMS2", drop_path_rate=0.5
)


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T (29.2M params, 4.5 GFLOPs at 224)."""
    return _swin("inline_swin_tiny", pretrained, _T, kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S (49.8M params, 8.7 GFLOPs at 224)."""
    return _swin("inline_swin_small", pretrained, _S, kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B (88.4M params, 15.4 GFLOPs at 224)."""
    return _swin("inline_swin_base", pretrained, _B, kwargs)


@register_model
def inline_swin_base_384(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B at 384 (the paper's fine-tune config: softmax window 12)."""
    return _swin("inline_swin_base_384", pretrained, dict(_B, img_size=384, window_size=12), kwargs)

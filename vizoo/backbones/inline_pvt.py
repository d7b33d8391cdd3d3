"""InLine-PVT: the Pyramid Vision Transformer (v1 layout) with InLine attention, registered with timm.

Papers: Han et al. "Bridging the Divide: Reconsidering Softmax and Linear Attention." NeurIPS 2024, arXiv
2412.06590; Wang et al. "Pyramid Vision Transformer." ICCV 2021, arXiv 2102.12122. Official code:
github.com/LeapLabTHU/InLine (models/inline_pvt.py); written from reading it, nothing copied.

Faithful: four stages of conv patch embeddings (4x4/4, then 2x2/2) + LayerNorm (eps 1e-5) + absolute position
embedding; pre-norm blocks (LayerNorm eps 1e-6) of InLine attention (global, no spatial reduction: the
released ``IIII`` layout with ``PVT_LA_SR_RATIOS=1111``; separate ``q`` and ``kv`` projections with bias) and
an MLP (ratios 8, 8, 4, 4); heads [2, 4, 10, 16] (head dim 32); no final norm; mean of the last stage's tokens
into the classifier; stochastic depth linear over all blocks. Parameter counts equal the official ones.
Differs: timm layout (``stages.i.downsample`` holds stage i's patch embedding and its ``pos_embed``,
``stages.i.blocks.j``, ``head.fc``; ``checkpoint_filter_fn`` maps the official keys); a model is built for one
input size (``img_size``, any multiple of 32, non-square allowed) and another size is a ``ValueError`` (the
official model resized position embeddings on the fly, comparing every stage with stage 1's token count);
``reset_classifier`` works (the official one read a missing ``embed_dim``); softmax attention and spatial
reduction are not offered (never used by a released model; the official InLine path crashes with them).
"""

from functools import partial
from typing import Any, Dict, Sequence, Tuple

import torch
from timm.layers import ClassifierHead, DropPath, Mlp, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from vizoo.backbones.inline import (
    CHECKPOINT_URL,
    ConvEmbed,
    HierarchicalMixin,
    InLineQKVAttention,
    TokenStage,
    check_keys,
    inline_cfg,
)
from vizoo.hub.checkpoints import extract_state_dict

__all__ = ["InLinePVT", "checkpoint_filter_fn"]


class PVTBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        grid_size: Sequence[int],
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = InLineQKVAttention(
            dim, num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop, grid_size=grid_size
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class InLinePVT(HierarchicalMixin, nn.Module):
    """InLine Pyramid Vision Transformer.

    Args:
        img_size: input size the model is built for (int or (H, W), multiples of 32).
        in_chans: image channels.
        num_classes: classifier classes (0: none).
        global_pool: ``'avg'`` (official) or another timm pool type (``''``: none).
        embed_dims, depths, num_heads, mlp_ratios: per stage.
        qkv_bias: bias on the q / kv projections.
        drop_rate: classifier dropout; proj_drop_rate: dropout after attention / in the MLP and after position
            embeddings; drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size=224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (2, 4, 10, 16),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch_name = type(self).__name__
        self.img_size: Tuple[int, int] = tuple(int(s) for s in to_2tuple(img_size))
        if any(s % 32 or s < 32 for s in self.img_size):
            raise ValueError(f"InLinePVT needs img_size multiples of 32 (e.g. 224, 256, 288), got {img_size}")
        self.num_classes = num_classes
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, prev, layer, self.feature_info = [], in_chans, 0, []
        for i, (dim, depth, heads, ratio) in enumerate(zip(embed_dims, depths, num_heads, mlp_ratios)):
            patch = 4 if i == 0 else 2
            grid = (self.img_size[0] // (4 * 2**i), self.img_size[1] // (4 * 2**i))
            embed = ConvEmbed(prev, dim, patch, patch, grid_size=grid)
            blocks = [
                PVTBlock(dim, heads, ratio, qkv_bias, grid, proj_drop_rate, dpr[layer + j])
                for j in range(depth)
            ]
            stages.append(TokenStage(embed, blocks, grid))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev, layer = dim, layer + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm = nn.Identity()
        self.head = ClassifierHead(
            prev, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NCHW"
        )
        self.apply(_init_weights)
        for stage in self.stages:
            trunc_normal_(stage.downsample.pos_embed, std=0.02)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InLinePVT) -> Dict[str, Tensor]:
    """Official InLine-PVT checkpoint (the ``.pth`` dict as ``torch.load`` returns it, or a bare state dict)
    -> vizoo keys: ``patch_embed{i}.*`` -> ``stages.{i-1}.downsample.*``, ``pos_embed{i}`` ->
    ``stages.{i-1}.downsample.pos_embed`` (resampled when the model's grid differs), ``block{i}.{j}.*`` ->
    ``stages.{i-1}.blocks.{j}.*``, ``head`` -> ``head.fc``. vizoo-layout dicts pass through.

    Raises:
        ValueError: naming missing and unexpected keys (e.g. a checkpoint of another family or depth).
    """
    import re

    state_dict = extract_state_dict(state_dict, source="the InLine checkpoint")
    if any(k.startswith("stages.") for k in state_dict):
        return check_keys(dict(state_dict), model, [], "InLine-PVT")
    out, unknown = {}, []
    for key, value in state_dict.items():
        m = re.match(r"^(patch_embed|pos_embed|block)(\d)(.*)$", key)
        if m:
            kind, i, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
            if kind == "patch_embed":
                new = f"stages.{i}.downsample{rest}"
            elif kind == "pos_embed":
                new = f"stages.{i}.downsample.pos_embed"
                grid = model.stages[i].grid_size if i < len(model.stages) else None
                if grid is not None and value.shape[1] != grid[0] * grid[1]:
                    side = int(round(value.shape[1] ** 0.5))
                    value = resample_abs_pos_embed(
                        value, list(grid), old_size=[side, side], num_prefix_tokens=0
                    )
            else:
                new = f"stages.{i}.blocks{rest}"
        elif key.startswith("head."):
            new = "head.fc." + key[len("head.") :]
        else:
            unknown.append(key)
            continue
        out[new] = value
    return check_keys(out, model, unknown, "InLine-PVT")


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLinePVT:
    return build_model_with_cfg(
        InLinePVT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return inline_cfg(url, "stages.0.downsample.proj", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "inline_pvt_tiny.in1k": _cfg(CHECKPOINT_URL.format("90ac52b1555b401eb5e6")),
        "inline_pvt_small.in1k": _cfg(CHECKPOINT_URL.format("1ab953b2479d433080a3")),
        "inline_pvt_medium.in1k": _cfg(CHECKPOINT_URL.format("a72aec31e6084bc0a280")),
        "inline_pvt_large.in1k": _cfg(CHECKPOINT_URL.format("efd91318ba964f01b288")),
    }
)


def _pvt(variant: str, pretrained: bool, depths, kwargs) -> InLinePVT:
    return _create(variant, pretrained, **dict(dict(depths=depths), **kwargs))


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T (12.0M params, 2.0 GFLOPs at 224)."""
    return _pvt("inline_pvt_tiny", pretrained, (2, 2, 2, 2), kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S (21.6M params, 3.9 GFLOPs at 224)."""
    return _pvt("inline_pvt_small", pretrained, (3, 4, 6, 3), kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M (37.6M params, 6.9 GFLOPs at 224)."""
    return _pvt("inline_pvt_medium", pretrained, (3, 4, 18, 3), kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L (51.2M params, 10.2 GFLOPs at 224)."""
    return _pvt("inline_pvt_large", pretrained, (3, 8, 27, 3), kwargs)

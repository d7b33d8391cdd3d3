"""InLine-CSwin: the CSWin Transformer with InLine attention in stages 1-2, registered with timm.

Papers: Han et al. "Bridging the Divide: Reconsidering Softmax and Linear Attention." NeurIPS 2024, arXiv
2412.06590; Dong et al. "CSWin Transformer." CVPR 2022, arXiv 2107.00652. Official code:
github.com/LeapLabTHU/InLine (models/inline_cswin.py, a fork of the CSWin code); written from reading it,
nothing copied.

Faithful: 7x7/4 conv stem + LayerNorm, 3x3/2 conv merges + LayerNorm, pre-norm blocks with a block-level
``qkv`` (bias), final norm, mean pooling; layout ``IISS``: stages 1-2 InLine, attending globally over the
stage
map with all heads (official ``la_split_size`` 56-28-14-7, equal to the stage size at 224; 96-48-24-12 for the
384 model) plus the local residual (whose mean is taken over the *pre-norm* block input) and CSWin's LePE (a
3x3 depthwise conv with bias on V); stages 3-4 CSWin's cross-shaped stripe softmax attention (two branches of
half the channels and heads, vertical then horizontal stripes of width 7, or 12 for the 384 model; a single
full-map branch when the stripe covers the map, as in stage 4) with LePE computed per stripe (zero padding at
stripe borders). Parameter counts equal the official ones.
Differs: timm layout (``stages.i.downsample.{proj,norm}`` for the stem and merges, ``stages.i.blocks.j``,
``head.fc``; ``checkpoint_filter_fn`` maps the official keys); the model is built for one input size
(``img_size``) and another is a ``ValueError``. Official defects fixed: InLine blocks stay global at every
input size (the official InLine branch only works when the split equals the stage size and crashes otherwise);
a stripe wider than its map is clamped to the map (the official code crashes), and a map that is not a
multiple of the stripe width is refused with a ``ValueError`` naming the constraint; ``reset_classifier``
works
(the official one read a missing ``out_dim`` and moved the head to CUDA); no ``exit(0)`` on a bad branch
index.
"""

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from torch import Tensor, nn

from vizoo.backbones.inline import (
    CHECKPOINT_URL,
    ConvEmbed,
    HierarchicalMixin,
    TokenStage,
    block_types,
    check_keys,
    inline_cfg,
    inline_mix,
    residual_mlp,
)
from vizoo.hub.checkpoints import extract_state_dict

__all__ = ["InLineCSwin", "checkpoint_filter_fn"]


@register_notrace_module
class CSwinInLineBranch(nn.Module):
    """InLine over the whole ``grid`` with all heads, plus the local residual and LePE (``get_v``)."""

    def __init__(self, dim: int, num_heads: int, grid_size: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.residual = residual_mlp(dim, num_heads)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x_mean: Tensor) -> Tensor:
        B, N, C = q.shape
        H, W = self.grid_size
        shape = (B, N, self.num_heads, self.head_dim)
        out = inline_mix(
            q.reshape(shape),
            k.reshape(shape),
            v.reshape(shape),
            self.residual(x_mean.unsqueeze(-1)),
            self.grid_size,
            0,
            self.scale,
        )
        lepe = self.get_v(v.transpose(1, 2).reshape(B, C, H, W)).reshape(B, C, N).transpose(1, 2)
        return out + lepe.to(out.dtype)


@register_notrace_module
class CSwinStripeBranch(nn.Module):
    """CSWin's softmax attention in stripes of ``stripe = (height, width)`` with LePE computed per stripe."""

    def __init__(self, dim: int, num_heads: int, grid_size: Sequence[int], stripe: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.stripe: Tuple[int, int] = (int(stripe[0]), int(stripe[1]))
        self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def _windows(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        H, W = self.grid_size
        hs, ws = self.stripe
        return x.reshape(B, H // hs, hs, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, hs * ws, C)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x_mean: Tensor) -> Tensor:
        B, N, C = q.shape
        H, W = self.grid_size
        hs, ws = self.stripe
        q, k, v = self._windows(q), self._windows(k), self._windows(v)
        L = hs * ws
        lepe = self.get_v(v.transpose(1, 2).reshape(-1, C, hs, ws)).reshape(-1, C, L).transpose(1, 2)
        heads = (-1, L, self.num_heads, C // self.num_heads)
        out = F.scaled_dot_product_attention(
            q.reshape(heads).transpose(1, 2),
            k.reshape(heads).transpose(1, 2),
            v.reshape(heads).transpose(1, 2),
        )
        out = out.transpose(1, 2).reshape(-1, L, C) + lepe
        return out.reshape(B, H // hs, W // ws, hs, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, N, C)


class CSwinBlock(nn.Module):
    """Pre-norm block: block-level ``qkv``, one or two attention branches (``attns``), ``proj``, MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Sequence[int],
        kind: str,
        split: int,
        last: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        H, W = grid_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if kind == "I":
            attns = [CSwinInLineBranch(dim, num_heads, grid_size)]
        elif last or (split >= H and split >= W):
            attns = [CSwinStripeBranch(dim, num_heads, grid_size, (H, W))]
        else:
            stripes = [(H, min(split, W)), (min(split, H), W)]
            for hs, ws in stripes:
                if H % hs or W % ws:
                    raise ValueError(
                        f"CSwin stripe width {split} must divide the {H}x{W} feature map of a softmax stage "
                        f"(or cover it): pick an img_size whose stage maps are multiples of {split} or "
                        f"at most "
                        f"{split} (e.g. 224: 14 and 7)"
                    )
            attns = [CSwinStripeBranch(dim // 2, num_heads // 2, grid_size, s) for s in stripes]
        self.attns = nn.ModuleList(attns)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        mean = x.mean(1)
        width = C // len(self.attns)
        outs = []
        for i, attn in enumerate(self.attns):
            lo, hi = i * width, (i + 1) * width
            outs.append(attn(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], mean[:, lo:hi]))
        x = x + self.drop_path(self.proj(torch.cat(outs, -1)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class InLineCSwin(HierarchicalMixin, nn.Module):
    """InLine CSWin Transformer.

    Args:
        img_size: input size the model is built for (int or (H, W)).
        in_chans, num_classes, global_pool: as in timm (``'avg'``: the official mean pooling).
        embed_dim: stage-1 width (doubled per stage).
        depths, num_heads, split_size: per stage (``split_size``: softmax stripe widths).
        attn_type: official layout (``'IISS'``; ``'M<n>'`` mixes a stage: n InLine blocks, then softmax).
        mlp_ratio, qkv_bias: as in CSWin.
        drop_rate: classifier dropout; proj_drop_rate: MLP dropout; drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size=224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 18, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_size: Sequence[int] = (1, 2, 7, 7),
        attn_type: str = "IISS",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch_name = type(self).__name__
        self.img_size: Tuple[int, int] = tuple(int(s) for s in to_2tuple(img_size))
        if min(self.img_size) < 32:
            raise ValueError(f"InLineCSwin needs img_size >= 32, got {img_size}")
        self.num_classes = num_classes
        types = block_types(attn_type, depths)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        grid = tuple((s + 4 - 7) // 4 + 1 for s in self.img_size)
        stages, prev, layer, self.feature_info = [], in_chans, 0, []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            if i == 0:
                down = ConvEmbed(in_chans, dim, 7, 4, 2)
            else:
                grid = tuple((g - 1) // 2 + 1 for g in grid)
                down = ConvEmbed(prev, dim, 3, 2, 1)
            blocks = [
                CSwinBlock(
                    dim,
                    num_heads[i],
                    grid,
                    types[i][j],
                    split_size[i],
                    i == len(depths) - 1,
                    mlp_ratio,
                    qkv_bias,
                    proj_drop_rate,
                    dpr[layer + j],
                )
                for j in range(depth)
            ]
            stages.append(TokenStage(down, blocks, grid))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev, layer = dim, layer + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm = nn.LayerNorm(prev)
        self.head = ClassifierHead(
            prev, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NCHW"
        )
        self.apply(_init_weights)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InLineCSwin) -> Dict[str, Tensor]:
    """Official InLine-CSwin checkpoint (the ``.pth`` dict as ``torch.load`` returns it, or a bare state dict;
    ``model`` is read, not ``state_dict_ema``) -> vizoo keys: ``stage1_conv_embed.{0,2}`` ->
    ``stages.0.downsample.{proj,norm}``, ``merge{i}.{conv,norm}`` -> ``stages.{i}.downsample.{proj,norm}``,
    ``stage{i}.{j}.*`` -> ``stages.{i-1}.blocks.{j}.*``, ``head`` -> ``head.fc``.

    Raises:
        ValueError: naming missing and unexpected keys (e.g. another family or depth) or shape mismatches.
    """
    import re

    state_dict = extract_state_dict(state_dict, source="the InLine checkpoint")
    if any(k.startswith("stages.") for k in state_dict):
        return check_keys(dict(state_dict), model, [], "InLine-CSwin")
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = None
        m = re.match(r"^stage1_conv_embed\.(0|2)\.(.*)$", key)
        if m:
            new = f"stages.0.downsample.{'proj' if m.group(1) == '0' else 'norm'}.{m.group(2)}"
        m = m or re.match(r"^merge(\d)\.(conv|norm)\.(.*)$", key)
        if new is None and m:
            new = f"stages.{m.group(1)}.downsample.{'proj' if m.group(2) == 'conv' else 'norm'}.{m.group(3)}"
        m = re.match(r"^stage(\d)\.(\d+)\.(.*)$", key)
        if m:
            new = f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{m.group(3)}"
        if key.startswith("norm."):
            new = key
        elif key.startswith("head."):
            new = "head.fc." + key[len("head.") :]
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return check_keys(out, model, unknown, "InLine-CSwin")


def _create(variant: str, pretrained: bool = False, **kwargs) -> InLineCSwin:
    return build_model_with_cfg(
        InLineCSwin,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return inline_cfg(url, "stages.0.downsample.proj", **{"crop_pct": 0.9, **kwargs})


default_cfgs = generate_default_cfgs(
    {
        "inline_cswin_tiny.in1k": _cfg(CHECKPOINT_URL.format("49fa2ecc543647c4b970")),
        "inline_cswin_small.in1k": _cfg(CHECKPOINT_URL.format("59f4e65f776f4052b93c")),
        "inline_cswin_base.in1k": _cfg(CHECKPOINT_URL.format("91e17121df284ae38521")),
        # the paper's 384 fine-tune (85.7 top-1); no released checkpoint
        "inline_cswin_base_384": _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    }
)


def _cswin(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> InLineCSwin:
    return _create(variant, pretrained, **dict(model_args, **kwargs))


_T = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
_S = dict(embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.4)
_B = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-T (20.6M params, 4.3 GFLOPs at 224)."""
    return _cswin("inline_cswin_tiny", pretrained, _T, kwargs)


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-S (33.0M params, 6.8 GFLOPs at 224)."""
    return _cswin("inline_cswin_small", pretrained, _S, kwargs)


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-B (73.4M params, 14.9 GFLOPs at 224)."""
    return _cswin("inline_cswin_base", pretrained, _B, kwargs)


@register_model
def inline_cswin_base_384(pretrained: bool = False, **kwargs) -> InLineCSwin:
    """InLine-CSwin-B at 384 (73M params, 46.3 GFLOPs; stripes 12; the paper's 85.7 top-1 fine-tune)."""
    return _cswin(
        "inline_cswin_base_384",
        pretrained,
        dict(_B, img_size=384, split_size=(1, 2, 12, 12), drop_path_rate=0.7),
        kwargs,
    )

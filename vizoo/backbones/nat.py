"""NAT, DiNAT and their isotropic variants, with optional GNA strided windows, registered with timm.

Papers:
    * Hassani, Walton, Li, Li, Shi. "Neighborhood Attention Transformer." CVPR 2023. arXiv 2204.07143.
    * Hassani, Shi. "Dilated Neighborhood Attention Transformer." arXiv 2209.15001.
    * Hassani et al. "Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the Speed of
      Light." arXiv 2504.16922 (the ``stride`` option).
Official code: github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/{nat,dinat,
isotropic}.py). This file is written from the papers and from reading that code; nothing is copied.

Faithful to the official code:
    * architecture, widths, depths, heads (head_dim 32 everywhere), MLP ratios, kernel sizes, dilation
      schedules, layer scale and stochastic-depth rates of every variant, so parameter counts are equal
      and MACs agree (tests/backbones/test_nat.py checks both against the official numbers);
    * the stem (two 3x3 stride-2 convs with nothing between them, then LayerNorm), the 3x3 stride-2
      downsampler without bias followed by LayerNorm(2C), pre-norm blocks, final LayerNorm, mean pooling,
      Linear head, and the official initialisation (trunc-normal 0.02 Linear weights, RPB tables too);
    * natten-0.14's zero padding of feature maps smaller than ``kernel_size * dilation`` (see
      ``vizoo.backbones.layers.NeighborhoodAttention2d``), so 11x11 DiNAT-L runs at 224 and every model
      runs on small test images;
    * ``checkpoint_filter_fn`` loads the original ``.pth`` files and the Hugging Face ``transformers``
      copies (``shi-labs/nat-*``, ``shi-labs/dinat-*``), RPB included.

Differences (none changes a pretrained model's output):
    * timm layout: the downsampler opens stage i+1 (officially it closes level i), so stage i's output is the
      stride-4*2^i feature map that ``feature_info``/``forward_intermediates`` report; keys are renamed
      (``levels.i.blocks`` -> ``stages.i.blocks``, ``gamma1`` -> ``ls1.gamma``, ``head`` -> ``head.fc``...);
    * ``forward_features`` returns the final-normed **NHWC** map ``[B, H/32, W/32, C]`` (isotropic:
      ``[B, H/16, W/16, C]``), like timm's Swin; pooling happens in the head; ``forward_intermediates`` gives
      NCHW by default (``output_fmt='NHWC'`` also accepted);
    * dropout follows timm's names: ``drop_rate`` is classifier dropout, ``proj_drop_rate`` is applied after
      the stem and inside attention/MLP (the official ``drop_rate`` did the latter; every recipe uses 0);
      attention-probability dropout is not supported (the fused operator has none; recipes use 0);
    * DiNAT dilations are computed from ``img_size`` (the design resolution) as the official schedule
      does: on odd layers of each level, ``dilation = max(1, resolution // kernel_size)`` (224: 8, 4, 2, 1;
      384: 13, 6, 3, 1; 384 with 11x11: 8, 4, 2, 1; isotropic 224: 2), or given explicitly with
      ``dilations=``. Pretrained tags set ``img_size`` and nothing else: the official 11x11 DiNAT-L, whose
      kernel changes the weights' shapes, is its own model, ``dinat_large_k11`` (timm names window sizes in the
      model name the same way, e.g. ``swin_large_patch4_window12_384``);
    * ``stride=s`` (model kwarg) turns every NA layer into a GNA strided window (stride 1 is NAT);
      strided windows have no relative position bias (``rpb`` defaults to ``stride == 1``).
    * timm's whole test contract holds: FX traces the models with the NA layer as a leaf module and the input
      check as a leaf function (timm's ``register_notrace_module`` / ``register_notrace_function``), and
      TorchScript compiles them with the chunked PyTorch attention (a Triton launch cannot be scripted).

A NAT checkpoint and a DiNAT checkpoint of the same size have identical keys and shapes (dilation is not
stored), so either loads into either model without error: pick the model name that matches the weights.
"""

import contextlib
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, LayerScale, Mlp, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    register_notrace_function,
)
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from vizoo.backbones.layers import LayerNorm, NeighborhoodAttention2d
from vizoo.hub.checkpoints import extract_state_dict
from vizoo.hub.loading import pretrained_download_errors

__all__ = ["NAT", "NATIsotropic", "NATBlock", "dinat_dilations", "checkpoint_filter_fn"]

IntSeq = Union[int, Sequence[int]]


def _ceil_half(x: int) -> int:
    return (x + 1) // 2


def dinat_dilations(
    depths: Sequence[int], img_size: int, kernel_size: int, reduction: int = 4
) -> List[List[int]]:
    """DiNAT's dilation schedule: 1 on even layers, ``max(1, res // kernel_size)`` on odd layers.

    ``res`` is the side of each level's feature map for an ``img_size`` input: ``img_size / reduction``
    (rounded up like the stride-2 convs do) for the first level, halved (rounded up) for each next one.
    For the 224 models this gives the published [1, 8, 1], [1, 4, 1, 4], [1, 2]*, [1]*; for 384 it gives
    [1, 13, 1], [1, 6, 1, 6], [1, 3]*, [1]*.

    Args:
        depths: layers per level.
        img_size: design input resolution (square side).
        kernel_size: neighborhood size.
        reduction: stride of the first level (4 for the hierarchical models, 16 for the isotropic ones).
    """
    res = math.ceil(img_size / reduction)
    out = []
    for depth in depths:
        dil = max(1, res // kernel_size)
        out.append([1 if j % 2 == 0 else dil for j in range(depth)])
        res = _ceil_half(res)
    return out


def _drop_path_rates(total: int, rate: float) -> List[float]:
    return [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]


# --------------------------------------------------------------------------------------------- blocks


class ConvStem(nn.Module):
    """Two 3x3 stride-2 convs (in -> C/2 -> C, no activation between), then LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: Callable[..., nn.Module] = LayerNorm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last from the first conv on: the convs then write NHWC, so the permute below is free and an
        # NCHW input runs as fast as a channels-last one (one copy of the 3-channel image instead)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.conv2(self.conv1(x)).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """3x3 stride-2 convolution without bias (C -> 2C) and LayerNorm(2C), on NHWC maps."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Callable[..., nn.Module] = LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution and LayerNorm (isotropic models); pads H, W up to a multiple of the
    patch size on the bottom/right like the official code. NCHW in, NHWC out."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int = 16,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        H, W = x.shape[-2], x.shape[-1]
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))  # no branch on the size: FX traces it
        x = x.contiguous(memory_format=torch.channels_last)  # the conv writes NHWC: the permute is free
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class NATBlock(nn.Module):
    """Pre-norm transformer block with neighborhood attention, on NHWC maps (optional layer scale)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        stride: int = 1,
        rpb: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        layer_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        pad_small: bool = True,
        attn_backend: Optional[str] = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2d(
            dim,
            num_heads,
            kernel_size=kernel_size,
            dilation=dilation,
            stride=stride,
            qkv_bias=qkv_bias,
            rpb=rpb,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            pad_small=pad_small,
            backend=attn_backend,
        )
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        for norm in (self.norm1, self.norm2):  # their outputs only feed a Linear (qkv, fc1)
            if isinstance(norm, LayerNorm):
                norm.autocast_output = True

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class NATStage(nn.Module):
    """One level: an optional downsampler (stages 1..3), then the blocks."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        downsample: bool,
        blocks: List[nn.Module],
        norm_layer: Callable[..., nn.Module] = LayerNorm,
    ):
        super().__init__()
        self.downsample = ConvDownsample(dim, out_dim, norm_layer) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _init_weights(module: nn.Module) -> None:
    """Official initialisation: trunc-normal(0.02) Linear weights with zero bias, unit LayerNorms."""
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return  # shapes only (e.g. counting parameters or MACs): nothing to initialise
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _as_int(value: IntSeq) -> int:
    if isinstance(value, int):
        return value
    value = tuple(value)
    return min(value[-2:])  # (H, W) or (C, H, W): dilations are sized for the shorter side


def _check_dilations(dilations: Sequence[Sequence[int]], depths: Sequence[int]) -> List[List[int]]:
    dilations = [list(d) for d in dilations]
    if len(dilations) != len(depths) or any(len(d) != n for d, n in zip(dilations, depths)):
        raise ValueError(
            f"dilations must hold one list per level with one int per layer (depths {list(depths)}), "
            f"got {dilations}"
        )
    if any(not isinstance(x, int) or x < 1 for d in dilations for x in d):
        raise ValueError(f"dilations must be ints >= 1, got {dilations}")
    return dilations


class _ContractMixin:
    """timm's classifier / grad-checkpointing methods shared by both model classes."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Relative position bias tables are excluded from weight decay, as in the official recipe."""
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _to_fmt(x: Tensor, output_fmt: str) -> Tensor:
    return x.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x


def _check_fmt(output_fmt: str) -> None:
    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")


# --------------------------------------------------------------------------------------------- models


class NAT(_ContractMixin, nn.Module):
    """Hierarchical Neighborhood Attention Transformer (NAT; DiNAT: ``dilated=True``; GNA: ``stride``).

    Args:
        in_chans: input image channels.
        num_classes: classifier classes (0: no classifier).
        global_pool: ``'avg'`` (official), ``'max'``, ``'avgmax'`` or ``''`` (no pooling).
        embed_dim: channels of the first level (doubled at each next level).
        depths: layers per level.
        num_heads: heads per level.
        mlp_ratio: MLP hidden width / channels.
        kernel_size: neighborhood size of every NA layer.
        dilated: DiNAT dilation schedule computed from ``img_size`` (ignored when ``dilations`` is given).
        dilations: explicit per-level, per-layer dilations (overrides ``dilated``).
        img_size: design input resolution, used only to size DiNAT dilations; any input size runs.
        stride: GNA stride of every NA layer (1: NAT/DiNAT).
        rpb: relative position bias; default True for stride 1, False otherwise (stride > 1 forbids it).
        qkv_bias: bias on the qkv projection.
        qk_scale: attention scale (default head_dim ** -0.5).
        layer_scale: layer-scale init value (None: no layer scale).
        drop_rate: classifier dropout.
        proj_drop_rate: dropout after the stem, in attention output and in the MLP.
        attn_drop_rate: must be 0 (no attention dropout in the fused operator).
        drop_path_rate: stochastic depth, linearly increasing over all layers.
        norm_layer: normalisation layer (LayerNorm in the official models).
        pad_small: zero-pad maps smaller than ``kernel_size * dilation`` (official behaviour).
        attn_backend: ``vizoo.kernels.na2d`` backend (None: Triton on CUDA, chunked elsewhere).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilated: bool = False,
        dilations: Optional[Sequence[Sequence[int]]] = None,
        img_size: IntSeq = 224,
        stride: int = 1,
        rpb: Optional[bool] = None,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        layer_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        pad_small: bool = True,
        attn_backend: Optional[str] = None,
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if not depths or len(num_heads) != len(depths):
            raise ValueError(f"depths and num_heads need one entry per level, got {depths} and {num_heads}")
        img_size = _as_int(img_size)
        if dilations is not None:
            dilations = _check_dilations(dilations, depths)
        elif dilated:
            dilations = dinat_dilations(depths, img_size, kernel_size)
        else:
            dilations = [[1] * d for d in depths]
        rpb = (stride == 1) if rpb is None else rpb
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.kernel_size = kernel_size
        self.dilations = dilations
        self.grad_checkpointing = False

        self.stem = ConvStem(in_chans, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = _drop_path_rates(sum(depths), drop_path_rate)
        stages, self.feature_info = [], []
        dim, prev_dim, layer = embed_dim, embed_dim, 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            blocks = [
                NATBlock(
                    dim,
                    heads,
                    kernel_size=kernel_size,
                    dilation=dilations[i][j],
                    stride=stride,
                    rpb=rpb,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    layer_scale=layer_scale,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[layer + j],
                    norm_layer=norm_layer,
                    pad_small=pad_small,
                    attn_backend=attn_backend,
                )
                for j in range(depth)
            ]
            stages.append(NATStage(prev_dim, dim, downsample=i > 0, blocks=blocks, norm_layer=norm_layer))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev_dim, layer = dim, layer + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dim
        self.norm = norm_layer(dim)
        self.head = ClassifierHead(
            dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
        )
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """Final-normed NHWC feature map ``[B, H/32, W/32, num_features]``."""
        check_image(x)
        x = self.pos_drop(self.stem(x))
        x = self.stages(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs (strides 4, 8, 16, 32) and, unless ``intermediates_only``, the final features.

        Args:
            x: images ``[B, C, H, W]``.
            indices: last n stages if int, these stages if a list, all if None.
            norm: apply the final norm to the last stage's intermediate.
            stop_early: stop after the last requested stage.
            output_fmt: ``'NCHW'`` or ``'NHWC'`` for the intermediates.
            intermediates_only: return only the intermediates.
        """
        _check_fmt(output_fmt)
        check_image(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        x = self.pos_drop(self.stem(x))
        intermediates = []
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                inter = self.norm(x) if norm and i == last else x
                intermediates.append(_to_fmt(inter, output_fmt))
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last requested one (and the norm/head); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


class NATIsotropic(_ContractMixin, nn.Module):
    """Isotropic (ViT-like, one resolution) NAT / DiNAT from the DiNAT paper.

    Args:
        in_chans: input image channels.
        num_classes: classifier classes (0: no classifier).
        global_pool: ``'avg'`` (official), ``'max'``, ``'avgmax'`` or ``''``.
        patch_size: patch side of the embedding convolution.
        embed_dim: channels.
        depth: number of layers.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / channels.
        kernel_size: neighborhood size.
        dilated: DiNAT schedule: odd layers dilated by ``max(1, (img_size / patch_size) // kernel_size)``
            (2 at 224).
        dilations: explicit per-layer dilations (overrides ``dilated``).
        img_size: design input resolution (only sizes the dilations).
        stride, rpb, qkv_bias, qk_scale, layer_scale, drop_rate, proj_drop_rate, attn_drop_rate,
        drop_path_rate, norm_layer, pad_small, attn_backend: as in ``NAT``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        dilated: bool = False,
        dilations: Optional[Sequence[int]] = None,
        img_size: IntSeq = 224,
        stride: int = 1,
        rpb: Optional[bool] = None,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        layer_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        pad_small: bool = True,
        attn_backend: Optional[str] = None,
    ):
        super().__init__()
        img_size = _as_int(img_size)
        if dilations is not None:
            dilations = _check_dilations([dilations], [depth])[0]
        elif dilated:
            dilations = dinat_dilations([depth], img_size, kernel_size, reduction=patch_size)[0]
        else:
            dilations = [1] * depth
        rpb = (stride == 1) if rpb is None else rpb
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.kernel_size = kernel_size
        self.dilations = dilations
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm_layer)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = _drop_path_rates(depth, drop_path_rate)
        self.blocks = nn.Sequential(
            *[
                NATBlock(
                    embed_dim,
                    num_heads,
                    kernel_size=kernel_size,
                    dilation=dilations[j],
                    stride=stride,
                    rpb=rpb,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    layer_scale=layer_scale,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[j],
                    norm_layer=norm_layer,
                    pad_small=pad_small,
                    attn_backend=attn_backend,
                )
                for j in range(depth)
            ]
        )
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{j}") for j in range(depth)
        ]
        self.num_features = self.head_hidden_size = embed_dim
        self.norm = norm_layer(embed_dim)
        self.head = ClassifierHead(
            embed_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
        )
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """Final-normed NHWC token map ``[B, ceil(H/16), ceil(W/16), num_features]``."""
        check_image(x)
        x = self.pos_drop(self.patch_embed(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Block outputs (all at stride ``patch_size``) and, unless ``intermediates_only``, final features.

        Args:
            x: images ``[B, C, H, W]``.
            indices: last n blocks if int, these blocks if a list, all if None.
            norm: apply the final norm to every intermediate (one resolution, one width).
            stop_early: stop after the last requested block.
            output_fmt: ``'NCHW'`` or ``'NHWC'`` for the intermediates.
            intermediates_only: return only the intermediates.
        """
        _check_fmt(output_fmt)
        check_image(x)
        take, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        x = self.pos_drop(self.patch_embed(x))
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take:
                intermediates.append(_to_fmt(self.norm(x) if norm else x, output_fmt))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the blocks after the last requested one (and the norm/head); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


@register_notrace_function  # FX records a call instead of tracing the rank check (FX wraps public names only)
def check_image(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {x.shape}")


# --------------------------------------------------------------------------------------------- checkpoints

_BLOCK_PARTS = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|attn\.rpb"
_HF_BLOCK_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "attention.self.rpb": "attn.rpb",
}


def _map_official(key: str) -> Optional[str]:
    """Original repo key -> vizoo key (None when unknown)."""
    simple = {
        "patch_embed.proj.0.": "stem.conv1.",
        "patch_embed.proj.1.": "stem.conv2.",
        "patch_embed.norm.": "stem.norm.",
    }
    for old, new in simple.items():
        if key.startswith(old) and key.count(".") == old.count("."):
            return new + key[len(old) :]
    if m := re.fullmatch(r"levels\.(\d+)\.blocks\.(\d+)\.(" + _BLOCK_PARTS + ")", key):
        return f"stages.{m[1]}.blocks.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"levels\.(\d+)\.blocks\.(\d+)\.gamma([12])", key):
        return f"stages.{m[1]}.blocks.{m[2]}.ls{m[3]}.gamma"
    if m := re.fullmatch(r"levels\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", key):
        return f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
    return _map_common(key)


def _map_official_isotropic(key: str) -> Optional[str]:
    if re.fullmatch(r"patch_embed\.(proj|norm)\.(weight|bias)", key):
        return key
    if m := re.fullmatch(r"layers\.(\d+)\.(" + _BLOCK_PARTS + ")", key):
        return f"blocks.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"layers\.(\d+)\.gamma([12])", key):
        return f"blocks.{m[1]}.ls{m[2]}.gamma"
    return _map_common(key)


def _map_common(key: str) -> Optional[str]:
    if re.fullmatch(r"norm\.(weight|bias)", key):
        return key
    if m := re.fullmatch(r"head\.(weight|bias)", key):
        return f"head.fc.{m[1]}"
    return None


def _convert_hf(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """transformers ``Nat*``/``Dinat*`` keys -> vizoo keys; returns the converted dict and unknown keys."""
    out: Dict[str, Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        k = re.sub(r"^(nat|dinat)\.", "", key)
        if k.startswith("embeddings.patch_embeddings.projection.0."):
            out["stem.conv1." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("embeddings.patch_embeddings.projection.1."):
            out["stem.conv2." + k.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"embeddings\.norm\.(weight|bias)", k):
            out[f"stem.norm.{m[1]}"] = value
        elif m := re.fullmatch(
            r"encoder\.levels\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", k
        ):
            out[f"stages.{int(m[1]) + 1}.downsample.{m[2]}"] = value
        elif m := re.fullmatch(r"encoder\.levels\.(\d+)\.layers\.(\d+)\.(.+)", k):
            prefix, part = f"stages.{m[1]}.blocks.{m[2]}", m[3]
            if qm := re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", part):
                qkv.setdefault((prefix, qm[2]), {})[qm[1]] = value
            elif part == "layer_scale_parameters":
                out[f"{prefix}.ls1.gamma"], out[f"{prefix}.ls2.gamma"] = value[0].clone(), value[1].clone()
            elif pm := re.fullmatch(r"(.+?)(\.weight|\.bias|)", part):
                if pm[1] in _HF_BLOCK_PARTS and (pm[2] or pm[1] == "attention.self.rpb"):
                    out[f"{prefix}.{_HF_BLOCK_PARTS[pm[1]]}{pm[2]}"] = value
                else:
                    unknown.append(key)
        elif m := re.fullmatch(r"layernorm\.(weight|bias)", k):
            out[f"norm.{m[1]}"] = value
        elif m := re.fullmatch(r"classifier\.(weight|bias)", k):
            out[f"head.fc.{m[1]}"] = value
        else:
            unknown.append(key)
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            unknown.extend(f"{prefix}.attention.self.{p}.{kind}" for p in parts)
            continue
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out, unknown


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Tensor]:
    """Turn an official NAT/DiNAT checkpoint into vizoo's layout, checking it against ``model``.

    Accepted layouts:
        * the original repo's ``.pth`` (bare, or in any wrapper that
          :func:`vizoo.hub.checkpoints.extract_state_dict` reads: ``model``/``state_dict``, ``module.`` prefixes):
          ``patch_embed.proj.{0,1}``, ``levels.i.blocks.j.{norm1, attn.qkv, attn.rpb, attn.proj,
          norm2, mlp.fc1, mlp.fc2, gamma1, gamma2}``, ``levels.i.downsample.{reduction, norm}``, ``norm``,
          ``head``; isotropic models ``patch_embed.{proj, norm}`` and ``layers.j.*``;
        * Hugging Face transformers (``NatForImageClassification`` / ``DinatForImageClassification`` with
          ``nat.``/``dinat.`` prefixes, or the bare ``NatModel``/``DinatModel``): separate
          ``query``/``key``/``value`` are concatenated into ``qkv``; ``layer_scale_parameters [2, C]`` split
          into
          ``ls1.gamma``/``ls2.gamma``;
        * vizoo's own layout (returned unchanged apart from unwrapping).

    Classifier keys (``head.fc.*``) pass through unchecked, so timm can drop them when ``num_classes``
    differs.
    NAT and DiNAT checkpoints of one size have the same keys: the filter cannot tell them apart.

    Raises:
        ValueError: on keys it cannot map, on model keys the checkpoint lacks, or on shape mismatches (e.g. an
            11x11 RPB table loaded into a 7x7 model).
    """
    state_dict = extract_state_dict(state_dict, source="the NAT/DiNAT checkpoint")
    keys = list(state_dict)
    model_sd = model.state_dict()
    if any(k.startswith(("stem.", "stages.", "blocks.")) for k in keys):
        out, unknown = dict(state_dict), []
    elif any(re.match(r"^((nat|dinat)\.)?(embeddings\.patch_embeddings|encoder\.levels)\.", k) for k in keys):
        out, unknown = _convert_hf(state_dict)
    else:
        mapper = _map_official_isotropic if any(k.startswith("layers.") for k in keys) else _map_official
        out, unknown = {}, []
        for key, value in state_dict.items():
            new = mapper(key)
            if new is None:
                unknown.append(key)
            else:
                out[new] = value
    is_head = lambda k: k.startswith("head.fc.")  # noqa: E731
    unexpected = sorted(unknown + [k for k in out if k not in model_sd and not is_head(k)])
    missing = sorted(k for k in model_sd if k not in out and not is_head(k))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}, "
            f"{len(missing)} missing key(s) {missing[:8]}. "
            "Check the model name (NAT/DiNAT size, isotropic or not, layer scale) against the checkpoint."
        )
    bad = [
        (k, tuple(v.shape), tuple(model_sd[k].shape))
        for k, v in out.items()
        if k in model_sd and not is_head(k) and tuple(v.shape) != tuple(model_sd[k].shape)
    ]
    if bad:
        hint = (
            " (an RPB table of another kernel size: pass the matching kernel_size)"
            if any(k.endswith(".rpb") for k, _, _ in bad)
            else ""
        )
        raise ValueError(
            f"checkpoint shapes do not match the model{hint}: "
            + ", ".join(f"{k} {a} vs model {b}" for k, a, b in bad[:8])
        )
    return out


# --------------------------------------------------------------------------------------------- registry

# Tags that once changed the architecture and are now models of their own: named in the error for the old tag
# (timm would otherwise build the plain architecture under the unknown tag with only a logged warning).
_MOVED_TAGS = {"dinat_large.in22k_ft_in1k_384_11x11": "dinat_large_k11.in22k_ft_in1k_384"}


def _create(cls: type, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    tag = kwargs.get("pretrained_cfg")
    if isinstance(tag, str) and f"{variant}.{tag}" in _MOVED_TAGS:
        raise ValueError(
            f"{variant}.{tag} is now a model of its own: use {_MOVED_TAGS[f'{variant}.{tag}']!r} "
            "(its 11x11 neighborhoods change the weights' shapes, so a tag no longer switches them on)."
        )
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=tag)
    # the tag's resolution sizes DiNAT's dilations (exported configs record it; a kwarg wins)
    implied = {} if cfg.input_size is None or "img_size" in kwargs else {"img_size": cfg.input_size[-1]}
    # all four stages of the hierarchical models, the last three blocks of the isotropic ones (as in ViT)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))) if cls is NAT else 3)
    with pretrained_download_errors(variant, cfg) if pretrained else contextlib.nullcontext():
        model = build_model_with_cfg(
            cls,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
            **kwargs,
            **implied,
        )
    # timm merges the caller's kwargs over this, so exported configs also carry what the tag implied
    model._model_args = dict(getattr(model, "_model_args", {}), **implied)
    return model


_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/"
_NAT_PAPER = dict(paper_name="Neighborhood Attention Transformer", paper_ids="arXiv:2204.07143")
_DINAT_PAPER = dict(paper_name="Dilated Neighborhood Attention Transformer", paper_ids="arXiv:2209.15001")


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "min_input_size": (3, 32, 32),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "license": "mit",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


def _iso_cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return _cfg(url, pool_size=(14, 14), first_conv="patch_embed.proj", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "nat_mini.in1k": _cfg(
            _NAT_URL + "nat_mini.pth", hf_hub_id="shi-labs/nat-mini-in1k-224", **_NAT_PAPER
        ),
        "nat_tiny.in1k": _cfg(_NAT_URL + "nat_tiny.pth", **_NAT_PAPER),
        "nat_small.in1k": _cfg(
            _NAT_URL + "nat_small.pth", hf_hub_id="shi-labs/nat-small-in1k-224", **_NAT_PAPER
        ),
        "nat_base.in1k": _cfg(
            _NAT_URL + "nat_base.pth", hf_hub_id="shi-labs/nat-base-in1k-224", **_NAT_PAPER
        ),
        "dinat_mini.in1k": _cfg(
            _DINAT_URL + "imagenet1k/dinat_mini_in1k_224.pth",
            hf_hub_id="shi-labs/dinat-mini-in1k-224",
            **_DINAT_PAPER,
        ),
        "dinat_tiny.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_tiny_in1k_224.pth", **_DINAT_PAPER),
        "dinat_small.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_small_in1k_224.pth", **_DINAT_PAPER),
        "dinat_base.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_base_in1k_224.pth", **_DINAT_PAPER),
        "dinat_large.in22k_ft_in1k": _cfg(
            _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_224.pth", **_DINAT_PAPER
        ),
        "dinat_large.in22k_ft_in1k_384": _cfg(
            _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384.pth",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
            **_DINAT_PAPER,
        ),
        "dinat_large_k11.in22k_ft_in1k_384": _cfg(
            _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384_11x11.pth",
            hf_hub_id="shi-labs/dinat-large-11x11-in22k-in1k-384",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
            **_DINAT_PAPER,
        ),
        "nat_iso_small.in1k": _iso_cfg(
            _DINAT_URL + "isotropic/nat_isotropic_small_in1k_224.pth", **_DINAT_PAPER
        ),
        "nat_iso_base.in1k": _iso_cfg(
            _DINAT_URL + "isotropic/nat_isotropic_base_in1k_224.pth", **_DINAT_PAPER
        ),
        "dinat_iso_small.in1k": _iso_cfg(
            _DINAT_URL + "isotropic/dinat_isotropic_small_in1k_224.pth", **_DINAT_PAPER
        ),
        "dinat_iso_base.in1k": _iso_cfg(
            _DINAT_URL + "isotropic/dinat_isotropic_base_in1k_224.pth", **_DINAT_PAPER
        ),
    }
)

_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, drop_path_rate=0.3)
_BASE = dict(
    embed_dim=128,
    depths=(3, 4, 18, 5),
    num_heads=(4, 8, 16, 32),
    mlp_ratio=2.0,
    drop_path_rate=0.5,
    layer_scale=1e-5,
)
_LARGE = dict(
    embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0, drop_path_rate=0.35
)
_ISO_SMALL = dict(embed_dim=384, depth=12, num_heads=12, mlp_ratio=4.0, drop_path_rate=0.1)
_ISO_BASE = dict(embed_dim=768, depth=12, num_heads=24, mlp_ratio=4.0, drop_path_rate=0.4)


def _nat(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> NAT:
    return _create(NAT, variant, pretrained, **dict(model_args, **kwargs))


def _iso(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> NATIsotropic:
    return _create(NATIsotropic, variant, pretrained, **dict(model_args, **kwargs))


@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini (20.0M params, 2.7 GMACs at 224)."""
    return _nat("nat_mini", pretrained, _MINI, kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny (27.9M params, 4.3 GMACs at 224)."""
    return _nat("nat_tiny", pretrained, _TINY, kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small (50.7M params, 7.8 GMACs at 224), layer scale 1e-5."""
    return _nat("nat_small", pretrained, dict(_SMALL, layer_scale=1e-5), kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base (89.8M params, 13.7 GMACs at 224), layer scale 1e-5."""
    return _nat("nat_base", pretrained, _BASE, kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini (20.0M params, 2.7 GMACs at 224)."""
    return _nat("dinat_mini", pretrained, dict(_MINI, dilated=True), kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny (27.9M params, 4.3 GMACs at 224)."""
    return _nat("dinat_tiny", pretrained, dict(_TINY, dilated=True), kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small (50.7M params, 7.8 GMACs at 224); no layer scale, unlike NAT-Small."""
    return _nat("dinat_small", pretrained, dict(_SMALL, dilated=True), kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base (89.8M params, 13.7 GMACs at 224), layer scale 1e-5."""
    return _nat("dinat_base", pretrained, dict(_BASE, dilated=True), kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large (200.9M params; 30.5 GMACs at 224, 89.7 at 384).

    Tags: ``in22k_ft_in1k`` (224) and ``in22k_ft_in1k_384`` (img_size 384: dilations 13/6/3). The 11x11 model is
    :func:`dinat_large_k11`.
    """
    return _nat("dinat_large", pretrained, dict(_LARGE, dilated=True), kwargs)


@register_model
def dinat_large_k11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large with 11x11 neighborhoods (201.1M params, 92.4 GMACs at 384), the official
    ``dinat_large_384_11x11``. Tag ``in22k_ft_in1k_384`` (img_size 384: dilations 8/4/2, those of 7x7 at 224).
    """
    return _nat("dinat_large_k11", pretrained, dict(_LARGE, dilated=True, kernel_size=11), kwargs)


@register_model
def nat_iso_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic NAT-S (22.0M params, 4.3 GMACs at 224)."""
    return _iso("nat_iso_small", pretrained, _ISO_SMALL, kwargs)


@register_model
def nat_iso_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic NAT-B (86.5M params, 17.0 GMACs at 224)."""
    return _iso("nat_iso_base", pretrained, _ISO_BASE, kwargs)


@register_model
def dinat_iso_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic DiNAT-S (22.0M params, 4.3 GMACs at 224; odd layers dilated by 2)."""
    return _iso("dinat_iso_small", pretrained, dict(_ISO_SMALL, dilated=True), kwargs)


@register_model
def dinat_iso_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic DiNAT-B (86.5M params, 17.0 GMACs at 224; odd layers dilated by 2)."""
    return _iso("dinat_iso_base", pretrained, dict(_ISO_BASE, dilated=True), kwargs)

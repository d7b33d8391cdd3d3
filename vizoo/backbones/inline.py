"""InLine attention layers shared by the InLine DeiT, PVT, Swin and CSwin backbones.

Paper: Han, Pu, Xia, Song, Huang. "Bridging the Divide: Reconsidering Softmax and Linear Attention."
NeurIPS 2024, arXiv 2412.06590. Official code: github.com/LeapLabTHU/InLine (models/inline_{deit,pvt,swin,
cswin}.py, timm 0.4.12). Written from the paper and from reading that code; nothing is copied.

An InLine attention module computes, per head, the injective linear attention of ``vizoo.kernels.inline_attn``
(weights ``(scale/N)(q_i.k_j - q_i.mean k) + 1/N``, identity feature map, ``scale = head_dim ** -0.5``: the
official scale) over all tokens it is given, and adds the paper's *local residual*: a per-sample, per-channel
3x3 depthwise convolution of V (zero padding, no bias) whose 9 taps per channel come from a small MLP on the
mean token, ``Conv1d(C, C, 1, groups=heads) -> GELU -> Conv1d(C, 9C, 1, groups=heads)`` (kept as 1x1 Conv1d so
the official keys ``attn.residual.{0,2}`` load unchanged; output row ``9c + 3 ky + kx`` is channel ``c``'s tap
``(ky, kx)``). The residual is added before the output projection; prefix (class) tokens get none.

Faithful: the math above, the module parameters and names, what feeds the mean (the module's input tokens,
class token included in DeiT; CSwin passes its pre-norm block input), the grouped MLP and its channel order.
Differs: the global term runs through ``inline_attn`` (fused Triton kernel on CUDA) instead of the official
``Q (K^T V)`` with K and V pre-scaled by ``sqrt(scale/N)`` (same value); the grid of patch tokens is given
(``grid_size``) instead of ``int(sqrt(N))``, so non-square inputs work (the official code assumes square
ones).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import ClassifierHead, trunc_normal_
from timm.models import checkpoint_seq, register_notrace_function, register_notrace_module
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from vizoo.kernels import inline_attn
from vizoo.kernels.inline.reference import local_residual

__all__ = [
    "InLineAttention",
    "InLineQKVAttention",
    "ConvEmbed",
    "TokenStage",
    "HierarchicalMixin",
    "inline_mix",
    "residual_mlp",
    "check_image_size",
]


def residual_mlp(dim: int, num_heads: int) -> nn.Sequential:
    """The MLP that predicts the local residual's 3x3 taps from the mean token
    (``[B, C, 1] -> [B, 9C, 1]``)."""
    return nn.Sequential(
        nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads),
        nn.GELU(),
        nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads),
    )


@torch.jit.ignore
def _global(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``inline_attn`` behind a TorchScript boundary (scripted models call it as Python)."""
    return inline_attn(q, k, v, scale=scale)


@register_notrace_function
@torch.jit.ignore
def check_image_size(x: Tensor, img_size: Tuple[int, int], model: str) -> None:
    """``ValueError`` unless ``x`` is ``[B, C, H, W]`` with ``(H, W) == img_size`` (kept out of FX graphs)."""
    if x.dim() != 4 or tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f"{model} was built for {img_size[0]}x{img_size[1]} images and got input of shape "
            f"{tuple(x.shape)}; build it with img_size=(H, W) for another size"
        )


@register_notrace_module
class InLineAttention(nn.Module):
    """InLine attention over ``prefix + H*W`` tokens ``[B, N, C]`` (fused ``qkv`` projection).

    Args:
        dim: channels ``C``.
        num_heads: heads (every released model uses head dim 32).
        qkv_bias: bias on ``qkv``.
        proj_drop: dropout after ``proj``.
        grid_size: ``(H, W)`` of the patch tokens (the local residual's map).
        num_prefix_tokens: leading tokens (class token) that take part in attention but get no local residual.
        **kwargs: ignored (timm's ``Block`` passes options of softmax attention, e.g. ``qk_norm``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        grid_size: Sequence[int] = (14, 14),
        num_prefix_tokens: int = 0,
        **kwargs,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.residual = residual_mlp(dim, num_heads)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        for linear in (self.qkv, self.proj):
            trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def set_window_size(self, window_size: Sequence[int]) -> None:
        """Called by timm's Swin block when the input size changes: the grid follows the window."""
        self.grid_size = (int(window_size[0]), int(window_size[1]))

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
    ) -> Tensor:
        B, N, C = x.shape
        H, W = self.grid_size
        p = self.num_prefix_tokens
        if N != p + H * W or C != self.dim:
            raise ValueError(f"InLineAttention expects [B, {p} + {H}*{W}, {self.dim}] tokens, got {x.shape}")
        if mask is not None or attn_mask is not None or is_causal:
            raise ValueError(
                "InLineAttention attends to all its tokens: masks and is_causal are not supported"
            )
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = inline_mix(q, k, v, self.residual(x.mean(1).unsqueeze(-1)), self.grid_size, p, self.scale)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, grid_size={self.grid_size}"


def inline_mix(
    q: Tensor, k: Tensor, v: Tensor, taps: Tensor, grid_size: Tuple[int, int], prefix: int, scale: float
) -> Tensor:
    """Global InLine term plus local residual for ``[B, N, heads, dim]`` q, k, v; returns ``[B, N, C]``."""
    B, N, heads, dim = q.shape
    C = heads * dim
    H, W = grid_size
    out = _global(q, k, v, scale).reshape(B, N, C)
    res = local_residual(taps, v[:, prefix:].reshape(B, H, W, C)).reshape(B, H * W, C).to(out.dtype)
    if prefix > 0:
        return torch.cat([out[:, :prefix], out[:, prefix:] + res], 1)
    return out + res


@register_notrace_module
class InLineQKVAttention(nn.Module):
    """InLine attention with separate ``q`` and ``kv`` projections (InLine-PVT's layout), no prefix tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        grid_size: Sequence[int] = (56, 56),
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.residual = residual_mlp(dim, num_heads)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        H, W = self.grid_size
        if N != H * W or C != self.dim:
            raise ValueError(f"InLineQKVAttention expects [B, {H}*{W}, {self.dim}] tokens, got {x.shape}")
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim)
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim)
        out = inline_mix(
            q, kv[:, :, 0], kv[:, :, 1], self.residual(x.mean(1).unsqueeze(-1)), self.grid_size, 0, self.scale
        )
        return self.proj_drop(self.proj(out))


class ConvEmbed(nn.Module):
    """Convolution, flatten to tokens, LayerNorm (and an absolute position embedding when ``grid_size`` is
    given): PVT's patch embeddings, CSwin's stem and merge layers. NCHW in, ``[B, H*W, C]`` out."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        padding: int = 0,
        eps: float = 1e-5,
        grid_size: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chs, eps=eps)
        if grid_size is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, int(grid_size[0]) * int(grid_size[1]), out_chs))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_parameter("pos_embed", None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.proj(x).flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x


class TokenStage(nn.Module):
    """``downsample`` (NCHW -> tokens), then blocks on ``[B, H*W, C]`` tokens, back to NCHW ``[B, C, H, W]``.
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], grid_size: Sequence[int]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        B, N, C = x.shape
        return x.transpose(1, 2).reshape(B, C, self.grid_size[0], self.grid_size[1])


class HierarchicalMixin:
    """timm's model contract for the InLine PVT and CSwin models: ``self.stages`` (``TokenStage``s, NCHW
    maps at strides 4, 8, 16, 32), ``self.norm`` (over channels, or Identity), ``self.head``
    (``ClassifierHead`` on NCHW), ``self.img_size``, ``self.feature_info``."""

    def _norm(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.downsample",
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
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith("pos_embed")}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's NCHW map ``[B, C, H/32, W/32]`` (after the final norm where the model has one)."""
        check_image_size(x, self.img_size, self.arch_name)
        return self._norm(self.stages(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs (strides 4, 8, 16, 32; NCHW or NHWC) and, unless ``intermediates_only``, the final
        features. ``indices``: last n stages if int, these stages if a list, all if None."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        check_image_size(x, self.img_size, self.arch_name)
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                inter = self._norm(x) if norm and i == last else x
                intermediates.append(inter.permute(0, 2, 3, 1) if output_fmt == "NHWC" else inter)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self._norm(x)
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
            self.head = ClassifierHead(self.num_features, 0, pool_type="", input_fmt="NCHW")
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


CHECKPOINT_URL = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # the official README's download links


def inline_cfg(url: str, first_conv: str, **kwargs) -> Dict[str, Any]:
    """The pretrained cfg every InLine family shares; families give their first conv and what differs."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "fixed_input_size": True,
        "first_conv": first_conv,
        "classifier": "head.fc",
        "paper_ids": "arXiv:2412.06590",
        "paper_name": "Bridging the Divide: Reconsidering Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/InLine",
        "license": "unknown",  # the official repository has no licence file (the Hub's value for that case)
        **kwargs,
    }


def check_keys(
    out: Dict[str, Tensor], model: nn.Module, unknown: Sequence[str], family: str
) -> Dict[str, Tensor]:
    """Strict key and shape check of a converted state dict against ``model`` (classifier keys pass, so timm
    can drop them when ``num_classes`` differs). Raises ``ValueError`` naming missing and unexpected keys."""
    model_sd = model.state_dict()
    is_head = lambda k: k.startswith(("head.", "head.fc."))  # noqa: E731
    unexpected = sorted(list(unknown) + [k for k in out if k not in model_sd and not is_head(k)])
    missing = sorted(k for k in model_sd if k not in out and not is_head(k))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: {len(unexpected)} unexpected key(s) "
            f"{unexpected[:8]}, {len(missing)} missing key(s) {missing[:8]}. Check that the checkpoint is an "
            f"{family} checkpoint of this variant."
        )
    bad = [
        (k, tuple(v.shape), tuple(model_sd[k].shape))
        for k, v in out.items()
        if k in model_sd and not is_head(k) and v.shape != model_sd[k].shape
    ]
    if bad:
        raise ValueError(
            "checkpoint shapes do not match the model (another variant?): "
            + ", ".join(f"{k} {a} vs model {b}" for k, a, b in bad[:8])
        )
    return out


def block_types(layout: str, depths: Sequence[int]) -> list:
    """Per stage, per block ``'I'`` (InLine) or ``'S'`` (softmax) from the official layout string: one letter
    per stage, ``'M<n>'`` for the last mixed stage (``n`` InLine blocks, then softmax), e.g. ``'IIMS2'``."""
    letters, mixed = [], 0
    i = 0
    while i < len(layout):
        if layout[i] == "M":
            letters.append("M")
            i += 1
        elif layout[i] in "IS":
            letters.append(layout[i])
            i += 1
        elif layout[i].isdigit():
            mixed = int(layout[i:])
            break
        else:
            raise ValueError(f"attn_type {layout!r}: letters must be I, S or M (then the InLine count)")
    if len(letters) != len(depths):
        raise ValueError(f"attn_type {layout!r} names {len(letters)} stages, the model has {len(depths)}")
    return [
        [("I" if j < mixed else "S") if t == "M" else t for j in range(d)] for t, d in zip(letters, depths)
    ]

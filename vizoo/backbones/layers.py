"""Shared backbone building blocks.

``NeighborhoodAttention2d`` is the attention layer of NAT (Hassani et al., "Neighborhood Attention
Transformer", CVPR 2023, arXiv 2204.07143), DiNAT (Hassani & Shi, "Dilated Neighborhood Attention
Transformer", arXiv 2209.15001) and GNA (Hassani et al., "Generalized Neighborhood Attention", arXiv
2504.16922) on channels-last feature maps ``[B, H, W, C]``. The attention itself is
``vizoo.kernels.na2d`` (NATTEN's heads-last layout and border rules, with NAT's relative position bias).

Faithful to the official NAT/DiNAT layer (natten 0.14's ``NeighborhoodAttention2D`` module, which the
published checkpoints were trained with):

* one fused ``qkv`` Linear whose output rows are ordered (q | k | v), each head-major;
* the query is scaled by ``head_dim ** -0.5`` (or ``qk_scale``) before the dot product, then the relative
  position bias ``rpb[head, dy + k - 1, dx + k - 1]`` (key-minus-query offset) is added;
* ``rpb`` is initialised from a normal(0, 0.02) truncated to [-2, 2], like the official layer;
* **small inputs are zero-padded**: when ``H`` or ``W`` is smaller than ``kernel_size * dilation``, the
  (normalised) input is padded with zeros on the bottom/right up to that size *before* the ``qkv``
  projection, so the padded tokens take part as keys/values carrying the ``qkv`` bias, exactly like the
  official module (computed by padding the projection's output with the ``qkv`` bias, which gives the
  same values without projecting the padding); the output is cropped back to ``H x W`` before ``proj``.
  This lets the 11x11 DiNAT-L run at 224 and every model run on small test images. ``pad_small=False``
  turns it off, and then an input below ``kernel_size * dilation`` is a ``ValueError`` that names the
  smallest accepted size.

Differences: attention-probability dropout is not available (the fused operator has no dropout; every
official recipe uses ``attn_drop=0``), and a GNA ``stride`` can be given, which NAT never used (it changes
the model; stride > 1 requires ``rpb=False``, because strided windows move keys outside the 2k-1 table).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_notrace_module
from torch import Tensor, nn

from vizoo.kernels import na2d
from vizoo.kernels.layernorm import layer_norm
from vizoo.kernels.neighborhood.chunked import neighborhood_attention as chunked_na
from vizoo.utils import tracing

__all__ = ["LayerNorm", "NeighborhoodAttention2d"]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis that runs vizoo's fused kernel on CUDA (same parameters and keys).

    PyTorch's CUDA layer norm is slow on the short rows of channels-last maps (see
    ``vizoo.kernels.layernorm.triton``); on CUDA, outside ``torch.compile``/export/FX/TorchScript, this module
    uses the fused kernel, elsewhere ``F.layer_norm`` (so FX traces it as a plain layer norm). Output dtypes
    are those of ``nn.LayerNorm`` (float32 under autocast, which lists layer norm as a float32 op), except
    with ``autocast_output=True``: then, under autocast, the output is already in the autocast dtype, for
    norms whose output only feeds a Linear that autocast would cast anyway (same values, one cast kernel
    fewer).
    """

    def __init__(self, *args, autocast_output: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.autocast_output = autocast_output

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if tracing() or not x.is_cuda or len(self.normalized_shape) != 1:  # tracing first: FX has no is_cuda
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        out_dtype = x.dtype
        if torch.is_autocast_enabled("cuda"):
            out_dtype = torch.get_autocast_dtype("cuda") if self.autocast_output else torch.float32
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype, backend="triton")


@register_notrace_module  # FX keeps it a leaf: its padding depends on the input's size
class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighborhood attention on ``[B, H, W, C]`` (NAT / DiNAT / GNA).

    TorchScript compiles it with the chunked PyTorch path of ``vizoo.kernels.neighborhood`` (a Triton launch
    cannot be scripted); FX treats it as a leaf module (timm's ``register_notrace_module``).

    Args:
        dim: channels ``C`` of the input and output.
        num_heads: attention heads; ``dim`` must be divisible by it.
        kernel_size: window size per axis (odd or even, >= 2).
        dilation: DiNAT dilation (>= 1).
        stride: GNA stride (1 <= stride <= kernel_size); 1 is plain NA, ``kernel_size`` is blocked attention.
        qkv_bias: bias on the fused ``qkv`` projection.
        rpb: learn NAT's relative position bias ``[heads, 2k-1, 2k-1]`` (stride 1 only).
        qk_scale: softmax scale, default ``head_dim ** -0.5``.
        attn_drop: must be 0 (kept for signature compatibility with the official layer).
        proj_drop: dropout after the output projection.
        pad_small: zero-pad inputs smaller than ``kernel_size * dilation`` like the official module (see
            the module docstring); with False such inputs raise a ``ValueError``.
        backend: operator backend passed to ``vizoo.kernels.na2d`` (None: Triton on CUDA, else chunked).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        stride: int = 1,
        qkv_bias: bool = True,
        rpb: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pad_small: bool = True,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if not 1 <= stride <= kernel_size:
            raise ValueError(f"stride must be in 1..kernel_size ({kernel_size}), got {stride}")
        if rpb and stride != 1:
            raise ValueError(
                f"relative position bias needs stride 1 (got stride={stride}): pass rpb=False "
                "for GNA strided windows"
            )
        if attn_drop:
            raise ValueError(
                f"attn_drop is not supported by the fused neighborhood-attention operator "
                f"(got {attn_drop}); use 0.0 (every official NAT/DiNAT recipe does)"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.stride = stride
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.pad_small = pad_small
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rpb:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            if not self.rpb.is_meta:
                trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def window_extent(self) -> int:
        """Smallest feature-map side the operator accepts without padding: ``kernel_size * dilation``."""
        return self.kernel_size * self.dilation

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"NeighborhoodAttention2d expects channels-last input [B, H, W, {self.dim}], got shape {x.shape}"
            )
        B, H, W, C = x.shape
        extent = self.window_extent
        pad_h, pad_w = max(0, extent - H), max(0, extent - W)
        if pad_h or pad_w:
            if not self.pad_small:
                raise ValueError(
                    f"feature map {H}x{W} is smaller than kernel_size * dilation = {self.kernel_size} * "
                    f"{self.dilation} = {extent}; the smallest accepted size is {extent}x{extent} "
                    "(or build the layer with pad_small=True to zero-pad like the official NAT)"
                )
        qkv = self.qkv(x)
        Hp, Wp = H + pad_h, W + pad_w
        if pad_h or pad_w:
            # qkv of a zero token is the bias: pad the projection's output instead of its input (same values,
            # without projecting the padding; adding 0 keeps the real tokens bit-identical)
            qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
            if self.qkv.bias is not None:
                padded = torch.ones(Hp, Wp, 1, dtype=qkv.dtype, device=qkv.device)
                padded[:H, :W] = 0
                qkv = qkv + padded * self.qkv.bias
        q, k, v = qkv.reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        x = self._attend(q, k, v)
        x = x[:, :H, :W].reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            ks, dil, st = [self.kernel_size] * 2, [self.dilation] * 2, [self.stride] * 2
            return chunked_na(q, k, v, ks, dil, st, [False, False], self.rpb, self.scale)
        return na2d(q, k, v, self.kernel_size, dilation=self.dilation, stride=self.stride, rpb=self.rpb,
                    scale=self.scale, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, stride={self.stride}, rpb={self.rpb is not None}"
        )

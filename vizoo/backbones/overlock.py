"""OverLoCK (Overview-first, Look-Closely-next ConvNets with context-mixing dynamic kernels), registered with timm.

Paper: Lou, Yu. "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels."
CVPR 2025. arXiv 2502.20087. Official code: github.com/LMMMEng/OverLoCK (models/overlock.py, Apache-2.0). This
file is written from the paper and from reading that code; nothing is copied.

The network has three parts:

* **Base-Net**: a 4-conv stem (stride 4) and three stages of Basic blocks (strides 4, 8, 16);
* **Overview-Net**: one stride-32 stage of Basic blocks. Its output feeds an auxiliary classifier during
  training and, through a 1x1 conv, a context prior ``P0`` with ``C4 / 4`` channels;
* **Focus-Net**: Dynamic blocks at strides 16 and 32 on the Base-Net features ``Z`` concatenated with the
  context ``P`` (P0 upsampled, updated block by block and re-injected as ``P <- a*P + b*P0``). The last block
  keeps ``[Z, P]`` (``C4 + C4/4`` channels), which the head reads: 1x1 conv to 1024, BN, SiLU, pooling, Linear.

A Basic block is ``x + DW3x3(x)`` then ``ls(x) + F(x)`` with ``F`` = LN, dilated re-parameterisable
large-kernel depthwise conv (UniRepLKNet's Dilated Reparam Block), BN, SE, 1x1 conv (4x), GELU, a residual
depthwise 3x3, GRN and a 1x1 conv. A Dynamic block fuses ``[Z, P]``, gates the sum of a static large-kernel
branch and **ContMix**: each pixel's query is compared with the 7x7 pooled region centres of the context, a
shared linear map turns the 49 affinities into a 5x5 and a KxK kernel per group (plus a relative position bias,
softmaxed), and ``vizoo.kernels.na2d_av`` applies them over clamped neighborhood windows to the two channel
halves.

Faithful to the official code:
    * widths, depths, kernel sizes [17, 15, 13, 7], ContMix kernels (5 and 13 at stride 16, 5 and 7 at stride
      32), groups (2 x ``sub_num_heads``), MLP ratios, layer-scale placement ("res_scale": on the shortcut,
      stages 3-4 and Focus-Net), SE width ``max(16, C/8)``, stochastic-depth schedule and initialisation, so
      parameter counts equal the official ones in train form, deploy form and deploy form without the aux head
      (tests/backbones/test_overlock.py);
    * the forward, including the query scale ``(C/G) ** -0.5`` (the dot product is over ``C/(2G)`` channels:
      kept as in the code), queries from the normalised Z channels and keys from the normalised context,
      the relative bias ``rpb[g, key - query + k - 1]`` and the small-input rule: when a map is smaller than
      the large kernel, ContMix runs on a bilinear upsampling whose short side equals the kernel and its output
      is average-pooled back (any input of at least 32x32 pixels runs);
    * the module tree and most names, so the official checkpoints (train form and ``*_reparam`` form) load
      through ``checkpoint_filter_fn`` with a few renames. On the same random weights the logits of all four
      variants, both forms and training mode (aux included) agree with the official code to 2e-6 in fp32
      (``tools/check_official_overlock.py``; the table is in docs/models.md).

Differences:
    * timm citizenship: ``create_model`` works on timm 1.x (the official factories raise ``TypeError``);
      the classifier is a Linear (``head.fc``; officially a 1x1 conv ``head.4``); the stem is ``stem``
      (``patch_embed1``); GRN is timm's ``GlobalResponseNorm`` (with a 16-bit input's dtype kept) and SE is
      timm's ``SEModule`` (same math, 1-D parameters); layer scales are 1-D ``weight``/``bias`` (officially a
      grouped 1x1 conv); ContMix's parameters sit under ``contmix.`` and its 49 -> k^2 + K^2 map is a Linear
      (officially a 1x1 conv); the dilated branches are ``dilated.{i}.{conv,bn}`` (officially
      ``dil_conv_k{k}_{r}``/``dil_bn_k{k}_{r}``, attributes TorchScript cannot loop over); drop path defaults to
      each variant's ImageNet recipe rate (XT 0.1, T 0.15, S 0.4, B 0.5; officially 0 unless given). The 1-D shapes
      mean timm's optimiser factory exempts GRN and layer-scale parameters from weight decay, which the
      official run (4-D shapes) did not;
    * the auxiliary head is built only with ``aux_head=True`` (training recipes set it); then ``model(x)``
      returns ``(logits, aux_logits)`` in training mode and logits otherwise, like timm's distilled DeiT.
      ``reparameterize()`` merges every dilated branch into one large kernel (exact, fp32) and drops the aux
      head; timm's ``reparameterize_model`` (``benchmark.py --reparam``) merges the branches;
    * ``features_only``/``forward_intermediates`` give the stride-4 and stride-8 Base-Net maps and the Focus-Net
      maps at strides 16 and 32 (``[C1, C2, C3 + C4/4, C4 + C4/4]`` channels), without the extra LayerNorms and
      Overview projection that the official detection/segmentation copies add (those have no ImageNet weights);
    * no iGEMM large-kernel conv extension (the official code falls back to cuDNN without it): the depthwise
      convs of the Dilated Reparam Blocks (5x5 and wider) run vizoo's Triton kernel on CUDA
      (``vizoo.kernels.depthwise``, same math, float32 accumulation; several times faster than cuDNN there),
      the 3x3 ones and every CPU conv ``F.conv2d``; ``TRITON_DEPTHWISE = False`` switches the kernel
      off.
"""

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerNorm2d,
    SelectAdaptivePool2d,
    SEModule,
    register_notrace_function,
    register_notrace_module,
    trunc_normal_,
)
from timm.layers.grn import GlobalResponseNorm
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vizoo.hub.checkpoints import extract_state_dict
from vizoo.kernels.contmix import contmix_fused_forward, na2d_av
from vizoo.kernels.contmix.reference import window_rpb_bias
from vizoo.kernels.depthwise import depthwise_conv2d
from vizoo.utils import tracing

__all__ = ["OverLoCK", "BasicBlock", "DynamicBlock", "ContMix", "DilatedReparamConv", "checkpoint_filter_fn"]

# (kernel, dilation) of the parallel branches of a Dilated Reparam Block, by its large kernel size (UniRepLKNet)
DILATED_BRANCHES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}
MIN_INPUT = 32  # the stride-32 map must hold at least one pixel


# --------------------------------------------------------------------------------------------- layers


class LayerScale2d(nn.Module):
    """Per-channel affine ``x * weight + bias`` on NCHW maps (the official one is a grouped 1x1 conv)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


# On CUDA, depthwise convs at least TRITON_DEPTHWISE_MIN_KERNEL wide run vizoo's Triton kernel: cuDNN runs these
# kernels on CUDA cores far below the memory bound. On an H200 (bf16, batch 256; docs/benchmarks.md) the Triton
# kernel was 3.6x cuDNN's forward and 4.1x its forward+backward at stage 1's 17x17 train form, and 1.9x cuDNN's
# forward+backward at the 3x3 convs of stage 1 (``ResDWConv``, 56x56, 256 channels; its CUDA-core kernels), so
# every depthwise conv takes it; ``TRITON_DEPTHWISE = False`` (or a larger minimum) sends them back to cuDNN.
TRITON_DEPTHWISE = True
TRITON_DEPTHWISE_MIN_KERNEL = 3


def dw_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int) -> Tensor:
    """Stride-1 "same" depthwise conv: vizoo's Triton kernel on CUDA for kernels at least
    ``TRITON_DEPTHWISE_MIN_KERNEL`` wide (while ``TRITON_DEPTHWISE`` is set), ``F.conv2d`` otherwise."""
    if torch.jit.is_scripting():
        return torch.ops.vizoo.depthwise_conv2d_fwd(x, weight, bias, dilation, False)
    if x.is_cuda and TRITON_DEPTHWISE and weight.shape[-1] >= TRITON_DEPTHWISE_MIN_KERNEL:
        return depthwise_conv2d(x, weight, bias, dilation)
    padding = dilation * (weight.shape[-1] - 1) // 2
    return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])


register_notrace_function(dw_conv)  # a device test: FX records it as one call


def autocast_input(x: Tensor) -> Tensor:
    """``x`` in CUDA autocast's dtype while autocast is on, else as it is: one cast that the several convs reading
    ``x`` then share (autocast would cast a float32 ``x`` again for each of them)."""
    if torch.jit.is_scripting():  # TorchScript has no autocast to cast for (a scripted FX graph calls this)
        return x
    if not (x.is_cuda and torch.is_autocast_enabled("cuda")):
        return x
    return x.to(torch.get_autocast_dtype("cuda"))


register_notrace_function(autocast_input)


class GRN(GlobalResponseNorm):
    """timm's ``GlobalResponseNorm`` (NCHW) that keeps a 16-bit input's dtype under autocast: the norm runs in
    float32 as autocast wants, the output in the input's dtype, where timm's returns float32 (its parameters
    promote it) and every consumer casts it back."""

    def forward(self, x: Tensor) -> Tensor:
        x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
        x_n = (x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)).to(x.dtype)
        weight, bias = self.weight.to(x.dtype).view(self.wb_shape), self.bias.to(x.dtype).view(self.wb_shape)
        return x + torch.addcmul(bias, weight, x * x_n)


class DWConv(nn.Conv2d):
    """Stride-1 "same" depthwise conv with bias through ``dw_conv`` (same parameters and keys as ``nn.Conv2d``)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return dw_conv(x, self.weight, self.bias, 1)


class ResDWConv(DWConv):
    """``x + DWConv_k(x)`` (depthwise, with bias)."""

    def forward(self, x: Tensor) -> Tensor:
        return x + dw_conv(x, self.weight, self.bias, 1)


def _fuse_bn(weight: Tensor, bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _dilate_to(weight: Tensor, dilation: int, size: int) -> Tensor:
    """A depthwise ``k x k`` kernel with dilation d as the equivalent dense kernel, centred in ``size x size``."""
    k = weight.shape[-1]
    extent = dilation * (k - 1) + 1
    dense = weight.new_zeros(weight.shape[0], 1, extent, extent)
    dense[:, :, ::dilation, ::dilation] = weight
    pad = (size - extent) // 2
    return F.pad(dense, [pad] * 4)


class DilatedBranch(nn.Module):
    """One dilated depthwise conv (no bias) + BN branch of a Dilated Reparam Block."""

    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                              groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(dw_conv(x, self.conv.weight, None, self.dilation))


class DilatedReparamConv(nn.Module):
    """UniRepLKNet's Dilated Reparam Block (Ding et al., arXiv 2311.15599): a ``K x K`` depthwise conv + BN plus
    parallel dilated depthwise conv + BN branches (``DILATED_BRANCHES[K]``, in ``dilated``), summed.
    ``reparameterize()`` merges everything into one ``K x K`` depthwise conv with bias (``deploy=True`` builds that
    form directly; ``origin_bn`` is then an Identity and ``dilated`` empty)."""

    def __init__(self, dim: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"kernel_size must be one of {sorted(DILATED_BRANCHES)}, got {kernel_size}")
        self.kernel_size = kernel_size
        self.branches = DILATED_BRANCHES[kernel_size]
        self.deploy = deploy
        self.lk_origin = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=deploy)
        self.origin_bn = nn.Identity() if deploy else nn.BatchNorm2d(dim)
        self.dilated = nn.ModuleList([] if deploy else [DilatedBranch(dim, k, r) for k, r in self.branches])

    def forward(self, x: Tensor) -> Tensor:
        x = autocast_input(x)
        out = self.origin_bn(dw_conv(x, self.lk_origin.weight, self.lk_origin.bias, 1))
        for branch in self.dilated:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def merged_kernel(self) -> Tuple[Tensor, Tensor]:
        """The single ``K x K`` depthwise weight and bias equal to the train-form block (BN in eval mode)."""
        weight, bias = _fuse_bn(self.lk_origin.weight, self.origin_bn)
        for branch in self.dilated:
            w, b = _fuse_bn(branch.conv.weight, branch.bn)
            weight = weight + _dilate_to(w, branch.dilation, self.kernel_size)
            bias = bias + b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        weight, bias = self.merged_kernel()
        dim = weight.shape[0]
        conv = nn.Conv2d(dim, dim, self.kernel_size, padding=self.kernel_size // 2, groups=dim, bias=True)
        conv = conv.to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.lk_origin, self.origin_bn, self.dilated = conv, nn.Identity(), nn.ModuleList()
        self.deploy = True


def _se(dim: int) -> SEModule:
    return SEModule(dim, rd_channels=max(16, dim // 8), act_layer=nn.GELU)


class BasicBlock(nn.Module):
    """Base-Net / Overview-Net block: ``x = x + DW3x3(x)``, then ``x = ls(x) + DropPath(F(x))``.

    ``proj`` keeps the official Sequential (0 LN, 1 dilated reparam conv, 2 BN, 3 SE, 4 1x1 up, 5 GELU,
    6 residual DW3x3, 7 GRN, 8 1x1 down, 9 DropPath) so checkpoint keys line up.
    """

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float = 4.0, ls_init_value: Optional[float] = None,
                 drop_path: float = 0.0, deploy: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim)
        self.proj = nn.Sequential(
            LayerNorm2d(dim, eps=1e-6),
            DilatedReparamConv(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
            _se(dim),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden),
            GRN(hidden, channels_last=False),
            nn.Conv2d(hidden, dim, 1),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = LayerScale2d(dim, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.proj(x)


def _resize(x: Tensor, size: List[int]) -> Tensor:
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def resize_like(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


register_notrace_function(resize_like)  # FX autowraps only public names


def _contmix_size(height: int, width: int, kernel_size: int) -> List[int]:
    """The official small-map rule: the short side becomes ``kernel_size``, the long side scales with it."""
    if height < width:
        return [kernel_size, int(kernel_size / height * width)]
    return [int(kernel_size / width * height), kernel_size]


# In an inference forward (no gradient needed; eager only: never while scripting, compiling, exporting or FX
# tracing) on a device type in FUSED_CONTMIX_DEVICES, each ContMix half whose kernel is at most
# FUSED_CONTMIX_MAX_KERNEL computes its weights inside the aggregation kernel (``contmix_fused_forward``) instead of
# materialising the [B, H, W, G, k*k] softmax. On an H200 (bf16, batch 128, one half's whole chain) the fused form
# was 2.8x faster in GPU time at 14x14 k=5 and 1.2x at 7x7 k=7, but 2.2x slower at k=13 (14x14 and 56x56), where
# the band of each kernel row is gathered from a 256-wide weight tile: hence 7 (0 turns it off). CPU runs it only
# under the Triton interpreter, for tests: add "cpu" there.
FUSED_CONTMIX_MAX_KERNEL = 7
FUSED_CONTMIX_DEVICES = ("cuda",)


@register_notrace_module  # data-dependent resizing: FX keeps it as one call
class ContMix(nn.Module):
    """Context-mixing dynamic kernels: affinities of every pixel's query with 7x7 pooled context regions, a
    shared linear map to a ``k x k`` (small) and a ``K x K`` (large) kernel per group, relative position bias,
    softmax, then ``na2d_av`` over the first / second half of the value channels.

    Args:
        dim: value channels C (queries and region centres have C/2).
        ctx_dim: context channels (keys' input).
        kernel_size: the large kernel K.
        small_kernel: the small kernel k.
        groups: G; each half of C splits into G groups of ``C / (2G)`` channels.
        pool_size: region centres per side (7 in every official model).
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int, small_kernel: int, groups: int,
                 pool_size: int = 7):
        super().__init__()
        if dim % (2 * groups):
            raise ValueError(f"dim {dim} must split into 2 x {groups} groups")
        self.dim = dim
        self.groups = groups
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.scale = (dim // groups) ** -0.5  # official: C/G, not the C/(2G) of a group
        self.weight_query = nn.Sequential(nn.Conv2d(dim, dim // 2, 1, bias=False), nn.BatchNorm2d(dim // 2))
        self.weight_key = nn.Sequential(nn.AdaptiveAvgPool2d(pool_size), nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),
                                        nn.BatchNorm2d(dim // 2))
        self.weight_proj = nn.Linear(pool_size**2, small_kernel**2 + kernel_size**2)
        self.rpb1 = nn.Parameter(torch.zeros(groups, 2 * small_kernel - 1, 2 * small_kernel - 1))
        self.rpb2 = nn.Parameter(torch.zeros(groups, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def _kernels(self, logits: Tensor, rpb: Tensor, height: int, width: int) -> Tensor:
        return (logits + window_rpb_bias(rpb, height, width).unsqueeze(0)).softmax(-1)

    def _aggregate(self, attn: Tensor, v: Tensor, k: int) -> Tensor:
        if torch.jit.is_scripting():
            out = torch.ops.vizoo.na2d_av_fwd(attn, v, [k, k], [1, 1], attn.is_cuda)
        else:
            out = na2d_av(attn, v, k)
        return out

    @torch.jit.unused
    def _fused_kernels(self, x: Tensor, query: Tensor, context: Tensor) -> List[int]:
        """The kernel sizes of the halves that take the fused path in this call (see FUSED_CONTMIX_MAX_KERNEL)."""
        if tracing() or x.device.type not in FUSED_CONTMIX_DEVICES:
            return []
        if torch.is_grad_enabled() and any(t.requires_grad for t in [x, query, context] + list(self.parameters())):
            return []
        return [k for k in (self.small_kernel, self.kernel_size) if k <= FUSED_CONTMIX_MAX_KERNEL]

    @torch.jit.unused
    def _fused(self, q: Tensor, key: Tensor, v: Tensor, k: int, rpb: Tensor, lo: int, hi: int) -> Tensor:
        """One half through ``contmix_fused_forward``, the logits' projection moved onto the keys: ``kp = key @
        Wp[lo:hi]^T`` per image (q ``[B, h, w, G, c]``, key ``[B, G, c, 49]``, v ``[B, h, w, G, c]``)."""
        kp = torch.einsum("bgcl,tl->bgct", key, self.weight_proj.weight[lo:hi].to(key.dtype)).to(q.dtype)
        return contmix_fused_forward(q, kp, self.weight_proj.bias[lo:hi], rpb, v, k, backend="triton")

    def forward(self, x: Tensor, query: Tensor, context: Tensor) -> Tensor:
        """x: values ``[B, C, H, W]``; query: normalised Z ``[B, C, H, W]``; context: normalised P."""
        fused: List[int] = [] if torch.jit.is_scripting() else self._fused_kernels(x, query, context)
        B, C, H, W = x.shape
        size = [H, W]
        if min(H, W) < self.kernel_size:
            size = _contmix_size(H, W, self.kernel_size)
            x, query, context = _resize(x, size), _resize(query, size), _resize(context, size)
        h, w = size[0], size[1]
        G, c = self.groups, C // (2 * self.groups)
        q = (self.weight_query(query) * self.scale).permute(0, 2, 3, 1).reshape(B, h * w, G, c)
        key = self.weight_key(context).reshape(B, G, c, -1)  # [B, G, c, 49]
        v = x.permute(0, 2, 3, 1).reshape(B, h, w, 2, G, c)
        # [B, N, G, k*k + K*K], unless both halves compute theirs inside the fused kernel
        logits = self.weight_proj(torch.einsum("bngc,bgcl->bngl", q, key)) if len(fused) < 2 else q
        split = self.small_kernel * self.small_kernel
        halves = [(self.small_kernel, self.rpb1, 0, split),
                  (self.kernel_size, self.rpb2, split, split + self.kernel_size * self.kernel_size)]
        outs: List[Tensor] = []
        for half, (k, rpb, lo, hi) in enumerate(halves):
            if k in fused:
                outs.append(self._fused(q.reshape(B, h, w, G, c), key, v[:, :, :, half], k, rpb, lo, hi))
            else:
                attn = self._kernels(logits[:, :, :, lo:hi], rpb, h, w).reshape(B, h, w, G, -1)
                outs.append(self._aggregate(attn.to(v.dtype), v[:, :, :, half], k))
        out = torch.cat(outs, dim=3).reshape(B, h, w, C).permute(0, 3, 1, 2)
        if h != H or w != W:
            out = F.adaptive_avg_pool2d(out, (H, W))
        return out


class DynamicBlock(nn.Module):
    """Focus-Net block on ``[Z, P]`` (C + Cp channels); returns the updated concatenation.

    ``P`` is first refreshed as ``x_scale(P) + h_scale(P0)`` (not in the first block of Focus stage 3). Then
    GDSA: ``U = [Z, P] + DW3x3``, ``Û = LN(U)``, fused features ``X = GRN(1x1(GELU(BN(DW3x3(Û)))))``, gate
    ``SiLU(BN(1x1 X))``, static branch ``BN(DilatedReparamConv_K(X))``, ContMix on X (queries from Û's Z part,
    keys from its P part), ``proj(BN(gate * SE(BN(1x1 ContMix) + static)))`` added to ``ls1(U)``; then the
    feed-forward ``ls2(U) + MLP(LN(U + DW3x3 U))`` with hidden width ``mlp_ratio * C``.
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int, small_kernel: int = 5, groups: int = 8,
                 mlp_ratio: float = 3.0, ls_init_value: Optional[float] = 1.0, drop_path: float = 0.0,
                 is_first: bool = False, deploy: bool = False):
        super().__init__()
        out_dim = dim + ctx_dim
        hidden = int(dim * mlp_ratio)
        self.dim, self.ctx_dim = dim, ctx_dim
        # P <- x_scale(P) + h_scale(P0) before every block but Focus-Net's first
        self.x_scale = None if is_first else LayerScale2d(ctx_dim, 1.0)
        self.h_scale = None if is_first else LayerScale2d(ctx_dim, 1.0)
        self.dwconv1 = ResDWConv(out_dim)
        self.norm1 = LayerNorm2d(out_dim, eps=1e-6)
        self.fusion = nn.Sequential(
            DWConv(out_dim, 3),
            nn.BatchNorm2d(out_dim),
            nn.GELU(),
            nn.Conv2d(out_dim, dim, 1),
            GRN(dim, channels_last=False),
        )
        self.contmix = ContMix(dim, ctx_dim, kernel_size, small_kernel, groups)
        self.dyconv_proj = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.lepe = nn.Sequential(DilatedReparamConv(dim, kernel_size, deploy=deploy), nn.BatchNorm2d(dim))
        self.se_layer = _se(dim)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
        self.dwconv2 = ResDWConv(out_dim)
        self.norm2 = LayerNorm2d(out_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden),
            GRN(hidden, channels_last=False),
            nn.Conv2d(hidden, out_dim, 1),
        )
        self.ls1 = LayerScale2d(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale2d(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, ctx: Tensor, ctx0: Tensor) -> Tensor:
        if self.x_scale is not None and self.h_scale is not None:
            ctx = self.x_scale(ctx) + self.h_scale(ctx0)
        u = self.dwconv1(torch.cat([x, ctx], dim=1))
        normed = self.norm1(u)
        feats = self.fusion(normed)
        gate = self.gate(feats)
        static = self.lepe(feats)
        query, context = normed.split([self.dim, self.ctx_dim], dim=1)
        mixed = self.dyconv_proj(self.contmix(feats, query, context))
        y = self.proj(gate * self.se_layer(mixed + static))
        u = self.ls1(u) + self.drop_path(y)
        u = self.dwconv2(u)
        return self.ls2(u) + self.drop_path(self.mlp(self.norm2(u)))


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
        nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
    )


def _downsample(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim))


class CtxDownsample(nn.Module):
    """Between Focus stages: separate 3x3 stride-2 conv + BN for Z (C3 -> C4) and for P (Cp -> Cp)."""

    def __init__(self, dim: int, out_dim: int, ctx_dim: int):
        super().__init__()
        self.x_proj = _downsample(dim, out_dim)
        self.h_proj = _downsample(ctx_dim, ctx_dim)

    def forward(self, x: Tensor, ctx: Tensor) -> Tuple[Tensor, Tensor]:
        return self.x_proj(x), self.h_proj(ctx)


class OverLoCKHead(nn.Module):
    """1x1 conv (no bias) -> BN -> SiLU -> global pool -> dropout -> Linear; ``pre_logits`` stops before fc."""

    def __init__(self, in_chs: int, hidden: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU()
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.fc = nn.Linear(self.norm.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(self.global_pool(self.act(self.norm(self.proj(x)))))
        return x if pre_logits else self.fc(x)


class AuxHead(nn.Module):
    """Overview-Net's auxiliary classifier: BN -> global average pool -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.dim = dim
        self.norm = nn.BatchNorm2d(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x).mean((2, 3)))


def check_image(x: Tensor) -> None:
    if x.dim() != 4 or min(x.shape[-2:]) < MIN_INPUT:
        raise ValueError(f"expected images [B, C, H, W] of at least {MIN_INPUT}x{MIN_INPUT} pixels (the stride-32 "
                         f"map needs one pixel; maps smaller than a ContMix kernel are upsampled), got shape "
                         f"{tuple(x.shape)}")


register_notrace_function(check_image)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------- model


class OverLoCK(nn.Module):
    """OverLoCK: Base-Net, Overview-Net and Focus-Net (see the module docstring).

    Args:
        depths: Basic blocks of Base-Net stages 1-3 and of Overview-Net.
        sub_depths: Dynamic blocks of Focus-Net at strides 16 and 32.
        embed_dims: widths C1..C4; the context prior has ``C4 // 4`` channels.
        kernel_sizes: large kernels of the four stages (Focus uses the 3rd and 4th).
        mlp_ratio: Basic block MLP ratio.
        sub_mlp_ratio: Dynamic block MLP ratio (of C, not C + Cp).
        sub_num_heads: ContMix groups are twice these, per Focus stage.
        small_kernel: ContMix's small kernel.
        ls_init_values: layer-scale init per stage (None: no layer scale).
        projection: width of the head's 1x1 conv.
        in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as in timm.
        aux_head: build Overview-Net's auxiliary classifier (returned in training mode).
        deploy: build the re-parameterised form (merged large kernels).
    """

    def __init__(
        self,
        depths: Sequence[int] = (4, 4, 6, 2),
        sub_depths: Sequence[int] = (12, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        kernel_sizes: Sequence[int] = (17, 15, 13, 7),
        mlp_ratio: float = 4.0,
        sub_mlp_ratio: float = 3.0,
        sub_num_heads: Sequence[int] = (4, 8),
        small_kernel: int = 5,
        ls_init_values: Sequence[Optional[float]] = (None, None, 1.0, 1.0),
        projection: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        aux_head: bool = False,
        deploy: bool = False,
    ):
        super().__init__()
        if len(depths) != 4 or len(sub_depths) != 2 or len(embed_dims) != 4 or len(kernel_sizes) != 4:
            raise ValueError(f"need 4 depths, 2 sub_depths, 4 embed_dims and 4 kernel_sizes, got {depths}, "
                             f"{sub_depths}, {embed_dims}, {kernel_sizes}")
        if sub_depths[1] < 1:
            raise ValueError(f"Focus-Net needs at least one block at stride 32, got sub_depths={sub_depths}")
        C1, C2, C3, C4 = embed_dims
        ctx = C4 // 4
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.ctx_dim = ctx
        self.grad_checkpointing = False
        self._stages_kept = 4
        dpr = torch.linspace(0, drop_path_rate, sum(depths) + sum(sub_depths), device="cpu").tolist()

        def basic(i: int) -> nn.Sequential:
            start = sum(depths[:i])
            return nn.Sequential(*[
                BasicBlock(embed_dims[i], kernel_sizes[i], mlp_ratio, ls_init_values[i], dpr[start + j], deploy)
                for j in range(depths[i])
            ])

        def dynamic(i: int) -> nn.ModuleList:
            start = sum(depths) + sum(sub_depths[:i])
            return nn.ModuleList([
                DynamicBlock(embed_dims[2 + i], ctx, kernel_sizes[2 + i], small_kernel, 2 * sub_num_heads[i],
                             sub_mlp_ratio, ls_init_values[2 + i], dpr[start + j], is_first=(i == 0 and j == 0),
                             deploy=deploy)
                for j in range(sub_depths[i])
            ])

        self.stem = _stem(in_chans, C1)
        self.blocks1 = basic(0)
        self.patch_embed2 = _downsample(C1, C2)
        self.blocks2 = basic(1)
        self.patch_embed3 = _downsample(C2, C3)
        self.blocks3 = basic(2)
        self.patch_embed4 = _downsample(C3, C4)
        self.blocks4 = basic(3)
        self.high_level_proj = nn.Conv2d(C4, ctx, 1)
        self.sub_blocks3 = dynamic(0)
        self.patch_embedx = CtxDownsample(C3, C4, ctx)
        self.sub_blocks4 = dynamic(1)
        self.aux_head = AuxHead(C4, num_classes) if aux_head else None
        self.num_features = C4 + ctx
        self.head_hidden_size = projection
        self.head = OverLoCKHead(self.num_features, projection, num_classes, global_pool, drop_rate)
        self.feature_info = [
            dict(num_chs=C1, reduction=4, module="blocks1"),
            dict(num_chs=C2, reduction=8, module="blocks2"),
            dict(num_chs=C3 + ctx, reduction=16, module="sub_blocks3"),
            dict(num_chs=C4 + ctx, reduction=32, module="sub_blocks4"),
        ]
        self.apply(_init_weights)

    # ---- timm contract
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem\.",
            blocks=[
                (r"^blocks1\.", (1,)),
                (r"^(?:patch_embed2|blocks2)\.", (2,)),
                (r"^(?:patch_embed3|blocks3)\.", (3,)),
                (r"^(?:patch_embed4|blocks4|high_level_proj|aux_head)\.", (4,)),
                (r"^sub_blocks3\.", (5,)),
                (r"^(?:patch_embedx|sub_blocks4)\.", (6,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()  # the official recipe decays every tensor of more than one dim (rpb tables included)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool
        if self.aux_head is not None:
            self.aux_head.fc = nn.Linear(self.aux_head.dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Deploy form: merge every dilated branch into its large kernel and drop the auxiliary head."""
        for module in self.modules():
            if isinstance(module, DilatedReparamConv):
                module.reparameterize()
        self.aux_head = None

    # ---- forward (stages written out: TorchScript cannot pass modules to helpers)
    def _features(self, x: Tensor, take: List[int], stop: int) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Run up to feature ``stop`` (0..3); returns the last map, the Overview output and the maps in take."""
        if not torch.jit.is_scripting():
            check_image(x)
        maps: List[Tensor] = []
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks1, x)
        else:
            x = self.blocks1(x)
        if 0 in take:
            maps.append(x)
        overview = x
        if stop >= 1:
            x = self.patch_embed2(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(self.blocks2, x)
            else:
                x = self.blocks2(x)
            if 1 in take:
                maps.append(x)
        if stop >= 2:
            z = self.patch_embed3(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                z = checkpoint_seq(self.blocks3, z)
            else:
                z = self.blocks3(z)
            overview = self.patch_embed4(z)  # Overview-Net
            if self.grad_checkpointing and not torch.jit.is_scripting():
                overview = checkpoint_seq(self.blocks4, overview)
            else:
                overview = self.blocks4(overview)
            ctx0 = self.high_level_proj(overview)
            ctx_up = resize_like(ctx0, z)
            ctx = ctx_up
            u = torch.cat([z, ctx], dim=1)
            for block in self.sub_blocks3:  # Focus-Net, stride 16
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    u = checkpoint(block, z, ctx, ctx_up, use_reentrant=False)
                else:
                    u = block(z, ctx, ctx_up)
                z, ctx = u.split([u.shape[1] - self.ctx_dim, self.ctx_dim], dim=1)
            x = u
            if 2 in take:
                maps.append(x)
            if stop >= 3:
                z, ctx = self.patch_embedx(z, ctx)
                for block4 in self.sub_blocks4:  # Focus-Net, stride 32
                    if self.grad_checkpointing and not torch.jit.is_scripting():
                        u = checkpoint(block4, z, ctx, ctx0, use_reentrant=False)
                    else:
                        u = block4(z, ctx, ctx0)
                    z, ctx = u.split([u.shape[1] - self.ctx_dim, self.ctx_dim], dim=1)
                x = u
                if 3 in take:
                    maps.append(x)
        return x, overview, maps

    def forward_features(self, x: Tensor) -> Tensor:
        """Focus-Net's final ``[Z, P]`` map, NCHW ``[B, C4 + C4/4, H/32, W/32]``."""
        return self._features(x, [], 3)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        x, overview, _ = self._features(x, [], 3)
        logits = self.forward_head(x)
        if self.aux_head is not None and self.training and not torch.jit.is_scripting():
            return logits, self.aux_head(overview)  # training with the auxiliary loss (see module docstring)
        return logits

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Maps at strides 4, 8, 16 (Focus stage 3 ``[Z, P]``) and 32 (Focus output); see ``feature_info``.

        Args:
            x: images ``[B, C, H, W]``.
            indices: last n maps if int, these maps if a list, all if None.
            norm: accepted for timm's signature; OverLoCK has no final norm.
            stop_early: stop after the last requested map.
            output_fmt: ``'NCHW'`` only.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(4, indices)
        stop = max_index if (stop_early or intermediates_only) else self._stages_kept - 1
        x, _, maps = self._features(x, take, min(stop, self._stages_kept - 1))
        if intermediates_only:
            return maps
        return x, maps

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop what the requested maps do not need (Focus stage 3 needs the whole Overview-Net)."""
        take, max_index = feature_take_indices(4, indices)
        self._stages_kept = max_index + 1
        if max_index < 3:
            self.patch_embedx = nn.Identity()
            self.sub_blocks4 = nn.ModuleList()
            self.aux_head = None
        if max_index < 2:
            for name in ("patch_embed3", "blocks3", "patch_embed4", "blocks4", "high_level_proj"):
                setattr(self, name, nn.Identity())
            self.sub_blocks3 = nn.ModuleList()
        if max_index < 1:
            self.patch_embed2, self.blocks2 = nn.Identity(), nn.Sequential()
        if prune_head or max_index < 3:
            self.reset_classifier(0, "")
            self.aux_head = None
        return take


# --------------------------------------------------------------------------------------------- checkpoints

_GRN = re.compile(r"(.*\.(?:proj\.7|fusion\.4|mlp\.3))\.(gamma|beta)$")
_SE = re.compile(r"(.*\.(?:proj\.3|se_layer))\.proj\.([13])\.(weight|bias)$")
_LAYER_SCALE = re.compile(r".*\.(?:ls|ls1|ls2|x_scale|h_scale)\.weight$")
_CONTMIX = re.compile(r"(sub_blocks[34]\.\d+)\.(weight_query|weight_key|weight_proj|rpb1|rpb2)(.*)$")
_RENAMES = {"patch_embed1.": "stem.", "head.0.": "head.proj.", "head.1.": "head.norm.", "head.4.": "head.fc.",
            "aux_head.0.": "aux_head.norm.", "aux_head.2.": "aux_head.fc."}
_CLASSIFIERS = ("head.fc.", "aux_head.fc.")


def _map_official(key: str, value: Tensor) -> Tuple[str, Tensor]:
    """One official key (and tensor) -> vizoo's."""
    for old, new in _RENAMES.items():
        if key.startswith(old):
            key = new + key[len(old):]
            if new.endswith("fc.") and key.endswith("weight"):
                value = value.flatten(1)  # 1x1 conv classifier -> Linear
            return key, value
    if m := _GRN.fullmatch(key):
        return f"{m[1]}.{'weight' if m[2] == 'gamma' else 'bias'}", value.flatten()
    if m := _SE.fullmatch(key):
        return f"{m[1]}.fc{1 if m[2] == '1' else 2}.{m[3]}", value
    if _LAYER_SCALE.fullmatch(key):
        return key, value.flatten()
    if m := _CONTMIX.fullmatch(key):
        if m[2] == "weight_proj" and m[3] == ".weight":
            value = value.flatten(1)  # 1x1 conv over the 49 affinities -> Linear
        return f"{m[1]}.contmix.{m[2]}{m[3]}", value
    return key, value


def _train_to_deploy(sd: Dict[str, Tensor], prefix: str, kernel_size: int) -> None:
    """Merge a train-form Dilated Reparam Block's tensors (in ``sd``, under ``prefix``) into ``lk_origin``."""
    weight = sd[prefix + "lk_origin.weight"]
    block = DilatedReparamConv(weight.shape[0], kernel_size).to(weight.dtype)
    names = [n for n in block.state_dict()]
    block.load_state_dict({n: sd.pop(prefix + n) for n in names})
    merged, bias = block.eval().merged_kernel()
    sd[prefix + "lk_origin.weight"], sd[prefix + "lk_origin.bias"] = merged, bias


def _deploy_to_train(sd: Dict[str, Tensor], prefix: str, kernel_size: int) -> None:
    """Express a merged kernel in train form exactly: identity BNs (bias carried by ``origin_bn``), zero
    dilated branches. Fine-tuning then starts from the merged kernel, not from the original branches."""
    weight, bias = sd[prefix + "lk_origin.weight"], sd.pop(prefix + "lk_origin.bias")
    dim, eps = weight.shape[0], 1e-5

    def identity_bn(name: str, shift: Tensor) -> None:
        sd[f"{prefix}{name}.weight"] = torch.ones_like(shift)
        sd[f"{prefix}{name}.bias"] = shift
        sd[f"{prefix}{name}.running_mean"] = torch.zeros_like(shift)
        sd[f"{prefix}{name}.running_var"] = torch.full_like(shift, 1 - eps)  # sqrt(var + eps) == 1
        sd[f"{prefix}{name}.num_batches_tracked"] = torch.tensor(0)

    identity_bn("origin_bn", bias)
    for i, (k, r) in enumerate(DILATED_BRANCHES[kernel_size]):
        sd[f"{prefix}dilated.{i}.conv.weight"] = weight.new_zeros(dim, 1, k, k)
        identity_bn(f"dilated.{i}.bn", torch.zeros_like(bias))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: "OverLoCK") -> Dict[str, Tensor]:
    """Turn an official OverLoCK checkpoint (either form) into the layout and form of ``model``.

    Accepted: the official ``overlock_*_in1k_224.pth`` (train form: dilated branches with their BNs) and
    ``overlock_*_in1k_224_reparam.pth`` (deploy form: one ``lk_origin`` with bias per block), bare or wrapped in
    ``state_dict``/``model`` with optional ``module.`` prefixes, and vizoo's own layout. Each Dilated Reparam
    Block is converted to the model's form: train -> deploy merges the branches (exact, BNs in eval mode);
    deploy -> train writes the merged kernel with identity BNs and zero branches (same outputs). The auxiliary
    head's weights are dropped when the model has none, and classifier weights whose shape differs from the
    model's (another ``num_classes``) are dropped so those layers keep their initialisation.

    Official defects handled: the ``_reparam`` factories ignored ``num_classes`` and the S/B ones never loaded
    their weights (here any form loads into any model); ``default_cfg['classifier']`` named a missing attribute
    (here ``head.fc``); the official loader was non-strict (here unknown or missing keys are an error).

    Raises:
        ValueError: naming unexpected / missing keys or shape mismatches (e.g. another variant's checkpoint).
    """
    state_dict = extract_state_dict(state_dict, source="the OverLoCK checkpoint")
    model_sd = model.state_dict()
    sd = dict(_map_official(k, v) for k, v in state_dict.items())
    for name, module in model.named_modules():
        if not isinstance(module, DilatedReparamConv):
            continue
        prefix = name + "."
        for i, (k, r) in enumerate(module.branches):  # official dil_{conv,bn}_k{k}_{r} -> dilated.{i}.{conv,bn}
            for old, new in ((f"dil_conv_k{k}_{r}.", f"dilated.{i}.conv."), (f"dil_bn_k{k}_{r}.", f"dilated.{i}.bn.")):
                for key in [key for key in sd if key.startswith(prefix + old)]:
                    sd[prefix + new + key[len(prefix + old):]] = sd.pop(key)
        ckpt_train = prefix + "origin_bn.weight" in sd
        ckpt_deploy = prefix + "lk_origin.bias" in sd
        if ckpt_train and module.deploy:
            _train_to_deploy(sd, prefix, module.kernel_size)
        elif ckpt_deploy and not module.deploy:
            _deploy_to_train(sd, prefix, module.kernel_size)
    if model.aux_head is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_head.")}
    sd = {k: v for k, v in sd.items()
          if not (k.startswith(_CLASSIFIERS) and k in model_sd and v.shape != model_sd[k].shape)}
    is_classifier = lambda k: k.startswith(_CLASSIFIERS)  # noqa: E731
    unexpected = sorted(k for k in sd if k not in model_sd)
    missing = sorted(k for k in model_sd if k not in sd and not is_classifier(k))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: {len(unexpected)} unexpected key(s) "
            f"{unexpected[:8]}, {len(missing)} missing key(s) {missing[:8]}. Check the variant (xt/t/s/b) and, "
            "for aux_head keys, the model's aux_head flag."
        )
    bad = [(k, tuple(v.shape), tuple(model_sd[k].shape)) for k, v in sd.items() if v.shape != model_sd[k].shape]
    if bad:
        raise ValueError("checkpoint shapes do not match the model (another variant?): "
                         + ", ".join(f"{k} {a} vs model {b}" for k, a, b in bad[:8]))
    return sd


# --------------------------------------------------------------------------------------------- registry

_URL = "https://github.com/LMMMEng/OverLoCK/releases/download/v1/"


def _cfg(url: str = "", **kwargs) -> Dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "min_input_size": (3, MIN_INPUT, MIN_INPUT),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.0",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2502.20087",
        "paper_name": "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels",
        "origin_url": "https://github.com/LMMMEng/OverLoCK",
        **kwargs,
    }


_CROP = {"xt": 0.925, "t": 0.95, "s": 0.95, "b": 0.975}
default_cfgs = generate_default_cfgs({
    f"overlock_{v}.{tag}": _cfg(f"{_URL}overlock_{v}_in1k_224{suffix}.pth", crop_pct=crop, notes=notes)
    for v, crop in _CROP.items()
    for tag, suffix, notes in (
        ("in1k", "", ("official train-form weights (dilated branches, aux head)",)),
        ("in1k_reparam", "_reparam", ("official deploy-form weights; converted exactly to the model's form",)),
    )
})

_ARGS = {
    "xt": dict(depths=(2, 2, 3, 2), sub_depths=(6, 2), embed_dims=(56, 112, 256, 336), sub_num_heads=(4, 6),
               drop_path_rate=0.1),
    "t": dict(depths=(4, 4, 6, 2), sub_depths=(12, 2), embed_dims=(64, 128, 256, 512), sub_num_heads=(4, 8),
              drop_path_rate=0.15),
    "s": dict(depths=(6, 6, 8, 3), sub_depths=(16, 3), embed_dims=(64, 128, 320, 512), sub_num_heads=(8, 16),
              drop_path_rate=0.4),
    "b": dict(depths=(8, 8, 10, 4), sub_depths=(20, 4), embed_dims=(80, 160, 384, 576), sub_num_heads=(6, 9),
              drop_path_rate=0.5),
}


def _create(size: str, pretrained: bool, **kwargs) -> OverLoCK:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        OverLoCK,
        f"overlock_{size}",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **dict(_ARGS[size], **kwargs),
    )


@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-XT: 16.5 M parameters (deploy form, no aux head), 2.6 GFLOPs, 82.7% ImageNet-1K top-1."""
    return _create("xt", pretrained, **kwargs)


@register_model
def overlock_t(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-T: 33.5 M parameters (deploy form, no aux head), 5.5 GFLOPs, 84.2% ImageNet-1K top-1."""
    return _create("t", pretrained, **kwargs)


@register_model
def overlock_s(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-S: 56.2 M parameters (deploy form, no aux head), 9.7 GFLOPs, 84.8% ImageNet-1K top-1."""
    return _create("s", pretrained, **kwargs)


@register_model
def overlock_b(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-B: 94.9 M parameters (deploy form, no aux head), 16.7 GFLOPs, 85.1% ImageNet-1K top-1."""
    return _create("b", pretrained, **kwargs)

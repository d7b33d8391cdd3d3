"""Operators: a plain PyTorch reference beside a fused Triton kernel for each.

``na1d`` / ``na2d`` (neighborhood attention, ``vizoo.kernels.neighborhood``) are re-exported here; the fused
layer norm for channels-last maps that the backbones use lives in ``vizoo.kernels.layernorm``.
``inline_attn`` (injective linear attention, ``vizoo.kernels.inline``) and ``na2d_av`` (per-pixel dynamic kernels
over neighborhood windows, OverLoCK's ContMix, ``vizoo.kernels.contmix``) are re-exported here too, and
``depthwise_conv2d`` (large-kernel and dilated depthwise convs, ``vizoo.kernels.depthwise``).
"""
from vizoo.kernels.contmix import na2d_av
from vizoo.kernels.depthwise import depthwise_conv2d
from vizoo.kernels.inline import inline_attn
from vizoo.kernels.neighborhood import na1d, na2d

__all__ = ["na1d", "na2d", "inline_attn", "na2d_av", "depthwise_conv2d"]

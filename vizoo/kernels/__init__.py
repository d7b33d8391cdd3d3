"""Operators: a plain PyTorch reference beside a fused Triton kernel for each.

``na1d`` / ``na2d`` (neighborhood attention, ``vizoo.kernels.neighborhood``) are re-exported here; the fused
layer norm for channels-last maps that the backbones use lives in ``vizoo.kernels.layernorm``; ``na2d_av``
(per-pixel dynamic kernels over neighborhood windows, OverLoCK's ContMix) in ``vizoo.kernels.contmix``.
"""
from vizoo.kernels.contmix import na2d_av
from vizoo.kernels.neighborhood import na1d, na2d

__all__ = ["na1d", "na2d", "na2d_av"]

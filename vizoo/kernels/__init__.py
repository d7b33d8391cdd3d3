"""Attention operators: a plain PyTorch reference beside a fused Triton kernel for each."""
from vizoo.kernels.neighborhood import na1d, na2d

__all__ = ["na1d", "na2d"]

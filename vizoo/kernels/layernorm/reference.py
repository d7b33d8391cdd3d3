"""Reference layer norm over the last axis: ``torch.nn.functional.layer_norm`` in float32, then a cast.

The specification the Triton kernel is tested against: statistics in float32 whatever the input dtype, the
output cast to ``out_dtype`` (default: the input's dtype).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    y = F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)
    return y.to(out_dtype or x.dtype)

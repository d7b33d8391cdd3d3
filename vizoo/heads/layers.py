"""Small building blocks shared by the attentive heads: multi-head attention on given q/k/v and a GELU MLP.

Attention is written with explicit matrix products (not ``scaled_dot_product_attention``) so that every
multiply-add is visible to ``FlopCounterMode`` on every device, which keeps the heads' ``macs()`` checkable.
Probe heads attend from one or a few queries, so the fused kernels would buy little here.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                        scale: float | None = None) -> torch.Tensor:
    """Softmax attention with heads split along channels.

    Args:
        q: queries ``[B, L, Dk]`` or ``[L, Dk]`` (shared by the batch).
        k: keys ``[B, N, Dk]``.
        v: values ``[B, N, Dv]``.
        num_heads: heads h; channel slice j of q, k and v belongs to head j.
        scale: logit scale; ``1/sqrt(Dk/h)`` when None.

    Returns:
        ``[B, L, Dv]``, the heads' outputs concatenated along channels.
    """
    b, n, dk = k.shape
    dv = v.shape[-1]
    hk, hv = dk // num_heads, dv // num_heads
    scale = 1.0 / math.sqrt(hk) if scale is None else scale
    kh = k.view(b, n, num_heads, hk).permute(0, 2, 3, 1)            # [B, h, hk, N]
    vh = v.view(b, n, num_heads, hv).transpose(1, 2)                # [B, h, N, hv]
    if q.dim() == 2:
        qh = q.view(q.shape[0], num_heads, hk).transpose(0, 1)      # [h, L, hk], broadcast over B
    else:
        qh = q.view(b, q.shape[1], num_heads, hk).transpose(1, 2)   # [B, h, L, hk]
    attn = (torch.matmul(qh, kh) * scale).softmax(dim=-1)          # [B, h, L, N]
    out = torch.matmul(attn, vh)                                    # [B, h, L, hv]
    return out.transpose(1, 2).reshape(b, -1, dv)


def attention_macs(num_queries: int, num_keys: int, dim_k: int, dim_v: int) -> int:
    """Multiply-adds of :func:`multihead_attention` (logits + weighted sum), independent of the heads."""
    return num_queries * num_keys * (dim_k + dim_v)


class FeedForward(nn.Module):
    """``fc2(GELU(fc1(x)))``, the transformer MLP (timm ``Mlp``, DINOv2/V-JEPA ``MLP``).

    ``out_bias=False`` drops fc2's bias, for heads where it would only shift the pooled vector by a constant
    (which the head's train-mode BatchNorm removes, so it would never get a gradient).
    """

    def __init__(self, dim: int, hidden: int, out_bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def macs(self) -> int:
        return 2 * self.fc1.in_features * self.fc1.out_features

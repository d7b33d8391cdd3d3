"""Optimisers and the learning-rate schedule of the probing protocols.

* LARS (You et al., "Large Batch Training of Convolutional Networks", 2017) as the MAE linear-probe recipe and
  the efficient-probing code use it: for every tensor with more than one dimension, weight decay is added to
  the gradient and the update is scaled by ``trust_coefficient * ||w|| / ||g||`` (1 when either norm is 0);
  vectors (biases) get neither; then heavy-ball momentum. Written from the description, not copied.
* Warmup + half-cycle cosine, per iteration (MAE ``util/lr_sched.py`` semantics): linear from 0 to the peak
  over the warmup iterations, then ``peak * 0.5 * (1 + cos(pi * progress))`` down to ``min_lr``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

OPTIMIZERS = ("adamw", "lars", "sgd")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        weight_decay: decoupled from nothing: added to the gradient of >1-D tensors before the trust ratio.
        momentum: heavy-ball momentum.
        trust_coefficient: the LARS eta (0.001 in MAE and efficient-probing).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and "
                f"trust_coefficient > 0; got {lr}, {weight_decay}, {momentum}, {trust_coefficient}"
            )
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0),
                        group["trust_coefficient"] * w_norm / u_norm,
                        torch.ones_like(w_norm),
                    )
                    update = update * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adamw`` (betas 0.9/0.999), ``lars`` (momentum 0.9, eta 0.001) or ``sgd`` (momentum 0.9)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    from vizoo.utils import unknown_name_error

    raise unknown_name_error("optimizer", name, OPTIMIZERS)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """The lr multiplier at ``step``: linear warmup to 1, then half-cycle cosine to ``min_factor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

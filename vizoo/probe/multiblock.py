"""DINOv2-style multi-block linear inputs on cached features, and the plain Linear head they are probed with.

DINOv2's linear evaluation (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
TMLR 2024; ``dinov2/eval/linear.py``) trains linear classifiers on four inputs built
from ``get_intermediate_layers(n=4, return_class_token=True, norm=True)``:

* ``cls1``: the [CLS] token of the last block (width D);
* ``cls1+avg``: that, then the mean of the last block's patch tokens (2D);
* ``cls4``: the [CLS] tokens of the last 4 blocks concatenated, oldest block first (4D);
* ``cls4+avg``: those, then the last block's patch mean (5D).

An :class:`InputSpec` names one such input (``cls<n>``, ``cls<n>+avg`` or ``avg``). :func:`concat_split`
turns a :class:`~vizoo.probe.cache.CachedSplit` that holds the last blocks into a split with one
pseudo-layer whose single "token" per image is the concatenated vector (``[n, 1, width]``, no prefix tokens,
grid ``(1, 1)``). Why this shape: the cached trainer and every head take ``tokens [B, N, D]``, and a head
whose pooling is the token mean (``linear``/``plain_linear`` without prefix tokens) reduces ``[B, 1, W]`` to
exactly the vector, so the trainer, its lr sweep, selection and reporting are reused unchanged. One cache
extraction of the last ``max(n)`` blocks feeds all inputs; the trainer is then called once per input with the
same seed, so every head sees the same sequence of batches it would see in DINOv2's single joint pass (heads
never interact, so the results are those of the joint pass).

The head DINOv2 trains is a bare ``nn.Linear`` (weight N(0, 0.01), bias 0, no BatchNorm).
:class:`PlainLinear` is that head: vizoo's ``linear`` (whose pooling it inherits) with the non-affine
BatchNorm of the MAE/EP recipe replaced by the identity and DINOv2's initialisation. It lives here, resolved
by :func:`head_class` / :func:`make_head` before the registry, and is not registered in ``vizoo.heads`` (the
registry is the EP paper's set of poolers; this is a protocol detail of one evaluation recipe).

Faithful: the four inputs and their widths and order, the features (use ``norm=True``), the head and its
initialisation; with ``optimizer: sgd``, ``weight_decay: 0``, ``warmup_epochs: 0``, ``scale_lr: true`` and the
13 lrs (``configs/probe/dinov2_linear.yaml``) the optimisation. Differs: features are cached from the
evaluation transform (no RandomResizedCrop/flip), the lr and epoch are selected on a held-out validation split
per (input, head) rather than over all 52 heads on the reported set, and tokens are stored in fp16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from vizoo.heads import create_head, get_head_class
from vizoo.heads.linear import LinearProbe
from vizoo.probe.cache import CachedSplit

_SPEC = re.compile(r"^(?:cls(?P<n>\d+)(?P<avg>\+avg)?|(?P<only>avg))$")


@dataclass(frozen=True)
class InputSpec:
    """One multi-block input: the [CLS] tokens of the last ``blocks`` blocks, plus the last block's patch
    mean when ``avgpool``.

    Args:
        blocks: how many of the last blocks contribute their class token (0: none).
        avgpool: append the mean of the last block's patch tokens.
    """

    blocks: int
    avgpool: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 0:
            raise ValueError(f"InputSpec.blocks must be an int >= 0, got {self.blocks!r}")
        if self.blocks == 0 and not self.avgpool:
            raise ValueError("an input needs at least one class token (blocks >= 1) or avgpool=True")

    @property
    def label(self) -> str:
        if self.blocks == 0:
            return "avg"
        return f"cls{self.blocks}" + ("+avg" if self.avgpool else "")

    @property
    def num_blocks(self) -> int:
        """How many of the last blocks must be cached."""
        return max(1, self.blocks)

    def width(self, dim: int) -> int:
        """Input width for tokens of width ``dim``: ``(blocks + avgpool) * dim``."""
        return (self.blocks + int(self.avgpool)) * dim

    @classmethod
    def parse(cls, text: "str | InputSpec") -> "InputSpec":
        """``cls1``, ``cls1+avg``, ``cls4``, ``cls4+avg`` (any n >= 1) or ``avg``."""
        if isinstance(text, InputSpec):
            return text
        match = _SPEC.match(str(text).strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"input {text!r} is not understood; accepted: 'cls<n>' (class tokens of the last n blocks), "
                f"'cls<n>+avg' (plus the last block's patch mean) or 'avg', e.g. cls1 cls1+avg cls4 cls4+avg"
            )
        if match["only"]:
            return cls(0, True)
        n = int(match["n"])
        if n < 1:
            raise ValueError(f"input {text!r}: n must be >= 1")
        return cls(n, bool(match["avg"]))


DINOV2_INPUTS = tuple(InputSpec.parse(s) for s in ("cls1", "cls1+avg", "cls4", "cls4+avg"))


def blocks_needed(specs: "list[InputSpec]") -> int:
    """How many last blocks the inputs read together (the cache holds those)."""
    return max(s.num_blocks for s in specs)


def concat_features(split: CachedSplit, spec: InputSpec) -> torch.Tensor:
    """The concatenated input vectors ``[n, width]`` (fp32) of ``split`` for ``spec``.

    Class tokens (prefix token 0) of the last ``spec.blocks`` cached blocks in ascending block order, then
    (``avgpool``) the mean over the patch tokens of the last cached block, as ``create_linear_input`` in
    DINOv2's linear evaluation.
    """
    layers = sorted(split.layers)
    if len(layers) < spec.num_blocks:
        raise ValueError(
            f"input {spec.label} needs the last {spec.num_blocks} blocks, the features hold {len(layers)} "
            f"(layers {layers})"
        )
    if layers != list(range(layers[-1] - len(layers) + 1, layers[-1] + 1)):
        raise ValueError(
            f"multi-block inputs need consecutive last blocks, the features hold layers {layers}"
        )
    parts = []
    for layer in layers[len(layers) - spec.blocks :] if spec.blocks else []:
        prefix = split.prefix[layer]
        if prefix.shape[1] == 0:
            raise ValueError(
                f"input {spec.label} needs a class token, but this backbone returns no prefix tokens; "
                f"use 'avg' (patch mean only) or a backbone with a class token"
            )
        parts.append(prefix[:, 0].float())
    if spec.avgpool:
        parts.append(split.tokens[layers[-1]].float().mean(dim=1))
    return torch.cat(parts, dim=1)


def concat_split(split: CachedSplit, spec: InputSpec) -> CachedSplit:
    """A split with one pseudo-layer (key: the last block) whose single token per image is the input vector.

    Tokens are ``[n, 1, width]`` (fp32), there are no prefix tokens and the grid is ``(1, 1)``; labels and
    manifest are shared with ``split``.
    """
    vectors = concat_features(split, spec)
    key = max(split.layers)
    empty = vectors.new_zeros(vectors.shape[0], 0, vectors.shape[1])
    return CachedSplit(
        [key], {key: vectors[:, None, :]}, {key: empty}, {key: (1, 1)}, split.labels, split.manifest
    )


class PlainLinear(LinearProbe):
    """DINOv2's linear classifier: ``Linear(width, C)`` with weight N(0, 0.01) and bias 0, no BatchNorm.

    Pools like vizoo's ``linear`` (``pool``: ``auto``/``cls``/``avg``); on a concatenated input (one token,
    no prefix) the pooling is the identity.
    """

    head_name = "plain_linear"

    def __init__(self, in_dim: int, num_classes: int, pool: str = "auto") -> None:
        super().__init__(in_dim, num_classes, pool)
        self.head_bn = nn.Identity()
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)


LOCAL_HEADS = {"plain_linear": PlainLinear}
LINEAR_HEADS = ("linear", "plain_linear")


def head_class(name: str):
    """The head class for ``name``: vizoo.probe's own heads (``plain_linear``) first, then the registry."""
    if name in LOCAL_HEADS:
        return LOCAL_HEADS[name]
    try:
        return get_head_class(name)
    except ValueError:
        from vizoo.heads import list_heads
        from vizoo.utils import unknown_name_error

        raise unknown_name_error("probe head", name, sorted(list_heads() + list(LOCAL_HEADS))) from None


def make_head(name: str, in_dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a head by name (``plain_linear`` here, anything else through ``vizoo.heads.create_head``)."""
    if name in LOCAL_HEADS:
        allowed = {"pool"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(
                f"probe head {name!r} got unknown option(s) {unknown}; accepted options: pool='auto'"
            )
        return LOCAL_HEADS[name](in_dim, num_classes, **kwargs)
    return create_head(name, in_dim, num_classes, **kwargs)

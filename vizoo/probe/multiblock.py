"""DINOv2-style multi-block linear inputs on cached features.

DINOv2's linear evaluation (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
TMLR 2024; ``dinov2/eval/linear.py``) trains linear classifiers on four inputs built
from ``get_intermediate_layers(n=4, return_class_token=True, norm=True)``:

* ``cls1``: the [CLS] token of the last block (width D);
* ``cls1+avg``: that, then the mean of the last block's patch tokens (2D);
* ``cls4``: the [CLS] tokens of the last 4 blocks concatenated, oldest block first (4D);
* ``cls4+avg``: those, then the last block's patch mean (5D).

An :class:`InputSpec` names one such input (``cls<n>``, ``cls<n>+avg`` or ``avg``). :func:`concat_features`
builds the vectors from a :class:`~vizoo.probe.cache.CachedSplit` of the last blocks; the probing engine feeds
each input to the heads as a token stream of one token per image (``[n, 1, width]``, no prefix tokens, grid
``(1, 1)``), so one cache extraction of the last ``max(n)`` blocks and one training pass serve every input and
every lr, as in DINOv2's single joint pass. The head DINOv2 trains is a bare ``nn.Linear`` (weight N(0, 0.01),
bias 0, no BatchNorm): ``plain_linear`` in ``vizoo.heads``; on one token without prefix its pooling is the
identity.

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


LINEAR_HEADS = ("linear", "plain_linear")


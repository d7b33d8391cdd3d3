"""Common base of every probing head, and the head registry.

Every head follows the layout of the official efficient-probing code (Psomas et al., "Attention, Please!
Revisiting Attentive Probing Through the Lens of Efficiency", ICLR 2026, arXiv 2506.10178;
github.com/billpsomas/efficient-probing, ``probe_heads.py``):

    tokens [B, N, D] --pool--> [B, width] --BatchNorm1d(width, affine=False, eps=1e-6)--> Linear(width, C)

The non-affine BatchNorm has no parameters (only running statistics); the Linear keeps PyTorch's default
initialisation, which is what the official probes train from (MAE's trunc-normal(0.01) line is commented out
there).

Call convention (shared by all heads)::

    logits = head(tokens, prefix=None, grid=None)

* ``tokens``: patch tokens ``[B, N, D]``.
* ``prefix``: prefix tokens ``[B, P, D]`` (class token first, then registers, timm's order) or ``None``.
  ``head.uses_prefix`` says what the head does with them: ``'required'`` (error without them),
  ``'optional'`` (used when given) or ``'never'`` (ignored, so one trainer can feed the same arguments to
  many heads).
* ``grid``: ``(H, W)`` of the patch grid, row-major. Heads with ``needs_grid`` use it; when it is ``None``
  a square grid is assumed and a non-square N is an error.

Counting rules:

* ``num_params()``: trainable parameters, pooling + classifier (the BatchNorm has none).
* ``macs(num_tokens, num_prefix)``: multiply-adds per sample of the matrix products and convolutions
  (linear layers, attention logits and attention-weighted sums, convs), i.e. exactly what
  ``torch.utils.flop_counter.FlopCounterMode`` counts, divided by two. Element-wise work (norms, softmax,
  activations, residual adds, biases, means) is not counted. The classifier is included. The count is for
  a batch of one: work that does not depend on the input (projecting a learned query) is done once per
  batch but counted once per sample.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import nn

from vizoo.utils import unknown_name_error

PrefixUse = Literal["required", "optional", "never"]

_REGISTRY: dict[str, type[ProbeHead]] = {}

H = TypeVar("H", bound=type)


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator that registers a :class:`ProbeHead` subclass under ``name``."""

    def deco(cls: H) -> H:
        if name in _REGISTRY:
            raise ValueError(f"probe head {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, ProbeHead)):
            raise TypeError(f"register_head({name!r}) expects a ProbeHead subclass, got {cls!r}")
        cls.head_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """Sorted names of all registered probing heads."""
    return sorted(_REGISTRY)


def get_head_class(name: str) -> type[ProbeHead]:
    """The class registered under ``name``; unknown names raise a ValueError listing close matches."""
    if name not in _REGISTRY:
        raise unknown_name_error("probe head", name, _REGISTRY)
    return _REGISTRY[name]


def head_options(name: str) -> dict[str, object]:
    """The keyword options of head ``name`` with their defaults (beyond ``in_dim`` and ``num_classes``)."""
    sig = inspect.signature(get_head_class(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("self", "in_dim", "num_classes") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def create_head(name: str, in_dim: int, num_classes: int, **kwargs) -> ProbeHead:
    """Build the probing head ``name`` for ``in_dim``-wide tokens and ``num_classes`` classes.

    Args:
        name: a name from :func:`list_heads`.
        in_dim: token width D of the frozen backbone.
        num_classes: number of output logits.
        **kwargs: head-specific options (see :func:`head_options`); an unknown option is a ValueError.

    Returns:
        The head, an ``nn.Module`` subclass of :class:`ProbeHead`.
    """
    cls = get_head_class(name)
    options = head_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"
        raise ValueError(f"probe head {name!r} got unknown option(s) {unknown}; accepted options: {accepted}")
    check_positive_int("in_dim", in_dim)
    check_positive_int("num_classes", num_classes)
    return cls(in_dim, num_classes, **kwargs)


def check_positive_int(what: str, value: object) -> None:
    """Raise a ValueError unless ``value`` is a positive int (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def check_divisible(what: str, value: int, divisor: int, divisor_name: str) -> None:
    """Raise a ValueError unless ``divisor`` divides ``value``."""
    if value % divisor:
        raise ValueError(f"{what}={value} must be divisible by {divisor_name}={divisor}")


class ProbeHead(nn.Module):
    """Base class: a pooling followed by ``BatchNorm1d(width, affine=False, eps=1e-6)`` and ``Linear``.

    Subclasses build their pooling modules in ``__init__``, then call ``self._init_classifier(width)`` (the
    official code builds the pooling first, then the classifier), and implement :meth:`pool` and
    :meth:`pool_macs`.

    Class attributes:
        head_name: registry name (set by :func:`register_head`).
        uses_prefix: ``'required'`` | ``'optional'`` | ``'never'``; the class attribute describes the default
            options, the instance attribute the options it was built with (e.g. ``use_prefix=True``).
        needs_grid: the pooling needs the 2-D layout of the tokens (convs, absolute position embeddings).
        permutation_invariant: the output does not change when the patch tokens are permuted.
    """

    head_name: str = ""
    uses_prefix: PrefixUse = "never"
    needs_grid: bool = False
    permutation_invariant: bool = True
    use_prefix: bool = False

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("num_classes", num_classes)
        self.in_dim = in_dim
        self.num_classes = num_classes

    def _set_use_prefix(self, use_prefix: bool) -> None:
        """``use_prefix=True`` is the official ``<pooling>_all``: the prefix tokens are prepended to the patch
        tokens and pooled like them (they are then required)."""
        if not isinstance(use_prefix, bool):
            raise ValueError(f"{self.head_name}: use_prefix must be a bool, got {use_prefix!r}")  # noqa: TRY004
        self.use_prefix = use_prefix
        self.uses_prefix = "required" if use_prefix else "never"

    def _init_classifier(self, width: int) -> None:
        if hasattr(self, "head_bn") or hasattr(self, "classifier"):
            raise RuntimeError(f"{type(self).__name__}: the classifier was already built")
        self.width = width
        self.head_bn = nn.BatchNorm1d(width, affine=False, eps=1e-6)
        self.classifier = nn.Linear(width, self.num_classes)

    # ---- to implement -------------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, prefix: torch.Tensor | None, grid: tuple[int, int] | None
             ) -> torch.Tensor:
        """Pool ``tokens [B, N, D]`` (and ``prefix [B, P, D]`` or None) into ``[B, width]``.

        ``grid`` is already resolved (``(H, W)`` with ``H * W == N``) for heads with ``needs_grid``. With
        ``use_prefix`` the prefix tokens arrive prepended to ``tokens`` and ``prefix`` is None.
        """
        raise NotImplementedError

    def pool_macs(self, num_tokens: int, num_prefix: int) -> int:
        """Multiply-adds per sample of :meth:`pool` (see the module docstring for the rule); with
        ``use_prefix``, ``num_tokens`` already includes the prefix tokens."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for patch tokens ``[B, N, D]``; see the module docstring."""
        return self.classifier(self.head_bn(self.forward_features(tokens, prefix, grid)))

    def forward_features(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None,
                         grid: tuple[int, int] | None = None) -> torch.Tensor:
        """The pooled representation ``[B, width]`` (before the BatchNorm and the classifier)."""
        tokens, prefix, grid = self.check_inputs(tokens, prefix, grid)
        if self.use_prefix:
            tokens, prefix = torch.cat([prefix, tokens], dim=1), None
        return self.pool(tokens, prefix, grid)

    def check_inputs(self, tokens: torch.Tensor, prefix: torch.Tensor | None,
                     grid: tuple[int, int] | None):
        """Validate shapes; returns ``(tokens, prefix or None, grid or None)``."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"{self.head_name}: tokens must be a tensor [B, N, D], got {shape}")
        b, n, d = tokens.shape
        if d != self.in_dim:
            raise ValueError(f"{self.head_name}: tokens have width D={d} but the head was built for "
                             f"in_dim={self.in_dim}")
        if n < 1:
            raise ValueError(f"{self.head_name}: tokens must hold at least one patch token, got N=0")
        if prefix is not None:
            if not isinstance(prefix, torch.Tensor) or prefix.dim() != 3 or prefix.shape[0] != b \
                    or prefix.shape[2] != d:
                shape = tuple(prefix.shape) if isinstance(prefix, torch.Tensor) else type(prefix).__name__
                raise ValueError(f"{self.head_name}: prefix must be a tensor [B={b}, P, D={d}], got {shape}")
            if prefix.shape[1] == 0:
                prefix = None
        if self.uses_prefix == "never":
            prefix = None
        elif self.uses_prefix == "required" and prefix is None:
            raise ValueError(f"{self.head_name}: this head (as configured) needs the prefix tokens "
                             f"(class token first) as prefix=[B, P, D]; got none. {self._prefix_hint()}")
        if self.needs_grid:
            grid = self.resolve_grid(n, grid)
        else:
            grid = None
        return tokens, prefix, grid

    def _prefix_hint(self) -> str:
        return ""

    def resolve_grid(self, n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
        """``grid`` checked against ``n`` tokens, or the square grid when ``grid`` is None."""
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{self.head_name}: needs the patch grid but N={n} tokens is not a square; "
                                 f"pass grid=(H, W) with H * W == N")
            return side, side
        try:
            h, w = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise ValueError(f"{self.head_name}: grid must be (H, W), got {grid!r}") from None
        if h < 1 or w < 1 or h * w != n:
            raise ValueError(f"{self.head_name}: grid {(h, w)} does not match N={n} tokens (need H * W == N)")
        return h, w

    def num_params(self) -> int:
        """Trainable parameters, pooling and classifier together."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def macs(self, num_tokens: int, num_prefix: int = 0) -> int:
        """Multiply-adds per sample for ``num_tokens`` patch tokens and ``num_prefix`` prefix tokens.

        Counts matrix products and convolutions only (what FlopCounterMode counts, halved), classifier
        included. ``num_prefix`` only matters for heads that use the prefix tokens.
        """
        check_positive_int("num_tokens", num_tokens)
        if isinstance(num_prefix, bool) or not isinstance(num_prefix, int) or num_prefix < 0:
            raise ValueError(f"num_prefix must be a non-negative int, got {num_prefix!r}")
        if self.uses_prefix == "never":
            num_prefix = 0
        elif self.uses_prefix == "required" and num_prefix == 0:
            raise ValueError(f"{self.head_name}: this head needs prefix tokens; pass num_prefix >= 1")
        if self.use_prefix:
            num_tokens, num_prefix = num_tokens + num_prefix, 0
        return int(self.pool_macs(num_tokens, num_prefix)) + self.width * self.num_classes

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"


def describe_heads(in_dim: int, num_classes: int, num_tokens: int, num_prefix: int = 0,
                   names: list[str] | None = None, options: dict[str, dict] | None = None) -> list[dict]:
    """One row per head: name, trainable parameters, multiply-adds per sample and the call properties.

    Heads are built on the ``meta`` device (no memory, no initialisation), so this is cheap for any width.

    Args:
        in_dim: token width D.
        num_classes: number of classes C.
        num_tokens: patch tokens N per sample (for the multiply-adds).
        num_prefix: prefix tokens per sample (counted only by heads that use them).
        names: heads to describe (default: all registered).
        options: per-head keyword options, ``{name: {option: value}}``.

    Returns:
        A list of dicts with keys name, params, macs, uses_prefix, permutation_invariant, needs_grid.
    """
    rows = []
    for name in names if names is not None else list_heads():
        with torch.device("meta"):
            head = create_head(name, in_dim, num_classes, **(options or {}).get(name, {}))
        rows.append({
            "name": name,
            "params": head.num_params(),
            "macs": head.macs(num_tokens, num_prefix) if (num_prefix or head.uses_prefix != "required") else None,
            "uses_prefix": head.uses_prefix,
            "permutation_invariant": head.permutation_invariant,
            "needs_grid": head.needs_grid,
        })
    return rows

"""Frozen-backbone token extraction through timm's ``forward_intermediates``.

Any timm model works (vizoo's own backbones, timm's, and ``hf-hub:`` / ``local-dir:`` names; ``import vizoo``
registers vizoo's). The backbone is frozen and kept in eval mode; the chosen blocks come from
``forward_intermediates(indices=...)``:

* ViT-like models (``num_prefix_tokens`` attribute, ``return_prefix_tokens`` argument) are asked for
  ``output_fmt='NLC'`` with the prefix tokens returned separately (class token first, then registers).
* Hierarchical models and CNNs give NCHW maps; they are flattened row-major to ``[B, H*W, C]`` tokens, the
  grid ``(H, W)`` is recorded, and there are no prefix tokens.

``norm`` chooses whether the model's final norm is applied to each returned block: MAE-style probing reads
the tokens before it (``norm=False``, as the efficient-probing code does for its MAE ViTs), DINOv2-style after
it (``norm=True``, DINOv2's ``get_intermediate_layers(norm=True)``). The choice is recorded in every cache
manifest and results file.

This replaces the per-family wrappers of the efficient-probing code (``models_more.py``) with the one uniform
timm hook, ``forward_intermediates``, which every timm and vizoo backbone implements.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

import vizoo  # noqa: F401  (registers vizoo's backbones with timm)


@dataclass
class LayerTokens:
    """Tokens of one block for a batch: ``tokens [B, N, D]``, ``prefix [B, P, D]`` (P may be 0), and the
    token grid ``(H, W)`` (None when unknown)."""

    tokens: torch.Tensor
    prefix: torch.Tensor
    grid: tuple[int, int] | None = None


@dataclass
class BackboneSpec:
    """Everything that identifies a frozen backbone (used for cache keys and results files).

    Args:
        model: a timm model name (``vit_small_patch16_224``, ``nat_mini``, ``hf-hub:org/name``,
            ``local-dir:/path``).
        model_kwargs: extra arguments for ``timm.create_model`` (e.g. ``img_size``, ``depths``).
        pretrained: load the model's pretrained weights (``hf-hub:``/``local-dir:`` names load theirs; a hub
            name downloads only if the user asked for it by name).
        checkpoint: a state-dict file (``.safetensors`` or torch) to load instead, strictly.
    """

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    checkpoint: str | None = None


def create_backbone(spec: BackboneSpec) -> nn.Module:
    """Build the frozen backbone: classifier removed, ``requires_grad=False``, eval mode."""
    from vizoo.hub.loading import create_model

    kwargs = dict(spec.model_kwargs)
    kwargs["num_classes"] = 0
    pretrained = spec.pretrained and spec.checkpoint is None
    state = load_state_dict_file(spec.checkpoint) if spec.checkpoint is not None else None  # fail before building
    model = create_model(spec.model, pretrained=pretrained, **kwargs)  # clear errors: unknown, offline, damaged
    if state is not None:
        state = {k: v for k, v in state.items() if not _is_classifier_key(model, k)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {spec.checkpoint} does not fit {spec.model}: missing keys {missing[:8]}, "
                f"unexpected keys {unexpected[:8]}"
            )
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"model {spec.model!r} has no forward_intermediates(); vizoo probe needs it")
    model.requires_grad_(False)
    return model.eval()


def _is_classifier_key(model: nn.Module, key: str) -> bool:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    return any(key == f"{n}.weight" or key == f"{n}.bias" or key.startswith(f"{n}.fc.") for n in names)


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file (safetensors, a torch pickle, a training or ``vizoo fit`` checkpoint, with
    ``model.`` / ``backbone.`` / ``module.`` prefixes stripped): :func:`vizoo.hub.checkpoints.read_state_dict`."""
    from vizoo.hub.checkpoints import read_state_dict

    return read_state_dict(path)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (name, dtype, shape, bytes): the weights' identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(
                t.view(-1).view(torch.uint8).numpy().tobytes()
                if t.dtype != torch.bool
                else t.numpy().tobytes()
            )
    return h.hexdigest()


def num_blocks(model: nn.Module) -> int:
    """How many intermediate indices ``forward_intermediates`` accepts for this model (timm's
    ``feature_info`` has one entry per returnable output; ViTs list every block there)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and len(info):
        return len(info)
    for attr in ("blocks", "stages", "layers", "levels"):
        mod = getattr(model, attr, None)
        if isinstance(mod, (nn.Sequential, nn.ModuleList)) and len(mod):
            return len(mod)
    raise ValueError("cannot tell how many blocks this model has (no feature_info/blocks/stages)")


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Sorted absolute block indices for ``layers`` (negative counts from the end; default: the last block).

    Sorted because ``forward_intermediates`` returns blocks in ascending order whatever order it was given.
    """
    n = num_blocks(model)
    layers = [-1] if layers is None or len(layers) == 0 else list(layers)
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(
                f"layer {layer!r} is out of range: this model has {n} blocks, so layers must be "
                f"integers in [{-n}, {n - 1}]"
            )
        resolved.append(layer % n)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {layers} name the same block twice (resolved: {resolved})")
    return sorted(resolved)


def _supports(model: nn.Module, arg: str) -> bool:
    return arg in inspect.signature(model.forward_intermediates).parameters


@torch.no_grad()
def extract_tokens(
    model: nn.Module, images: torch.Tensor, layers: Sequence[int], norm: bool
) -> list[LayerTokens]:
    """Patch and prefix tokens of blocks ``layers`` (absolute indices) for a batch of images.

    Args:
        model: a frozen timm model with ``forward_intermediates``.
        images: ``[B, 3, H, W]`` normalised images.
        layers: sorted absolute block indices (see :func:`resolve_layers`).
        norm: apply the model's final norm to each block's output.

    Returns:
        One :class:`LayerTokens` per layer, in the order of ``layers``.
    """
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"layers must be sorted unique absolute indices, got {list(layers)}")
    kwargs: dict[str, Any] = dict(indices=list(layers), intermediates_only=True)
    if _supports(model, "norm"):
        kwargs["norm"] = norm
    elif norm:
        raise ValueError(f"{type(model).__name__}.forward_intermediates has no norm option; use norm=False")
    has_prefix = _supports(model, "return_prefix_tokens") and getattr(model, "num_prefix_tokens", 0) > 0
    if has_prefix:
        kwargs.update(return_prefix_tokens=True)
    if _supports(model, "output_fmt") and hasattr(model, "num_prefix_tokens"):
        kwargs["output_fmt"] = "NLC"
    outputs = model.forward_intermediates(images, **kwargs)
    result = []
    for out in outputs:
        prefix = None
        if isinstance(out, (tuple, list)):
            out, prefix = out
        if out.ndim == 4:  # NCHW map -> row-major tokens
            b, c, h, w = out.shape
            grid = (h, w)
            tokens = out.flatten(2).transpose(1, 2)
        elif out.ndim == 3:
            tokens = out
            grid = _vit_grid(model, images, tokens.shape[1])
        else:
            raise ValueError(
                f"unexpected intermediate of shape {tuple(out.shape)} from {type(model).__name__}"
            )
        if prefix is None:
            prefix = tokens.new_zeros(tokens.shape[0], 0, tokens.shape[2])
        result.append(LayerTokens(tokens.contiguous(), prefix.contiguous(), grid))
    return result


def _vit_grid(model: nn.Module, images: torch.Tensor, n: int) -> tuple[int, int] | None:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        try:
            grid = tuple(int(v) for v in patch_embed.dynamic_feat_size(images.shape[-2:]))
            if grid[0] * grid[1] == n:
                return grid
        except Exception:  # noqa: BLE001  (fall back to the static grid)
            pass
    grid = getattr(patch_embed, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == n:
        return int(grid[0]), int(grid[1])
    return None


def data_config_for(model: nn.Module, image_size: int | None = None) -> dict[str, Any]:
    """timm's data config of the model (mean/std/interpolation/crop), optionally at another input size."""
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    patch_embed = getattr(model, "patch_embed", None)
    fixed = getattr(patch_embed, "img_size", None)
    if image_size is None and fixed is not None and not getattr(patch_embed, "dynamic_img_size", False):
        image_size = int(fixed[-1] if isinstance(fixed, (tuple, list)) else fixed)  # the model's own size
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return config


def stable_json(obj: Any) -> str:
    """JSON with sorted keys and tuples as lists: the canonical text that cache keys hash."""
    return json.dumps(obj, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else repr(o))

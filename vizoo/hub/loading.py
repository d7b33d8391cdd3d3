"""Loading exported models, with errors a person can act on.

Any model name timm accepts works here (``name``, ``name.tag``, ``hf-hub:ORG/REPO[@REV]``, ``local-dir:DIR``);
:func:`create_model` imports vizoo first (so config files that name a vizoo architecture resolve) and turns
timm's and huggingface_hub's low-level errors into ones that say what to do: an unregistered architecture, a file
missing from the offline cache, a truncated or corrupted safetensors file (removed from the Hub cache so the next
download fetches it again), or weights that belong to another variant (mismatched shapes listed by key).
:func:`verify_folder` is the check that ``vizoo hub push`` runs before uploading.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vizoo.hub.checkpoints import check_safetensors, load_safetensors
from vizoo.hub.folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_weights_hash,
    compare_forward_check,
    forward_check,
)
from vizoo.utils import unknown_name_error

_logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle", ".tar")
IMPORT_HINT = ("vizoo architectures are registered by `import vizoo` (vizoo's CLI does it); a model from another "
               "zoo needs that zoo's package imported before timm.create_model.")


def unknown_model_error(name: str) -> ValueError:
    """The error for an architecture timm does not know: close names first, and how to register one."""
    import timm

    return unknown_name_error("model", name, timm.list_models(), hint=IMPORT_HINT)


def mismatch_report(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Compare a state dict against a model's: keys only in the model, only in the file, and shape mismatches.

    Returns:
        ``{"missing": [...], "unexpected": [...], "shape": [(key, file_shape, model_shape), ...]}``.
    """
    own = model.state_dict()
    shape = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return {
        "missing": [k for k in own if k not in state_dict],
        "unexpected": [k for k in state_dict if k not in own],
        "shape": shape,
    }


def format_mismatch(report: Mapping[str, list], limit: int = 20) -> str:
    """One readable paragraph for a :func:`mismatch_report`."""
    parts = []
    if report.get("shape"):
        rows = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in report["shape"][:limit]]
        more = len(report["shape"]) - limit
        parts.append(f"{len(report['shape'])} shape mismatch(es): " + "; ".join(rows)
                     + (f"; ... {more} more" if more > 0 else ""))
    for what in ("missing", "unexpected"):
        keys = report.get(what) or []
        if keys:
            more = len(keys) - limit
            parts.append(f"{len(keys)} {what} key(s): " + ", ".join(keys[:limit])
                         + (f", ... {more} more" if more > 0 else ""))
    return ". ".join(parts)


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """``model.load_state_dict(strict=True)`` with a ValueError that lists every mismatch by key."""
    report = mismatch_report(model, state_dict)
    if any(report.values()):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        hint = " Is it a checkpoint for another variant?" if report["shape"] else ""
        raise ValueError(f"{source} does not fit {arch}: {format_mismatch(report)}.{hint}")
    model.load_state_dict(state_dict, strict=True)


def _hf_cached_file(repo: str, filename: str, cache_dir: str | os.PathLike | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
    return Path(found) if isinstance(found, str) else None


def remove_from_cache(path: Path) -> None:
    """Delete a cached snapshot file and the blob it points to (the Hub cache's layout), ignoring read-only caches."""
    try:
        target = path.resolve()
        path.unlink()
        if target != path and target.exists():
            target.unlink()
    except OSError as err:
        _logger.warning("could not remove %s from the cache: %s", path, err)


def create_model(model_name: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` after ``import vizoo``, with clear errors (see the module docstring).

    Args:
        model_name: a registry name, ``name.tag``, ``hf-hub:ORG/REPO[@REV]`` or ``local-dir:DIR``.
        pretrained: load weights.
        **kwargs: passed to ``timm.create_model`` (``cache_dir``, ``num_classes``, ``pretrained_cfg_overlay``, ...).

    Raises:
        ValueError: unknown architecture, unreadable weights, or weights that do not fit the architecture.
        FileNotFoundError: a Hub file is not in the cache while offline, or a local folder/file is missing.
    """
    import timm
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    import vizoo  # noqa: F401  (registers the architectures)

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; is it a folder written by `vizoo hub export`?")
        config = read_config(folder / CONFIG_NAME)
        _check_architecture(config, str(folder / CONFIG_NAME))
        if pretrained and (folder / WEIGHTS_NAME).is_file():
            check_safetensors(folder / WEIGHTS_NAME)  # a clear error for a damaged file, before timm's
            check_weights_hash(config, folder / WEIGHTS_NAME)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        if pretrained and model_name.startswith("hf-hub:"):
            _check_hub_hash(model_name[len("hf-hub:"):], kwargs.get("cache_dir"))
        return model
    except RuntimeError as err:
        match = re.match(r"Unknown model \((.*)\)", str(err))
        if match:
            raise unknown_model_error(match.group(1)) from err
        if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
            raise ValueError(f"the weights do not fit {model_name}: {err}") from err
        raise
    except LocalEntryNotFoundError as err:
        from huggingface_hub import constants

        raise FileNotFoundError(
            f"{model_name}: a file it needs is not in the Hub cache "
            f"({kwargs.get('cache_dir') or constants.HF_HUB_CACHE})"
            + (" and HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE else
               " and the Hub could not be reached")
            + ". Download it while online (`vizoo hub pull REPO`), or point HF_HUB_CACHE / cache_dir at a cache "
            "that holds it."
        ) from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise FileNotFoundError(f"{model_name}: {str(err).splitlines()[0]}") from err
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        cached = None
        if model_name.startswith("hf-hub:"):
            cached = _hf_cached_file(model_name[len("hf-hub:"):], WEIGHTS_NAME, kwargs.get("cache_dir"))
        if cached is not None:
            remove_from_cache(cached)
            where = f" It was removed from the Hub cache ({cached}); the next download fetches it again."
        else:
            where = ""
        raise ValueError(
            f"{model_name}: the weights file is not a valid safetensors file ({err}); it is truncated or "
            f"corrupted.{where}"
        ) from err


@contextlib.contextmanager
def pretrained_download_errors(name: str, cfg: Any):
    """Turn a failed download of a family's pretrained weights into one line: where the weights would come from,
    why they could not be fetched, and how to load a local file instead. Used by vizoo's model factories, so
    ``timm.create_model(name, pretrained=True)`` offline says what to do."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  (re-raised unless it is a download or file error)
        origin = type(err).__module__.split(".")[0]
        if not isinstance(err, (OSError, ConnectionError)) and origin not in ("huggingface_hub", "urllib", "requests",
                                                                            "httpx"):
            raise
        tag = f"{name}.{cfg.tag}" if getattr(cfg, "tag", None) else name
        if getattr(cfg, "file", None):
            raise FileNotFoundError(f"{tag}: cannot read the pretrained weights file {cfg.file} ({err})") from None
        where = (f"the Hugging Face Hub repository {cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None)
                 else getattr(cfg, "url", None) or "nowhere (this tag names no weights)")
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE=1 forbids downloads" if constants.HF_HUB_OFFLINE else "the download failed"
        raise FileNotFoundError(
            f"{tag}: pretrained weights come from {where}, and {why} ({type(err).__name__}). Download them once "
            f"online (they are then cached), or load a local file: timm.create_model({name!r}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file='/path/to/weights.pth'))"
        ) from None


def read_config(path: Path) -> dict[str, Any]:
    """An export's ``config.json``, with a ValueError naming the file when it is not valid JSON."""
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is damaged. Export or download it again.") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an export config object")
    return config


def _check_hub_hash(repo: str, cache_dir: str | os.PathLike | None) -> None:
    """Check the cached weights of a Hub export against the SHA-256 its config recorded (removing a bad file)."""
    config_path = _hf_cached_file(repo, CONFIG_NAME, cache_dir)
    weights = _hf_cached_file(repo, WEIGHTS_NAME, cache_dir)
    if config_path is None or weights is None:
        return
    try:
        check_weights_hash(read_config(config_path), weights)
    except ValueError as err:
        remove_from_cache(weights)
        raise ValueError(f"{err} It was removed from the Hub cache; the next download fetches it again.") from err


def _check_architecture(config: Mapping[str, Any], where: str) -> str:
    import timm

    arch = config.get("architecture")
    if not arch:
        raise ValueError(f"{where} names no 'architecture'; it is not a timm/vizoo export config.")
    if not timm.is_model(arch):
        raise unknown_model_error(arch)
    return arch


def verify_folder(folder: str | Path, check_forward: bool = True) -> nn.Module:
    """Check that an export folder loads back exactly; return the loaded model.

    The checks: ``config.json`` parses and names a registered architecture; ``model.safetensors`` exists and is valid;
    no pickle weights are present; the model builds from ``model_args`` and the saved ``pretrained_cfg`` and loads the
    file strictly (every key, every shape); timm's own ``local-dir:`` loader (which also runs the family's
    ``pretrained_filter_fn``) gives the same weights; and, if the export recorded one, the forward check reproduces.

    Raises:
        FileNotFoundError / ValueError: naming the first check that failed.
    """
    import timm

    import vizoo  # noqa: F401

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; export it with `vizoo hub export` first.")
    config = read_config(folder / CONFIG_NAME)
    arch = _check_architecture(config, str(folder / CONFIG_NAME))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder} holds pickle weights {pickles}; vizoo publishes safetensors only. Remove them.")
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}.")
    state_dict = load_safetensors(folder / WEIGHTS_NAME)

    # built the way timm's loaders build it (model_args + the saved pretrained_cfg, whose tag some families read)
    model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    load_strict(model, state_dict, source=str(folder / WEIGHTS_NAME))  # another variant's weights: named keys
    check_weights_hash(config, folder / WEIGHTS_NAME)
    model.eval()

    via_timm = create_model(f"local-dir:{folder}", pretrained=True).state_dict()
    differ = [k for k, v in model.state_dict().items() if k not in via_timm or not torch.equal(v, via_timm[k])]
    if differ:
        raise ValueError(
            f"timm's loader (local-dir:, through {arch}'s pretrained_filter_fn) changes {len(differ)} tensor(s) of "
            f"the exported weights, e.g. {differ[:5]}: the family's checkpoint_filter_fn must pass native vizoo "
            "state dicts through unchanged."
        )

    expected = (config.get("vizoo") or {}).get("forward_check")
    if check_forward and expected:
        problem = compare_forward_check(expected, forward_check(model, expected["input_size"], expected["seed"]))
        if problem:
            raise ValueError(f"{folder} does not reproduce its exported forward check: {problem}.")
    return model

"""Reading checkpoint files safely: safetensors, plain PyTorch pickles, the papers' training checkpoints and
``vizoo fit``'s Lightning checkpoints.

Pickles are first read with ``torch.load(weights_only=True)``. Some official files hold more than tensors (InLine's
``config`` entry is a pickled yacs ``CfgNode``), which that loader refuses. Those are then read with a restricted
unpickler: only tensor-rebuilding functions, storages, dtypes and plain containers are imported; any other class or
function named in the file is replaced by an inert stand-in (a ``dict`` subclass that runs no code), so nothing
from the file is ever executed, and the caller reads only the tensor entries it needs.

:func:`extract_state_dict` is vizoo's one unwrapper: ``vizoo convert``, ``vizoo hub export --checkpoint``, the probe's
``--checkpoint`` and every backbone family's ``checkpoint_filter_fn`` find the weights through it
(:func:`read_state_dict` reads a file and unwraps it in one call).
"""
from __future__ import annotations

import builtins
import collections
import logging
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_logger = logging.getLogger(__name__)

# Keys under which training scripts store the model's weights, most specific first. `state_dict_ema` and
# `model_ema` are only read when asked for (InLine's CSwin files carry both; the paper reports `model`).
WEIGHT_KEYS = ("model", "state_dict", "model_state", "module", "net", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# Prefixes that wrappers put in front of every key: DataParallel/DDP, a LightningModule's attribute, a probe's.
STRIP_PREFIXES = ("module.", "model.", "backbone.")

_SAFE_BUILTINS = {
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray",
    "bool", "slice", "object", "NoneType", "range",
}


class UnsafeObject(dict):
    """Stand-in for a class or function a checkpoint names but the restricted loader will not import.

    It accepts any constructor arguments, item assignments and state, and runs no code from the file.
    """

    _qualname = "unknown"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self["__state__"] = state

    def __repr__(self) -> str:
        return f"<not loaded: {self._qualname}>"


def _torch_allowed(module: str, name: str) -> Any | None:
    """The torch objects a tensor checkpoint legitimately names, or None."""
    if module == "torch._utils" and name.startswith("_rebuild_"):
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype) or obj in (torch.Size, torch.device, torch.Tensor):
            return obj
        if isinstance(obj, type) and name.endswith("Storage"):
            return obj
    if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
        return getattr(torch.storage, name)
    return None


def _make_restricted_module(refused: set[str]) -> types.ModuleType:
    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            obj = _torch_allowed(module, name)
            if obj is not None:
                return obj
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "builtins" and name in _SAFE_BUILTINS:
                return type(None) if name == "NoneType" else getattr(builtins, name)
            if module == "copyreg" and name == "_reconstructor":
                return _safe_reconstructor
            refused.add(f"{module}.{name}")
            return type(name, (UnsafeObject,), {"_qualname": f"{module}.{name}"})

    mod = types.ModuleType("vizoo_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__name__ = "vizoo_restricted_pickle"
    return mod


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor restricted to stand-ins and plain builtin bases."""
    if issubclass(cls, UnsafeObject):
        return cls()
    if base is object:
        return object.__new__(cls)
    return base.__new__(cls, state)


def load_pickle(path: str | Path) -> Any:
    """Load a PyTorch pickle on the CPU without executing code from it.

    Args:
        path: a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file written by ``torch.save``.

    Returns:
        The unpickled object. If ``weights_only=True`` refused the file, objects other than tensors and plain
        containers come back as inert :class:`UnsafeObject` stand-ins (a message names them).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_error = str(err).strip().splitlines()[0]
    refused: set[str] = set()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_make_restricted_module(refused))
    _logger.warning(
        "%s: torch.load(weights_only=True) refused the file (%s). Read it with vizoo's restricted unpickler "
        "instead: tensors are loaded, these objects were NOT imported and are ignored: %s",
        path.name, first_error, ", ".join(sorted(refused)) or "none",
    )
    return obj


def load_file(path: str | Path) -> Any:
    """Load a safetensors file (as a state dict) or a PyTorch pickle (see :func:`load_pickle`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable safetensors / PyTorch file (truncated, corrupted, other format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        return load_pickle(path)
    except Exception as err:  # noqa: BLE001  (unpickling random bytes can raise nearly anything: IndexError, KeyError, ...)
        raise ValueError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Accepted: a safetensors file or a file written by torch.save (.pth/.pt/.bin/.ckpt); "
            "the file may be truncated or corrupted."
        ) from err


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning the library's errors into a ValueError that names the file."""
    import safetensors.torch

    path = Path(path)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError has no public base class to catch
        raise ValueError(
            f"{path} is not a valid safetensors file ({err}); it is truncated or corrupted. "
            "Delete it (and, for a Hub download, its cache entry) and write or download it again."
        ) from err


def check_safetensors(path: str | Path) -> None:
    """Cheaply check a safetensors file's header and size (no tensor is read); ValueError if it is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as err:
        raise ValueError(
            f"{path} is not a valid safetensors file ({err}); it is truncated or corrupted. "
            "Delete it (and, for a Hub download, its cache entry) and write or download it again."
        ) from err


def is_lightning_checkpoint(obj: Any) -> bool:
    """True for a ``vizoo fit`` checkpoint: a dict with ``state_dict`` and ``hyper_parameters['model_name']``."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("state_dict"), Mapping)
        and isinstance(obj.get("hyper_parameters"), Mapping)
        and "model_name" in obj["hyper_parameters"]
    )


def lightning_state_dict(ckpt: Mapping[str, Any], ema: bool = False) -> dict[str, torch.Tensor]:
    """The timm model's weights from a ``vizoo fit`` checkpoint (``model.*``, or ``ema.module.*`` with ``ema``).

    Raises:
        ValueError: the requested weights are not in the checkpoint.
    """
    prefix = "ema.module." if ema else "model."
    sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in ckpt["state_dict"]})
        what = "EMA weights (ema.module.*); was the model trained with EMA on?" if ema else "model weights (model.*)"
        raise ValueError(f"the Lightning checkpoint has no {what} Top-level key prefixes found: {prefixes}.")
    return sd


def extract_state_dict(obj: Any, ema: bool = False, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model's weights inside a loaded checkpoint: the one unwrapper every vizoo loader uses.

    Layouts read:
        * a plain state dict (``{name: tensor}``);
        * a training script's dict holding the weights under one of :data:`WEIGHT_KEYS` (``model``,
          ``state_dict``, ...), nested up to three deep (e.g. ``{"state_dict": {"model": {...}}}``), entries
          that are not tensors dropped;
        * the EMA copy under one of :data:`EMA_KEYS` (``state_dict_ema``, ``model_ema``, ``ema``) with ``ema``;
        * a ``vizoo fit`` Lightning checkpoint (``model.*``, or ``ema.module.*`` with ``ema``), returned with the
          timm model's own keys;
        * any other Lightning checkpoint (weights under ``state_dict``);
    and, except for ``vizoo fit`` checkpoints, :data:`STRIP_PREFIXES` are removed while every key carries one of
    them: DataParallel / DDP's ``module.``, a LightningModule's ``model.``, a wrapper's ``backbone.`` (and
    combinations of them, e.g. ``module.model.``).

    Args:
        obj: what :func:`load_file` returned.
        ema: take the EMA weights instead of the raw ones.
        source: a name for error messages.

    Raises:
        ValueError: no state dict found (the message lists the top-level keys), or ``ema`` and no EMA weights.
    """
    if is_lightning_checkpoint(obj):
        return lightning_state_dict(obj, ema=ema)  # already the timm model's own keys
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict or a checkpoint dict.")  # noqa: TRY004
    keys = EMA_KEYS if ema else WEIGHT_KEYS
    sd: Mapping[str, Any] = obj
    for depth in range(3):
        inner = next((sd[key] for key in keys if isinstance(sd.get(key), Mapping)), None)
        if inner is None:
            if ema and depth == 0:
                raise ValueError(
                    f"{source} has no EMA weights under any of {list(EMA_KEYS)}; keys: {sorted(map(str, obj))[:20]}."
                )
            break
        sd, keys = inner, WEIGHT_KEYS  # an EMA entry may wrap its weights like any other
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"found no tensors in {source}; looked under {list(EMA_KEYS if ema else WEIGHT_KEYS)} and at the top "
            f"level. Top-level keys: {sorted(map(str, obj))[:20]}."
        )
    return strip_prefixes(tensors)


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a :data:`STRIP_PREFIXES` prefix while every key starts with it (``module.model.x`` -> ``x``)."""
    while state_dict:
        prefix = next((p for p in STRIP_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def read_state_dict(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint file: :func:`load_file`, then :func:`extract_state_dict`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, or holds no weights (or no EMA weights with ``ema``).
    """
    return extract_state_dict(load_file(path), ema=ema, source=str(path))

"""A registry of datasets so that configs name them: ``create_dataset("digits", "train", image_size=32)``."""
from __future__ import annotations

from typing import Callable

from torch.utils.data import Dataset

from vizoo.utils import unknown_name_error

SPLITS = ("train", "val", "test")
_DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    """Register ``fn(split, image_size=None, root=None, **kwargs) -> Dataset`` under ``name``."""

    def decorator(fn):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = fn
        return fn

    return decorator


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def create_dataset(name: str, split: str, **kwargs) -> Dataset:
    """Build split ``split`` ('train', 'val' or 'test') of the dataset registered as ``name``.

    Every dataset yields ``(PIL.Image in RGB, int label)`` and has a ``classes`` list of class names.
    """
    if name not in _DATASETS:
        raise unknown_name_error("dataset", name, _DATASETS)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    return _DATASETS[name](split, **kwargs)

"""``vizoo convert``: turn a paper's official checkpoint into a vizoo export folder (see :mod:`vizoo.hub.export`).

The key layout is translated by the family's own ``checkpoint_filter_fn(state_dict, model)``, the function its
model entrypoints pass to ``build_model_with_cfg(pretrained_filter_fn=...)``; it is looked up by that name in the
module that registered the architecture (timm's convention). After filtering, every key is accounted for: missing
keys (in the model, not in the file) and unexpected keys (in the file, not in the model) fail the conversion unless
the family declares them expected, through glob patterns in its module:

* ``CHECKPOINT_EXPECTED_MISSING``: e.g. buffers the model regenerates (``*.relative_position_index``);
* ``CHECKPOINT_EXPECTED_UNEXPECTED``: file entries the filter may leave and the model does not use;

or the user passes ``--allow-missing`` / ``--allow-unexpected``. A family may also set ``CONVERT_NOTE``, a sentence
printed after every conversion (e.g. that NAT and DiNAT checkpoints share one key layout, so the filter cannot
tell them apart). Shape mismatches always fail and are listed by key
(the usual cause: a checkpoint for another variant). Pickled files are read without running code from them
(:mod:`vizoo.hub.checkpoints`).
"""
from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vizoo.hub.checkpoints import read_state_dict
from vizoo.hub.export import export_model
from vizoo.hub.folder import file_sha256
from vizoo.hub.loading import format_mismatch, mismatch_report, unknown_model_error


@dataclass
class ConversionReport:
    """What a conversion did with each key."""

    model_name: str
    checkpoint: str
    sha256: str
    num_tensors: int
    explained_missing: list[str] = field(default_factory=list)
    dropped_unexpected: list[str] = field(default_factory=list)
    out_dir: str | None = None
    note: str | None = None

    def summary(self) -> str:
        lines = [
            (f"converted {self.checkpoint} (sha256 {self.sha256[:16]}...) -> {self.model_name}: "
             f"{self.num_tensors} tensors loaded"),
        ]
        if self.explained_missing:
            lines.append(f"  expected missing (kept at init): {', '.join(self.explained_missing)}")
        if self.dropped_unexpected:
            lines.append(f"  expected unexpected (dropped): {', '.join(self.dropped_unexpected)}")
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.out_dir:
            lines.append(f"  written to {self.out_dir}")
        return "\n".join(lines)


def family_module(model_name: str) -> Any:
    """The Python module that registered an architecture (where its ``checkpoint_filter_fn`` lives)."""
    import timm.models

    arch = model_name.split(".", 1)[0]
    return sys.modules[timm.models.model_entrypoint(arch).__module__]


def filter_fn_for(model_name: str) -> Callable | None:
    """The family's checkpoint filter, or None if its module defines none (the keys must then be native)."""
    fn = getattr(family_module(model_name), "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _apply_filter(fn: Callable | None, state_dict: dict, model: nn.Module) -> dict:
    if fn is None:
        return dict(state_dict)
    try:
        return dict(fn(dict(state_dict), model))
    except TypeError as err:
        if "positional argument" not in str(err):
            raise
        return dict(fn(dict(state_dict)))  # timm's older one-argument filters


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def convert_checkpoint(
    model_name: str,
    checkpoint: str | Path,
    out_dir: str | Path | None,
    *,
    ema: bool = False,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Convert an official checkpoint and (if ``out_dir``) export it.

    Args:
        model_name: the vizoo architecture, optionally with a tag (``nat_tiny.in1k``) whose cfg (license, paper,
            data config) goes into the export.
        checkpoint: the official file (.pth/.pt/.bin/.safetensors).
        out_dir: the export folder to write; None converts and checks only.
        ema: take the file's EMA weights instead of the raw ones.
        num_classes: classifier size; None reads it from the checkpoint's classifier.
        model_kwargs: extra constructor kwargs (e.g. ``img_size``).
        allow_missing / allow_unexpected: glob patterns of keys to accept on top of the family's declarations.
        label_names, metrics, repo_id, overwrite: passed to :func:`vizoo.hub.export.export_model`.

    Raises:
        ValueError: unknown model, unreadable file, or keys that do not line up (listed by key).
    """
    import timm

    import vizoo  # noqa: F401

    arch = model_name.split(".", 1)[0]
    if ":" in model_name or not timm.is_model(arch):
        raise unknown_model_error(model_name) if ":" not in model_name else ValueError(
            f"--model takes a registered architecture (optionally arch.tag), not {model_name!r}.")
    checkpoint = Path(checkpoint)
    state_dict = read_state_dict(checkpoint, ema=ema)
    module = family_module(arch)
    filter_fn = filter_fn_for(arch)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes

    model = timm.create_model(model_name, pretrained=False, **kwargs)
    filtered = _apply_filter(filter_fn, state_dict, model)
    classifier = model.pretrained_cfg.get("classifier")
    head_key = f"{classifier}.weight" if isinstance(classifier, str) else None
    if num_classes is None and head_key in filtered and filtered[head_key].shape[0] != model.num_classes:
        kwargs["num_classes"] = int(filtered[head_key].shape[0])
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        filtered = _apply_filter(filter_fn, state_dict, model)

    report = mismatch_report(model, filtered)
    ok_missing = tuple(getattr(module, "CHECKPOINT_EXPECTED_MISSING", ())) + tuple(allow_missing)
    ok_unexpected = tuple(getattr(module, "CHECKPOINT_EXPECTED_UNEXPECTED", ())) + tuple(allow_unexpected)
    explained_missing = [k for k in report["missing"] if _matches(k, ok_missing)]
    dropped = [k for k in report["unexpected"] if _matches(k, ok_unexpected)]
    problems = {
        "shape": report["shape"],
        "missing": [k for k in report["missing"] if k not in explained_missing],
        "unexpected": [k for k in report["unexpected"] if k not in dropped],
    }
    if any(problems.values()):
        name = module.__name__
        how = f"{name}.checkpoint_filter_fn" if filter_fn else f"no checkpoint_filter_fn in {name}"
        hint = " Is it a checkpoint for another variant?" if problems["shape"] else (
            " If some keys are expected (e.g. buffers the model regenerates), pass --allow-missing / "
            "--allow-unexpected glob patterns.")
        raise ValueError(
            f"{checkpoint.name} does not convert to {model_name} (keys translated by {how}): "
            f"{format_mismatch(problems)}.{hint}"
        )
    for key in dropped:
        filtered.pop(key)
    model.load_state_dict(filtered, strict=False)
    model.eval()

    result = ConversionReport(model_name=model_name, checkpoint=checkpoint.name, sha256=file_sha256(checkpoint),
                              num_tensors=len(filtered), explained_missing=explained_missing,
                              dropped_unexpected=dropped, note=getattr(module, "CONVERT_NOTE", None))
    if out_dir is not None:
        source = (f"converted from the official checkpoint `{checkpoint.name}` (sha256 {result.sha256}) by "
                  "`vizoo convert`")
        if ema:
            source += " (EMA weights)"
        export_model(model, out_dir, label_names=label_names, metrics=metrics, source=source, repo_id=repo_id,
                     overwrite=overwrite)
        result.out_dir = str(out_dir)
    return model, result

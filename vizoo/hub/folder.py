"""An export folder's layout and the checks that read it: the file names, the SHA-256 of the weights, the forward
check (the first outputs of the model on a seeded input, recorded at export and re-run by every loader), the
check that a target folder can take an export, and the rename that puts a finished folder in place.

:mod:`vizoo.hub.export` writes folders and :mod:`vizoo.hub.loading` reads them; both build on this module.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CHECK_VALUES = 16  # how many leading outputs the forward check records
OWN_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)  # all an export folder holds


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_hash(config: Mapping[str, Any], weights: str | Path) -> None:
    """ValueError if ``weights`` differs from the SHA-256 that the export recorded in ``config`` (if it did)."""
    expected = (config.get("vizoo") or {}).get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise ValueError(
            f"{weights}: its SHA-256 differs from the one recorded at export ({expected[:16]}...); the file was "
            "modified or damaged after the export. Export or download it again."
        )


def check_output_folder(out_dir: str | Path, overwrite: bool) -> None:
    """Check, before any work, that ``out_dir`` can take an export folder.

    Raises:
        ValueError: ``out_dir`` is the current directory (or holds it), a file, or in a folder that cannot be
            written.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or it holds anything besides an export's
            own files (``config.json``, ``model.safetensors``, ``README.md``), which ``overwrite`` never deletes.
    """
    out = Path(out_dir)
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ValueError(f"OUT_DIR {str(out_dir)!r} is the current folder or holds it; give a new folder, "
                         "e.g. ./export")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file; give a folder path")
    if not out.exists():
        parent = next((p for p in out.resolve().parents if p.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"cannot create {out}: {parent} is not writable")
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace a previous export there.")
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                    if p.name not in OWN_FILES or p.is_dir())
    if others:
        shown = ", ".join(others[:8]) + (f", ... ({len(others) - 8} more)" if len(others) > 8 else "")
        raise FileExistsError(
            f"{out} holds files an export does not write ({shown}); --overwrite replaces only an export folder "
            f"({', '.join(OWN_FILES)}) and never deletes anything else. Choose another OUT_DIR or move them."
        )


def forward_check_input(input_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """The seeded input that the forward check feeds the model: one image of ``input_size`` (C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, *input_size, generator=gen)


@torch.no_grad()
def forward_check(model: nn.Module, input_size: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """Run the model (eval mode, fp32, CPU) on a seeded input and summarise its output for later comparison.

    A model on another device or in another dtype is checked on an fp32 CPU copy, the form a loader rebuilds.
    """
    params = list(model.parameters()) + list(model.buffers())
    if any(p.device.type != "cpu" or (p.is_floating_point() and p.dtype != torch.float32) for p in params):
        model = copy.deepcopy(model).cpu().float()
    was_training = model.training
    model.eval()
    try:
        out = model(forward_check_input(input_size, seed))
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = out.detach().float().cpu().flatten()
    return {
        "seed": seed,
        "input_size": [int(s) for s in input_size],
        "numel": out.numel(),
        "first": [round(float(v), 7) for v in out[:CHECK_VALUES]],
        "abs_sum": float(out.abs().sum()),
    }


def compare_forward_check(expected: Mapping[str, Any], got: Mapping[str, Any], rtol: float = 1e-3,
                          atol: float = 1e-4) -> str | None:
    """None when two forward checks agree, else a sentence saying how they differ."""
    if expected["numel"] != got["numel"]:
        return f"output size {got['numel']} differs from the exported {expected['numel']}"
    a = torch.tensor(expected["first"], dtype=torch.float64)
    b = torch.tensor(got["first"], dtype=torch.float64)
    if not torch.allclose(a, b, rtol=rtol, atol=atol):
        worst = (a - b).abs().max().item()
        return f"the first {len(a)} outputs differ from the exported ones (max abs diff {worst:.3g})"
    ea, ga = expected["abs_sum"], got["abs_sum"]
    if abs(ea - ga) > rtol * abs(ea) + atol * expected["numel"]:
        return f"the sum of |outputs| is {ga:.6g}, the export recorded {ea:.6g}"
    return None


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` onto ``out_dir``; an existing export folder (checked by :func:`check_output_folder`) is moved
    aside first and removed afterwards."""
    if out_dir.exists():
        check_output_folder(out_dir, overwrite=True)  # never remove a folder holding anything else
        old = out_dir.with_name(f".{out_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)

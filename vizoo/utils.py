"""Small helpers shared across vizoo: name look-ups with helpful errors, atomic file writes, whether a
compiler, FX or a dispatch mode is tracing (the fused kernels' eager fast paths step aside then)."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing
except ImportError:  # torch < 2.5
    from torch.fx._symbolic_trace import is_fx_tracing as is_fx_symbolic_tracing


class ArgumentParser(argparse.ArgumentParser):
    """argparse with vizoo's error style: one line naming the option and what is accepted, exit code 2
    (``--help`` shows the usage; subcommand parsers made by ``add_subparsers`` inherit the style)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def unknown_name_error(kind: str, name: str, valid: Iterable[str], hint: str = "") -> ValueError:
    """A ValueError for an unknown registry name, listing the valid names with the closest ones first.

    "Did you mean" names only close matches (difflib similarity of at least 0.6), never a far-off name.
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    rest = [v for v in valid if v not in close]
    listed = close + rest
    shown = ", ".join(listed[:40]) + (f", ... ({len(listed) - 40} more)" if len(listed) > 40 else "")
    msg = f"unknown {kind} {name!r}."
    if close:
        msg += f" Did you mean {close[0]!r}?"
    msg += f" Valid {kind} names: {shown}."
    if hint:
        msg += " " + hint
    return ValueError(msg)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A process killed inside the block leaves ``path`` untouched (at worst a stray ``.tmp`` file that the
    next write replaces), so readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def tracing() -> bool:
    """Whether a compiler, exporter, FX tracer or dispatch mode is watching (then only custom ops / plain torch
    will do)."""
    return torch.compiler.is_compiling() or is_fx_symbolic_tracing() or _get_current_dispatch_mode() is not None

"""The backend checks every kernel op makes once it knows which backend runs it, and what the Triton kernels
share."""

from __future__ import annotations

import os
from typing import Collection

import torch

from vizoo.utils import unknown_name_error


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for launch grids and tile counts. Plain integer helpers: ``triton.cdiv`` and
    ``triton.next_power_of_2`` became JIT-aware callables (about 1.4 us a host call in Triton 3.8), and a kernel
    call computes a dozen of them."""
    return -(-a // b)


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, n - 1).bit_length()


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: IEEE float32 for float32 (TF32 would lose
    mantissa); 16-bit inputs multiply exactly on tensor cores whatever the setting, so ``"tf32"`` (the default)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_backend(t: torch.Tensor, backend: str, backends: Collection[str], triton_dtypes: Collection[torch.dtype],
                  reference_dtypes: Collection[torch.dtype]) -> str:
    """``backend`` after checking it: a known name, a dtype of ``t`` that it runs, and for ``triton`` a CUDA
    tensor (or the Triton interpreter, ``TRITON_INTERPRET=1`` set before import, for CPU tensors).

    Raises:
        ValueError: naming what was wrong and what is accepted.
    """
    if backend not in backends:
        raise unknown_name_error("backend", backend, backends)
    dtypes = triton_dtypes if backend == "triton" else reference_dtypes
    if t.dtype not in dtypes:
        raise ValueError(f"unsupported dtype {t.dtype} for the {backend} backend; accepted: "
                         f"{', '.join(str(d) for d in dtypes)}")
    if backend == "triton" and t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before import for CPU "
                         f"tensors), got device {t.device}")
    return backend

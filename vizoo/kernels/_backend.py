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


_COMPILED: dict = {}


def launch(kernel, grid: tuple, plan: tuple, args: tuple, meta: dict, direct: bool = True) -> None:
    """``kernel[grid](*args, **meta)``. With ``direct``, once a plan has compiled, later calls launch the
    compiled kernel directly and skip Triton's per-call re-specialization of every argument (about 15 us of
    host time per launch on the H200 VM). ``args`` are the kernel's leading arguments, positional; ``meta``
    names every later one (the constexprs) plus launch options such as ``num_warps``. ``plan`` must fix every
    int in ``args`` (shapes, strides, dilations) and the dtypes of the tensors; the key adds the grid, ``meta``
    and what Triton also specializes on that may change between calls of one plan: the 16-byte alignment of
    each tensor. The interpreter (``TRITON_INTERPRET=1``) always takes the JIT path.
    """
    if not direct:
        kernel[grid](*args, **meta)
        return
    key = (kernel, grid, plan, tuple(meta.items()),
           tuple([a.data_ptr() & 15 == 0 for a in args if isinstance(a, torch.Tensor)]))
    hit = _COMPILED.get(key)
    if hit is not None:
        run, constexprs = hit
        run(*args, *constexprs)
        return
    compiled = kernel[grid](*args, **meta)
    if hasattr(compiled, "packed_metadata") and len(_COMPILED) < 4096:  # a CompiledKernel, not the interpreter
        _COMPILED[key] = compiled[(*grid, 1, 1)[:3]], tuple(meta[name] for name in kernel.arg_names[len(args):])


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

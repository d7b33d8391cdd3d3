"""Registers and spills of the neighborhood-attention Triton kernels on sm_90 (H100/H200), without a GPU.

Runs the NA forward and backward host code on CPU tensors with the launches intercepted, compiles each kernel it
would have launched for sm_90 with Triton's compiler, and runs Triton's bundled ``ptxas -v`` on the result. Spills
(local-memory stores and loads) usually mean a tile config is too large for its warp count; use this to prune a
``vizoo bench --tune`` sweep before spending GPU time on it. The Triton version here may differ from the GPU
machine's, so treat the numbers as a guide.

    python3 tools/na_registers.py [--shape 64x56x56x2x32] [--kernel 7] [--rpb-chunk-bytes 8388608] \\
        [--sweep "fwd,8,8,2,16,4;bwd,4,8,2,16,2"]    # which,TH,TW,KR,KC,num_warps per config
"""
import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
import triton.backends.nvidia as nvidia_backend
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource

from vizoo.kernels.neighborhood import triton as na_triton

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64"}
_NAMES = {"fwd": "_fwd_kernel", "bwd": "_bwd_dq_kernel", "dkdv": "_bwd_dkdv_kernel"}


def ptxas_report(kernel, args, meta) -> str:
    """``Used N registers, S bytes spill stores, L bytes spill loads`` of one kernel launch compiled for sm_90."""
    signature, constants = {}, {}
    for i, param in enumerate(kernel.params):
        name = kernel.arg_names[i]
        if param.is_constexpr:
            signature[name], constants[name] = "constexpr", meta[name]
        elif isinstance(args[i], torch.Tensor):
            signature[name] = "*" + _TYPES[args[i].dtype]
        else:
            signature[name] = "fp32" if isinstance(args[i], float) else "i64" if abs(args[i]) >= 2**31 else "i32"
    options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options=options)
    ptxas = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    result = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", f.name, "-o", os.devnull],
                            capture_output=True, text=True)
    os.unlink(f.name)
    found = re.findall(r"Used \d+ registers|\d+ bytes spill stores|\d+ bytes spill loads", result.stderr)
    return ", ".join(found) or result.stderr.strip()[:300]


def launches(shape, kernel_size: int):
    """(kernel, args, meta) of every launch of one NA forward and backward with RPB, nothing launched."""
    captured = []
    real = na_triton._launch
    na_triton._launch = lambda kernel, grid, plan, args, meta: captured.append((kernel, args, meta))
    try:
        q, k, v = (torch.randn(*shape, dtype=torch.bfloat16) for _ in range(3))
        rpb = torch.randn(shape[3], 2 * kernel_size - 1, 2 * kernel_size - 1)
        opts = ((kernel_size,) * 2, (1, 1), (1, 1), (False, False), shape[-1] ** -0.5)
        out, lse = na_triton.forward(q, k, v, rpb, *opts)
        na_triton.backward(out, q, k, v, out, lse, rpb, *opts, True)
    finally:
        na_triton._launch = real
        na_triton._GEOMETRY.clear()
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="64x56x56x2x32", help="B x H x W x heads x dim")
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--rpb-chunk-bytes", type=int, default=na_triton.RPB_CHUNK_BYTES)
    parser.add_argument("--sweep", default="", help="'which,TH,TW,KR,KC,num_warps;...' (which: fwd, bwd, dkdv)")
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split("x"))
    na_triton.RPB_CHUNK_BYTES = args.rpb_chunk_bytes
    for kernel, kargs, meta in launches(shape, args.kernel):
        print(f"{kernel.__name__} default (RPB_CHUNKS={meta.get('RPB_CHUNKS')}): {ptxas_report(kernel, kargs, meta)}")
    for spec in filter(None, args.sweep.split(";")):
        which, *tile = spec.split(",")
        cfg = dict(zip(("TH", "TW", "KR", "KC", "num_warps"), map(int, tile)))
        na_triton.CONFIG_OVERRIDE[which] = cfg
        try:
            for kernel, kargs, meta in launches(shape, args.kernel):
                if kernel.__name__ == _NAMES[which]:
                    print(f"{which} {cfg}: {ptxas_report(kernel, kargs, meta)}")
        finally:
            na_triton.CONFIG_OVERRIDE[which] = {}


if __name__ == "__main__":
    main()

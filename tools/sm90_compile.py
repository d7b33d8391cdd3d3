"""Compile every vizoo Triton kernel for sm_90 (H100/H200) on a machine without a GPU; report registers and spills.

The Triton interpreter (``TRITON_INTERPRET=1``, how the tests check the kernels on a CPU) runs kernels as Python,
so errors only a real compile raises (a non-bool constexpr, an op the GPU backend lacks) pass it. This runs each
op's forward and backward on small CPU tensors with every kernel launch intercepted (autotuned kernels: every
config), compiles what would have launched with Triton's compiler for sm_90, and runs Triton's bundled
``ptxas -v`` on the result. Spills (local-memory stores and loads) usually mean a tile is too large for its warp
count; ``--na-sweep`` prices neighborhood-attention tile configs that way before a ``vizoo bench --tune`` run on
the GPU. The Triton version here may differ from the GPU machine's, so take the numbers as a guide.

    python3 tools/sm90_compile.py [--ops na,inline,contmix,depthwise,layernorm] [--rpb-chunk-bytes 8388608]
    python3 tools/sm90_compile.py --ops na --na-shape 64x56x56x2x32 --na-kernel 7 \
        --na-sweep "fwd,8,8,2,16,4;bwd,4,8,2,16,2"

Must run without ``TRITON_INTERPRET`` in the environment (it sets it itself, after the kernels are built, so the
ops accept CPU tensors). Exits non-zero if any kernel fails to compile.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET: the kernels must be built as JIT functions, not interpreted")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.backends.nvidia as nvidia_backend  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import vizoo.kernels as K  # noqa: E402
from vizoo.kernels import _backend  # noqa: E402
from vizoo.kernels.contmix import triton as _contmix_triton  # noqa: E402      (every kernel module now, so
from vizoo.kernels.depthwise import triton as dw_triton  # noqa: E402              they are built as JIT functions
from vizoo.kernels.inline import triton as _inline_triton  # noqa: E402,F401    before the interpreter flag is
from vizoo.kernels.layernorm import layer_norm  # noqa: E402
from vizoo.kernels.layernorm import triton as _layernorm_triton  # noqa: E402,F401  set below)
from vizoo.kernels.neighborhood import triton as na_triton  # noqa: E402

os.environ["TRITON_INTERPRET"] = "1"  # from here on the ops take CPU tensors; nothing runs: launches are captured

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.int8: "i8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90


def _capture(launches: list):
    """Make every JIT launch record ``(kernel, values, options)`` instead of running; returns an undo."""
    run, tuned = JITFunction.run, Autotuner.run

    def record(self, *args, grid, warmup=False, **kwargs):
        values = dict(zip(self.arg_names, args))
        values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
        launches.append((self, values, {k: kwargs[k] for k in _OPTIONS if k in kwargs}))

    def every_config(self, *args, **kwargs):
        for config in self.configs:
            self.fn.run(*args, **{**kwargs, **config.all_kwargs()})

    JITFunction.run, Autotuner.run = record, every_config
    return lambda: (setattr(JITFunction, "run", run), setattr(Autotuner, "run", tuned))


def _signature(kernel: JITFunction, values: dict):
    """Triton's ``(signature, constants)`` for one launch: pointer and scalar types, constexpr values."""
    signature, constants = {}, {}
    for param in kernel.params:
        name = param.name
        value = values[name] if name in values else param.default
        if param.is_constexpr or value is None:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        else:
            signature[name] = ("fp32" if isinstance(value, float) else "i1" if isinstance(value, bool)
                               else "i64" if abs(value) >= 2**31 else "i32")
    return signature, constants


def compile_report(kernel: JITFunction, signature: dict, constants: dict, options: dict) -> str:
    """``Used N registers, S bytes spill stores, L bytes spill loads, M bytes shared`` of one launch on sm_90."""
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options=options)
    shared = compiled.metadata.shared
    if shared > SMEM_LIMIT:
        raise RuntimeError(f"needs {shared} bytes of shared memory, more than sm_90's {SMEM_LIMIT}")
    ptxas = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    result = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", f.name, "-o", os.devnull],
                            capture_output=True, text=True)
    os.unlink(f.name)
    if result.returncode:
        raise RuntimeError(result.stderr.strip()[-500:])
    found = re.findall(r"Used \d+ registers|\d+ bytes spill stores|\d+ bytes spill loads", result.stderr)
    return ", ".join(found + [f"{shared} bytes shared"])


def _grad(out, inputs):
    torch.autograd.grad(out, inputs, torch.ones_like(out))


def _leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype).requires_grad_()


def run_na(dtype, rpb_chunk_bytes: int, shape=(2, 9, 9, 2, 16), kernel: int = 3, rpb_chunk_passes=None):
    na_triton.RPB_CHUNK_BYTES = rpb_chunk_bytes
    if rpb_chunk_passes is not None:
        na_triton.RPB_CHUNK_PASSES = tuple(rpb_chunk_passes)
    q, k, v = (_leaf(*shape, dtype=dtype) for _ in range(3))
    rpb = _leaf(shape[3], 2 * kernel - 1, 2 * kernel - 1)
    _grad(K.na2d(q, k, v, kernel, rpb=rpb, backend="triton"), (q, k, v, rpb))
    _grad(K.na2d(q, k, v, 3, dilation=2, is_causal=(True, False), backend="triton"), (q, k, v))
    q1, k1, v1 = (_leaf(2, 20, 2, 16, dtype=dtype) for _ in range(3))
    _grad(K.na1d(q1, k1, v1, 5, rpb=_leaf(2, 9), backend="triton"), (q1, k1, v1))


def run_inline(dtype):
    q, k, v = (_leaf(2, 49, 2, 32, dtype=dtype) for _ in range(3))
    _grad(K.inline_attn(q, k, v, backend="triton"), (q, k, v))
    from vizoo.kernels.inline import triton as inline_triton

    saved = dict(inline_triton.CONFIG)
    inline_triton.CONFIG.update(fused=1, gram_programs=1)  # the one-launch kernels
    try:
        _grad(K.inline_attn(q, k, v, backend="triton"), (q, k, v))
    finally:
        inline_triton.CONFIG.update(saved)


def run_contmix(dtype):
    saved = _contmix_triton.ROWS_PASSES
    try:
        _contmix_triton.ROWS_PASSES = ()  # the gather kernels (what dilated calls take)
        attn, v = _leaf(2, 7, 7, 2, 25, dtype=dtype), _leaf(2, 7, 7, 2, 16, dtype=dtype)
        _grad(K.na2d_av(attn, v, 5, backend="triton"), (attn, v))
        _contmix_triton.ROWS_PASSES = ("fwd", "bwd")  # the band-matrix kernels at 14x14 k=13
        attn, v = _leaf(2, 14, 14, 2, 169, dtype=dtype), _leaf(2, 14, 14, 2, 16, dtype=dtype)
        _grad(K.na2d_av(attn, v, 13, backend="triton"), (attn, v))
        # the fused inference kernel (ContMix's logits, bias, softmax and aggregation) at k=13
        q, kp = _leaf(2, 14, 14, 2, 16, dtype=dtype), _leaf(2, 2, 16, 169, dtype=dtype)
        with torch.no_grad():
            K.contmix.contmix_fused_forward(q, kp, _leaf(169), _leaf(2, 25, 25), v, 13, backend="triton")
    finally:
        _contmix_triton.ROWS_PASSES = saved


def run_depthwise(dtype):
    x, w, b = _leaf(2, 8, 14, 14, dtype=dtype), _leaf(8, 1, 7, 7, dtype=dtype), _leaf(8, dtype=dtype)
    _grad(K.depthwise_conv2d(x, w, b, 2, backend="triton"), (x, w, b))
    w3 = _leaf(8, 1, 3, 3, dtype=dtype)  # 3x3 (DIRECT_MAX_KERNEL): the CUDA-core kernels, small-kernel wgrad
    _grad(K.depthwise_conv2d(x, w3, b, 1, backend="triton"), (x, w3, b))
    x, w, b = (t.detach() for t in (x, w, b))
    out = dw_triton.forward(x, w, b, 1, method="direct")  # the CUDA-core fallback too
    dw_triton.backward(torch.ones_like(out), x, w, 1, method="direct")


def run_layernorm(dtype):
    x, w, b = _leaf(2, 5, 6, 96, dtype=dtype), _leaf(96), _leaf(96)
    _grad(layer_norm(x, w, b, backend="triton"), (x, w, b))


OPS = {"na": run_na, "inline": run_inline, "contmix": run_contmix, "depthwise": run_depthwise,
       "layernorm": run_layernorm}


def launches_of(fn) -> list:
    launches: list = []
    undo = _capture(launches)
    try:
        fn()
    finally:
        undo()
        na_triton._GEOMETRY.clear()
        _backend._COMPILED.clear()
    return launches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rpb-chunk-bytes", type=int, default=na_triton.RPB_CHUNK_BYTES)
    parser.add_argument("--rpb-chunk-passes", default=",".join(na_triton.RPB_CHUNK_PASSES),
                        help="NA launches that read the chunk-layout RPB, of fwd, bwd (dQ), dkdv")
    parser.add_argument("--na-shape", default="", help="NA only: B x H x W x heads x dim (default: small)")
    parser.add_argument("--na-kernel", type=int, default=3, help="NA only: window size of the RPB case")
    parser.add_argument("--na-sweep", default="", help="'which,TH,TW,KR,KC,num_warps;...' (which: fwd, bwd, dkdv)")
    args = parser.parse_args()
    failed, seen = 0, set()
    for op in filter(None, args.ops.split(",")):
        for dtype in (getattr(torch, name) for name in args.dtypes.split(",")):
            if op == "na":
                shape = tuple(map(int, args.na_shape.split("x"))) if args.na_shape else (2, 9, 9, 2, 16)
                passes = [w for w in args.rpb_chunk_passes.split(",") if w]
                run = lambda: run_na(dtype, args.rpb_chunk_bytes, shape, args.na_kernel, passes)  # noqa: E731
            else:
                run = lambda: OPS[op](dtype)  # noqa: E731
            runs = [("default", launches_of(run))]
            for spec in filter(None, args.na_sweep.split(";")) if op == "na" else ():
                which, *tile = spec.split(",")
                na_triton.CONFIG_OVERRIDE[which] = dict(zip(("TH", "TW", "KR", "KC", "num_warps"), map(int, tile)))
                runs.append((spec, launches_of(run)))
                na_triton.CONFIG_OVERRIDE[which] = {}
            for label, launches in runs:
                for kernel, values, options in launches:
                    signature, constants = _signature(kernel, values)
                    key = (kernel.__name__, label, repr(sorted(signature.items())), repr(sorted(constants.items())),
                           repr(sorted(options.items())))
                    if key in seen:
                        continue
                    seen.add(key)
                    flags = {k: v for k, v in constants.items() if k.isupper()}
                    try:
                        report = compile_report(kernel, signature, constants, options)
                    except Exception as e:  # noqa: BLE001  (reported, counted, the run goes on)
                        failed += 1
                        report = f"FAILED {type(e).__name__}: {str(e)[:300]}"
                    print(f"{op} {str(dtype)[6:]} {label} {kernel.__name__} {flags} {options}: {report}", flush=True)
    print(f"{len(seen)} kernel variants, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every Triton kernel compiles for sm_90 (H100/H200) without a GPU: ``tools/sm90_compile.py`` captures each launch
of the ops' forward and backward (every autotune config), compiles it with Triton's compiler and runs ptxas.

The interpreter that the other kernel tests use runs kernels as Python, so errors only a real compile raises (a
non-bool constexpr, an op the GPU backend lacks, too much shared memory) pass there and fail here."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [[], ["--ops", "na", "--rpb-chunk-passes", "fwd,bwd,dkdv"],
                                  ["--ops", "na", "--rpb-chunk-passes", "fwd,bwd,dkdv,dsum", "--dtypes", "bfloat16"]],
                         ids=["all-ops", "na-chunk-layout-rpb", "na-chunk-layout-rpb-atomics"])
def test_every_kernel_compiles_for_sm90(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "sm90_compile.py"), *args], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    count = int(re.search(r"(\d+) kernel variants, 0 failed", result.stdout).group(1))
    names = r"_\w+_kernel|_gram|_finalize|_apply|_apply_bwd|_fused_fwd|_fused_bwd"
    kernels = set(re.findall(rf" ({names}) \{{", result.stdout))
    expected = {"_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"}
    if not args:
        expected |= {"_gram", "_finalize", "_apply", "_apply_bwd", "_av_kernel", "_dv_kernel", "_dw_rows_kernel",
                     "_dw_wgrad_rows_kernel", "_dw_fwd_kernel", "_dw_wgrad_kernel", "_dw_wgrad_taps_kernel",
                     "_ln_fwd_kernel", "_ln_bwd_kernel", "_fused_fwd", "_fused_bwd", "_av_rows_kernel",
                     "_dv_rows_kernel"}
    assert expected <= kernels, expected - kernels
    assert count >= len(expected)
    if args:  # the chunk-layout variants were the ones compiled
        assert "'RPB_CHUNKS': True" in result.stdout

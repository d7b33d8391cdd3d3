"""Large-kernel depthwise convolutions at OverLoCK-T's Basic-block shapes: cuDNN (NCHW and channels-last, bf16 and
fp32) against vizoo's fused Triton kernel (``vizoo.kernels.depthwise_conv2d``, NCHW).

The Basic blocks of OverLoCK spend most of their GPU time in depthwise convolutions with large and dilated kernels
(the Dilated Reparam Block: one K x K branch plus the parallel dilated branches of its training form, or one merged
K x K kernel after ``reparameterize()``). This times them alone, batch 256, ``cudnn.benchmark`` on: the deploy
kernel forward and forward+backward, the train form forward and forward+backward. For the Triton kernel it also
prints the fraction of HBM bandwidth the deploy kernel reaches, counting the bytes the op must move: x in and the
output out (forward); plus, for the backward, the output gradient in and d_x out (input gradient) and x and the
output gradient in again (weight gradient), so ``6 * numel * itemsize`` for forward+backward. The last row is the
3x3 ``ResDWConv`` at stage 1's MLP width. Run on a GPU: ``PYTHONPATH=. python3 tools/bench_depthwise.py``.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from vizoo.backbones.overlock import DILATED_BRANCHES
from vizoo.kernels.depthwise import depthwise_conv2d
from vizoo.kernels.depthwise import triton as _dw_triton

BATCH = 256
SHAPES = [(64, 56, 17), (128, 28, 15), (256, 14, 13), (512, 7, 7)]  # (channels, map side, K) of stages 1-4
EXTRA = [(256, 56, 3)]  # ResDWConv 3x3 at stage 1's MLP width (4 x 64)


def _ms(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def _cudnn(x, w, d):
    return F.conv2d(x, w, padding=d * (w.shape[-1] - 1) // 2, dilation=d, groups=x.shape[1])


def _triton(x, w, d):
    return depthwise_conv2d(x, w, None, d, backend="triton")


def _time_case(conv, x, weights, branches):
    """Deploy fwd, deploy fwd+bwd, train-form fwd, train-form fwd+bwd (ms) with one conv implementation."""
    def deploy():
        return conv(x, weights[0], 1)

    def train_form():
        return sum(conv(x, w, d) for w, (_, d) in zip(weights, branches))

    def step(fn):
        def run():
            y = fn()
            y.backward(torch.ones_like(y))
        return run

    with torch.no_grad():
        t_deploy, t_train = _ms(deploy), _ms(train_form)
    return t_deploy, _ms(step(deploy)), t_train, _ms(step(train_form))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--hbm-tbps", type=float, default=4.8, help="peak HBM bandwidth, TB/s (H200: 4.8)")
    parser.add_argument("--no-channels-last", action="store_true", help="skip cuDNN's channels-last rows")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated (default %(default)s)")
    parser.add_argument("--kernels", default="", help="comma-separated kernel sizes to time (default: all rows)")
    parser.add_argument("--direct", action="store_true",
                        help="also time the Triton op on its CUDA-core kernels (method 'direct')")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    wanted = {int(k) for k in args.kernels.split(",") if k}
    for channels, side, k in SHAPES + EXTRA:
        if wanted and k not in wanted:
            continue
        branches = [(k, 1)] + list(DILATED_BRANCHES.get(k, ()))
        for dtype in (getattr(torch, name) for name in args.dtypes.split(",")):
            layouts = [torch.contiguous_format] + ([] if args.no_channels_last else [torch.channels_last])
            for layout in layouts:
                x = torch.randn(args.batch, channels, side, side, device="cuda", dtype=dtype)
                x = x.contiguous(memory_format=layout).requires_grad_()
                weights = [torch.randn(channels, 1, kk, kk, device="cuda", dtype=dtype, requires_grad=True)
                           for kk, _ in branches]
                rows = [("cuDNN", _cudnn)] + ([("Triton", _triton)] if layout == torch.contiguous_format else [])
                if args.direct and layout == torch.contiguous_format:
                    rows.append(("direct", _triton))  # the same op with DIRECT_MAX_KERNEL raised, below
                for name, conv in rows:
                    saved = _dw_triton.DIRECT_MAX_KERNEL  # "direct": forward and backward on the CUDA-core kernels
                    _dw_triton.DIRECT_MAX_KERNEL = 10**6 if name == "direct" else saved
                    t = _time_case(conv, x, weights, branches)
                    layout_name = "NHWC" if layout == torch.channels_last else "NCHW"
                    line = (f"C={channels} {side}x{side} K={k} {str(dtype)[6:]:8s} {layout_name} {name:6s}: "
                            f"deploy fwd {t[0]:7.2f} ms, fwd+bwd {t[1]:7.2f} ms | train-form fwd {t[2]:7.2f} ms, "
                            f"fwd+bwd {t[3]:7.2f} ms")
                    if name in ("Triton", "direct"):
                        nbytes = x.numel() * x.element_size()
                        hbm = [n * nbytes / (ms * 1e-3) / (args.hbm_tbps * 1e12) for n, ms in ((2, t[0]), (6, t[1]))]
                        with torch.no_grad():
                            err = (conv(x, weights[0], 1).float() - _cudnn(x, weights[0], 1).float()).abs().max()
                        line += f" | HBM deploy fwd {hbm[0]:5.1%}, fwd+bwd {hbm[1]:5.1%} | max |diff| {err:.1e}"
                    _dw_triton.DIRECT_MAX_KERNEL = saved
                    print(line, flush=True)


if __name__ == "__main__":
    main()

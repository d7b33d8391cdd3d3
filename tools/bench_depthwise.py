"""Large-kernel depthwise convolutions at OverLoCK-T's Basic-block shapes: cuDNN in NCHW and channels-last, bf16 and fp32.

The Basic blocks of OverLoCK spend most of their GPU time in depthwise convolutions with large and dilated kernels
(the Dilated Reparam Block: one K x K branch plus the parallel dilated branches of its training form, or one merged
K x K kernel after ``reparameterize()``). This times them alone, batch 256, ``cudnn.benchmark`` on, to see which
layout and precision cuDNN serves best. Run on a GPU: ``PYTHONPATH=. python3 tools/bench_depthwise.py``.
"""

import time

import torch
import torch.nn.functional as F

from vizoo.backbones.overlock import DILATED_BRANCHES

BATCH = 256
SHAPES = [(64, 56, 17), (128, 28, 15), (256, 14, 13), (512, 7, 7)]  # (channels, map side, K) of stages 1-4


def _ms(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.backends.cudnn.benchmark = True
    for channels, side, k in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(BATCH, channels, side, side, device="cuda", dtype=dtype)
                x = x.contiguous(memory_format=layout).requires_grad_()
                branches = [(k, 1)] + list(DILATED_BRANCHES[k])
                weights = [torch.randn(channels, 1, kk, kk, device="cuda", dtype=dtype, requires_grad=True)
                           for kk, _ in branches]

                def deploy():
                    return F.conv2d(x, weights[0], padding=k // 2, groups=channels)

                def train_form():
                    return sum(F.conv2d(x, w, padding=d * (kk - 1) // 2, dilation=d, groups=channels)
                               for w, (kk, d) in zip(weights, branches))

                def train_step():
                    y = train_form()
                    y.backward(torch.ones_like(y))

                with torch.no_grad():
                    t_deploy, t_train = _ms(deploy), _ms(train_form)
                t_step = _ms(train_step)
                name = "NHWC" if layout == torch.channels_last else "NCHW"
                print(f"C={channels} {side}x{side} K={k} {str(dtype)[6:]:8s} {name}: deploy fwd {t_deploy:7.2f} ms | "
                      f"train-form fwd {t_train:7.2f} ms | fwd+bwd {t_step:7.2f} ms", flush=True)


if __name__ == "__main__":
    main()

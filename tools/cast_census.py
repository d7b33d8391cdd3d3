"""Count the dtype casts one training forward of a timm model makes under CUDA bf16 autocast, without a GPU.

The model runs on fake CUDA tensors (``FakeTensorMode``: shapes and dtypes, no data), so CUDA autocast's casting
rules apply and vizoo's CUDA paths are taken, on any machine. Every ``aten._to_copy`` that changes a dtype is
attributed to the innermost module running, marked as a cast of a parameter or of an activation, and counted with
the bytes it moves (read and write). The backward adds about as much again: autograd casts each such gradient
back.

    python tools/cast_census.py overlock_t [--batch 128] [--top 25]
"""
import argparse
import collections
import re

import timm
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import vizoo  # noqa: F401  (registers vizoo's models with timm)


class _Casts(TorchDispatchMode):
    def __init__(self, modules: list):
        super().__init__()
        self.modules, self.count, self.bytes = modules, collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if func.overloadpacket is torch.ops.aten._to_copy and isinstance(src, torch.Tensor) and src.dtype != out.dtype:
            where = re.sub(r"\.\d+", ".N", self.modules[-1]) if self.modules else "(model input)"
            kind = "parameter" if src.is_leaf and src.requires_grad else "activation"
            key = (where, kind, str(src.dtype).removeprefix("torch."), str(out.dtype).removeprefix("torch."),
                   tuple(src.shape))
            self.count[key] += 1
            self.bytes[key] += src.numel() * (src.element_size() + out.element_size())
        return out


def census(name: str, batch: int) -> _Casts:
    model = timm.create_model(name).train()
    running: list = []
    for module_name, module in model.named_modules():
        module.register_forward_pre_hook(lambda m, a, n=module_name: running.append(n))
        module.register_forward_hook(lambda m, a, o: (running.pop(), None)[1])
    real_available, real_bf16 = torch.cuda.is_available, torch.cuda.is_bf16_supported
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cuda")
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        y = torch.randint(0, model.num_classes, (batch,), device="cuda")
        casts = _Casts(running)
        try:  # autocast("cuda") asks whether a GPU is there
            torch.cuda.is_available, torch.cuda.is_bf16_supported = (lambda: True), (lambda *a, **k: True)
            with casts, torch.autocast("cuda", torch.bfloat16):
                F.cross_entropy(model(x), y)
        finally:
            torch.cuda.is_available, torch.cuda.is_bf16_supported = real_available, real_bf16
    return casts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    casts = census(args.model, args.batch)
    total = sum(casts.bytes.values())
    print(f"{args.model}, batch {args.batch}, one training forward under CUDA bf16 autocast: "
          f"{sum(casts.count.values())} casts, {total / 1e9:.2f} GB moved")
    print("| module | cast of | from | to | shape | casts | GB |\n|---|---|---|---|---|---|---|")
    for key in sorted(casts.bytes, key=casts.bytes.get, reverse=True)[:args.top]:
        where, kind, src, dst, shape = key
        print(f"| `{where}` | {kind} | {src} | {dst} | {shape} | {casts.count[key]} | {casts.bytes[key] / 1e9:.3f} |")


if __name__ == "__main__":
    main()

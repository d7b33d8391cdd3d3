"""``vizoo.kernels._backend.launch``'s direct path, with a stand-in for a compiled Triton kernel (the interpreter
never compiles, so the CPU suite cannot reach that path through a real kernel)."""
import pytest
import torch

from vizoo.kernels import _backend


class _Compiled:
    """What ``kernel[grid](...)`` returns on a GPU: it has ``packed_metadata`` and ``compiled[grid]`` gives a
    launcher, which Triton indexes as ``grid[0], grid[1], grid[2]``."""
    packed_metadata = ()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        def run(*args):
            self.log.append(("direct", grid[0], grid[1], grid[2], args))
        return run


class _Kernel:
    arg_names = ["X", "n", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def jit(*args, **meta):
            self.log.append(("jit", grid, args, meta))
            return _Compiled(self.log)
        return jit


@pytest.mark.parametrize("grid", [(5,), (5, 2), (5, 2, 3)], ids=["1d", "2d", "3d"])
def test_later_calls_launch_directly_with_a_three_dim_grid(monkeypatch, grid):
    monkeypatch.setattr(_backend, "_COMPILED", {})
    kernel, x = _Kernel(), torch.zeros(8)
    for _ in range(3):
        _backend.launch(kernel, grid, ("plan",), (x, 7), dict(BLOCK=16, num_warps=2))
    padded = (*grid, 1, 1)[:3]
    assert kernel.log[0][0] == "jit"
    assert kernel.log[1:] == [("direct", *padded, (x, 7, 16))] * 2  # the constexpr tail appended, num_warps not


def test_a_misaligned_tensor_compiles_its_own_kernel(monkeypatch):
    monkeypatch.setattr(_backend, "_COMPILED", {})
    kernel, buf = _Kernel(), torch.zeros(9)
    for x in (buf[:8], buf[1:], buf[1:], buf[:8]):
        _backend.launch(kernel, (4,), ("plan",), (x, 7), dict(BLOCK=16))
    assert [entry[0] for entry in kernel.log] == ["jit", "jit", "direct", "direct"]

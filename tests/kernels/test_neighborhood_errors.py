"""Bad arguments to the neighborhood-attention functions are ValueErrors that name the constraint."""
import pytest
import torch

from vizoo.kernels import na1d, na2d


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=3.5), "kernel_size must be a int or a tuple of 2, got 3.5"),
        (dict(kernel_size="3"), "kernel_size must be a int or a tuple of 2, got '3'"),
        (dict(kernel_size=3, dilation=(1, 1.0)), "dilation must hold ints"),
        (dict(kernel_size=3, scale=float("nan")), "scale must be a finite float or None, got nan"),
        (dict(kernel_size=3, scale=float("inf")), "scale must be a finite float or None, got inf"),
        (dict(kernel_size=3, scale=True), "scale must be a finite float or None, got True"),
    ],
    ids=["float-kernel", "str-kernel", "float-dilation", "nan-scale", "inf-scale", "bool-scale"],
)
def test_bad_arguments(kwargs, message):
    q = torch.randn(1, 6, 6, 2, 16)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        na2d(q, q, q, backend="reference", **kwargs)
    q1 = torch.randn(1, 6, 2, 16)
    kwargs1 = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError):
        na1d(q1, q1, q1, backend="reference", **kwargs1)

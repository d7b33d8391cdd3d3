"""Fixtures for the Hub tests: the tiny models of hub_testlib.py, exported once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))  # hub_testlib / mock_hub, under any --import-mode
from hub_testlib import INPUT, NUM_CLASSES, TINY, input_for

from vizoo.hub import export_model


@pytest.fixture(scope="session")
def example_input() -> torch.Tensor:
    return torch.randn(*INPUT, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """name -> (model in eval mode with random weights, export folder, input batch, reference output)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, kwargs in TINY:
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs).eval()
        folder = export_model(model, root / name, label_names=[f"class{i}" for i in range(NUM_CLASSES)],
                              metrics={"top1": 12.5}, source="random weights (test)")
        x = input_for(model, kwargs)
        with torch.no_grad():
            out[name] = (model, folder, x, model(x))
    return out

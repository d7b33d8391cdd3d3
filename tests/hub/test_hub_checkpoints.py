"""vizoo.hub.checkpoints is the one reader of checkpoint files: every layout a training script, DDP, Lightning or an
EMA wrapper writes gives back the model's own keys, through read_state_dict and through the families' filters."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

import vizoo.backbones.nat as nat_module
from vizoo.hub.checkpoints import extract_state_dict, read_state_dict

TINY_NAT = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "num_classes": 3}


@pytest.fixture(scope="module")
def model():
    return timm.create_model("nat_mini", **TINY_NAT)


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _other(sd):
    return {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}


# layout name -> (checkpoint as saved, ema?) built from the model's state dict `sd`
LAYOUTS = {
    "plain": lambda sd: sd,
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3},
    "state_dict": lambda sd: {"state_dict": sd, "arch": "nat_mini"},
    "nested": lambda sd: {"state_dict": {"model": sd}},
    "ddp": lambda sd: {"model": _prefixed(sd, "module.")},
    "lightning": lambda sd: {"state_dict": _prefixed(sd, "model."), "epoch": 1, "global_step": 10,
                             "optimizer_states": [], "hyper_parameters": {"lr": 0.1}},
    "ddp_lightning": lambda sd: {"state_dict": _prefixed(sd, "module.model.")},
    "probe_backbone": lambda sd: _prefixed(sd, "backbone."),
    "vizoo_fit": lambda sd: {"state_dict": {**_prefixed(sd, "model."), **_prefixed(_other(sd), "ema.module.")},
                             "hyper_parameters": {"model_name": "nat_mini"}, "epoch": 2},
}
EMA_LAYOUTS = {
    "state_dict_ema": lambda sd: {"model": _other(sd), "state_dict_ema": sd},
    "model_ema": lambda sd: {"model": _other(sd), "model_ema": _prefixed(sd, "module.")},
    "vizoo_fit_ema": lambda sd: {"state_dict": {**_prefixed(_other(sd), "model."), **_prefixed(sd, "ema.module.")},
                                 "hyper_parameters": {"model_name": "nat_mini"}},
}


def _assert_same(got, sd):
    assert sorted(got) == sorted(sd)
    for key, value in sd.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("layout", list(LAYOUTS) + list(EMA_LAYOUTS))
def test_read_state_dict_unwraps_every_layout(layout, model, tmp_path):
    sd = model.state_dict()
    ema = layout in EMA_LAYOUTS
    torch.save((EMA_LAYOUTS if ema else LAYOUTS)[layout](sd), tmp_path / "ckpt.pth")
    _assert_same(read_state_dict(tmp_path / "ckpt.pth", ema=ema), sd)


def test_read_state_dict_safetensors_and_the_probe_reader(model, tmp_path):
    from vizoo.probe.features import load_state_dict_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(_prefixed(sd, "backbone."), str(tmp_path / "w.safetensors"))
    _assert_same(read_state_dict(tmp_path / "w.safetensors"), sd)
    torch.save(LAYOUTS["ddp_lightning"](sd), tmp_path / "l.ckpt")
    _assert_same(load_state_dict_file(str(tmp_path / "l.ckpt")), sd)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_family_filter_reads_every_layout(layout, model):
    """The NAT filter (what timm runs on downloaded weights) unwraps through the same reader."""
    sd = model.state_dict()
    _assert_same(nat_module.checkpoint_filter_fn(LAYOUTS[layout](sd), model), sd)


def test_keys_not_shared_by_every_entry_are_kept():
    a = torch.zeros(1)
    assert extract_state_dict({"model.w": a, "head.b": a}) == {"model.w": a, "head.b": a}
    with pytest.raises(ValueError, match="no EMA weights"):
        extract_state_dict({"state_dict": {"w": a}}, ema=True)

"""Every registered vizoo variant carries a complete pretrained cfg, and every cfg with weights has its family's
checkpoint filter wired into the build (and that filter passes vizoo's own layout through unchanged)."""
from __future__ import annotations

import contextlib
import sys

import pytest
import timm
import torch
from hub_testlib import TINY, families, family_of, input_for
from timm.models._registry import get_arch_pretrained_cfgs

import vizoo

REQUIRED = ("input_size", "crop_pct", "interpolation", "mean", "std", "license", "first_conv", "classifier")


def all_cfgs():
    return [(f"{name}.{tag}", cfg) for name in vizoo.list_models()
            for tag, cfg in get_arch_pretrained_cfgs(name).items()]


def test_there_are_vizoo_models():
    assert vizoo.list_models(), "no vizoo model registered"


@pytest.mark.parametrize("name", vizoo.list_models())
def test_variant_has_complete_cfg(name):
    cfgs = get_arch_pretrained_cfgs(name)
    assert cfgs, f"{name} has no pretrained cfg"
    for tag, cfg in cfgs.items():
        for key in REQUIRED:
            assert getattr(cfg, key) is not None, f"{name}.{tag}: cfg lacks {key!r}"
        assert cfg.paper_ids or cfg.paper_name, f"{name}.{tag}: cfg names no paper (paper_ids / paper_name)"
        assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0]
        assert 0 < cfg.crop_pct <= 1


def test_sources_have_a_filter_and_full_hub_ids():
    for full, cfg in all_cfgs():
        if not (cfg.hf_hub_id or cfg.url):
            continue
        module = sys.modules[timm.models.model_entrypoint(full.split(".")[0]).__module__]
        assert callable(getattr(module, "checkpoint_filter_fn", None)), f"{full}: {module.__name__} has no filter"
        if cfg.hf_hub_id:
            org, _, repo = cfg.hf_hub_id.partition("/")
            assert org and repo and org != "timm", f"{full}: hf_hub_id {cfg.hf_hub_id!r} must be a full ORG/NAME"


def test_list_pretrained_lists_nat():
    pretrained = timm.list_pretrained("nat*")
    assert pretrained and all(p.split(".")[0] in vizoo.list_models() for p in pretrained)
    assert "nat_mini.in1k" in pretrained


@pytest.mark.parametrize("name,kwargs", [spec for spec in TINY if spec[0] in vizoo.list_models()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_filter_is_wired_and_keeps_native_weights(name, kwargs, monkeypatch):
    """Loading pretrained weights runs the family's checkpoint_filter_fn, which leaves vizoo's layout as is."""
    module = sys.modules[timm.models.model_entrypoint(name).__module__]
    original = module.checkpoint_filter_fn
    calls = []

    def spy(state_dict, model, *args, **kw):
        calls.append(len(state_dict))
        return original(state_dict, model, *args, **kw)

    monkeypatch.setattr(module, "checkpoint_filter_fn", spy)
    ref = timm.create_model(name, **kwargs).eval()
    overlay = {"state_dict": ref.state_dict(), "num_classes": kwargs["num_classes"]}
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()
    assert calls, f"{name}: build_model_with_cfg did not call {module.__name__}.checkpoint_filter_fn"
    with torch.no_grad():
        x = input_for(ref, kwargs)
        torch.testing.assert_close(loaded(x), ref(x), rtol=0, atol=0)


def test_every_family_has_a_tiny_test_model():
    covered = {family_of(n) for n, _ in TINY if n in vizoo.list_models()}
    assert covered == set(families())


def _meta_shapes(name: str) -> dict:
    """Parameter and buffer shapes of ``timm.create_model(name)``, built on the meta device with the weight
    initialisers (slow there, and irrelevant to shapes) switched off."""
    from unittest import mock

    from timm.layers import weight_init

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(weight_init, "_trunc_normal_", lambda tensor, *args: tensor))
        for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm):
            stack.enter_context(mock.patch.object(cls, "reset_parameters", lambda self: None))
        stack.enter_context(torch.device("meta"))
        return {k: tuple(v.shape) for k, v in timm.create_model(name).state_dict().items()}


@pytest.mark.parametrize("name", [n for n in vizoo.list_models() if len(get_arch_pretrained_cfgs(n)) > 1])
def test_pretrained_tags_do_not_change_weight_shapes(name):
    """Every tag of an architecture loads into the same shapes; an architecture change is a model name of its own
    (as timm names window sizes), so picking a tag never silently builds something else."""
    default = _meta_shapes(name)
    for full_name in get_arch_pretrained_cfgs(name):  # keyed "arch.tag"
        assert _meta_shapes(full_name) == default, f"{full_name} changes the architecture's shapes"

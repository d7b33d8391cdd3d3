"""The timm model contract (the methods timm's own model tests enforce), checked over every registered vizoo
model on CPU at a small input size.

Besides the methods, every model must trace with FX (forward, and backward in training mode; layers that cannot
be traced register themselves with timm's ``register_notrace_module`` / ``register_notrace_function``), compile
with TorchScript and export with ``torch.export``, giving the eager output each time.

Families add themselves by registering: this file names no model. Models are built for a 64x64 input
(``img_size=64`` where the constructor takes it, so that resolution-derived settings such as DiNAT's dilations
fit the small input instead of padding it) unless the cfg gives a ``test_input_size``.

CI has 2 CPU cores: the contract runs on every model of at most 30M parameters, which covers each family's classes
through its small variants; larger variants run with ``VIZOO_FULL_CONTRACT=1`` (timm's own CI filters its large
models the same way). timm's ``tests/test_models.py`` runs on every model with ``timm_suite.py``.
"""
import copy
import os

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters

import vizoo

MODELS = vizoo.list_models()
NUM_CLASSES = 7
FULL = os.environ.get("VIZOO_FULL_CONTRACT") == "1"
COSTLY_ABOVE = 30e6  # parameters


def create(name: str, **kwargs):
    size = timm.models.get_pretrained_cfg(name).to_dict().get("test_input_size") or (3, 64, 64)
    try:
        model = timm.create_model(name, img_size=size[-1], **kwargs)
    except TypeError:  # the constructor takes no img_size
        model = timm.create_model(name, **kwargs)
    return model.eval(), size


def _param_count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create(name, num_classes=NUM_CLASSES)[0].parameters())


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    """One build per model, shared by the tests below (pytest groups the tests by this fixture's parameter)."""
    if not FULL and _param_count(request.param) > COSTLY_ABOVE:
        pytest.skip(f"{request.param}: over {COSTLY_ABOVE / 1e6:.0f}M parameters, run with VIZOO_FULL_CONTRACT=1")
    torch.manual_seed(0)
    model, size = create(request.param, num_classes=NUM_CLASSES)
    return request.param, model, torch.randn(2, *size[-3:])


def test_forward_head_and_classifier(built):
    name, model, x = built
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(model.forward_head(feats), out, atol=1e-5)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    assert pre.shape == (2, model.head_hidden_size)
    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.get_classifier(), torch.nn.Module)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], str) else cfg["first_conv"][0]
    assert first + ".weight" in state, f"first_conv {first!r} names no parameter"
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (list, tuple)) else [cfg["classifier"]]
    for c in classifiers:
        assert c + ".weight" in state, f"classifier {c!r} names no parameter"
        assert state[c + ".weight"].shape[0] == NUM_CLASSES


def test_reset_classifier(built):
    name, model, x = built
    model = copy.deepcopy(model)
    x = x[:1]
    with torch.no_grad():
        model.reset_classifier(5)
        assert model(x).shape == (1, 5) and model.get_classifier().weight.shape[0] == 5
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.ndim >= 3, "reset_classifier(0, '') must leave the features unpooled"


def test_forward_intermediates_and_features_only(built):
    name, model, x = built
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        assert len(intermediates) >= 1
        only = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(only) == 1 and torch.allclose(only[0], intermediates[-1], atol=1e-5)
    assert len(model.feature_info) >= 3
    features, _ = create(name, features_only=True)
    channels = features.feature_info.channels()
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == channels
    assert features.feature_info.reduction() == sorted(features.feature_info.reduction())


def test_grad_checkpointing_backward_and_param_groups(built):
    name, model, x = built
    with torch.no_grad():
        expected = model(x)
        model.set_grad_checkpointing(True)
        assert torch.allclose(model(x), expected, atol=1e-5)
    model.train()
    try:
        model(x).square().mean().backward()
    finally:
        model.set_grad_checkpointing(False)
        model.eval()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    assert not missing, f"parameters without gradient: {missing[:10]}"

    names = {n for n, _ in model.named_parameters()}
    grouped = group_parameters(model, model.group_matcher())
    assert sorted(n for group in grouped.values() for n in group) == sorted(names)
    for entry in model.no_weight_decay():
        assert any(n == entry or n.startswith(entry + ".") or n.endswith("." + entry) for n in names), entry


def test_prune_intermediate_layers_keeps_the_taken_features(built):
    name, model, x = built
    with torch.no_grad():
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        pruned = copy.deepcopy(model)
        taken = pruned.prune_intermediate_layers(indices=[0], prune_head=True)
        assert list(taken) == [0]
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
        again = pruned.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert torch.allclose(first, again, atol=1e-6), name


class _NotraceTracer(torch.fx.Tracer):
    """The FX tracer timm's tests use: timm's registered no-trace modules stay leaves, no-trace functions are
    recorded as calls."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()), param_shapes_constant=True)
        self.leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _fx(model: torch.nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, _NotraceTracer().trace(model))


@pytest.fixture(scope="module")
def eager_output(built):
    """The eager logits, computed once per model for the FX / TorchScript / export comparisons."""
    with torch.no_grad():
        return built[1](built[2])


def test_fx_forward_and_backward(built, eager_output):
    name, model, x = built
    with torch.no_grad():
        assert torch.equal(_fx(model)(x), eager_output), "FX graph output differs from eager"
    if sum(p.numel() for p in model.parameters()) > 100e6:
        return  # the backward of the largest models costs CI most; timm's own CI skips them the same way
    # a copy: a training-mode forward updates BatchNorm statistics, which the later checks must not see
    traced = _fx(copy.deepcopy(model).train())  # traced in training mode (DropPath's branch is taken at trace time)
    traced(x[:1]).square().mean().backward()
    missing = [n for n, p in traced.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient through the FX graph: {missing[:10]}"


@pytest.mark.slow
def test_torchscript(built, eager_output):
    name, model, x = built
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager_output, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_torch_export(built, eager_output):
    name, model, x = built
    program = torch.export.export(model, (x,), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), eager_output, atol=1e-5, rtol=1e-4)

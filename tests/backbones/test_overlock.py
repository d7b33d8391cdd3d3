"""OverLoCK: official parameter counts in all three forms, FLOPs against the paper, re-parameterisation, ContMix
against a per-pixel loop written from the paper's equations, the auxiliary loss, the checkpoint converter (both
official layouts and forms) and input errors.

Reference counts come from building the official LMMMEng/OverLoCK code (train form; after its ``reparam()``;
and that without the aux head). Big models are built on the meta device; behaviour is tested on a tiny
configuration of the same classes.
"""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vizoo  # noqa: F401
from vizoo.backbones.overlock import DILATED_BRANCHES, ContMix, DilatedReparamConv, checkpoint_filter_fn

OFFICIAL_PARAMS = {  # train form, deploy form (reparam()), deploy form without the aux head
    "overlock_xt": (17_307_272, 16_791_384, 16_453_712),
    "overlock_t": (34_990_472, 33_981_064, 33_467_040),
    "overlock_s": (58_309_772, 56_670_476, 56_156_452),
    "overlock_b": (98_012_968, 95_520_680, 94_942_528),
}
PAPER_GFLOPS = {"overlock_xt": 2.6, "overlock_t": 5.5, "overlock_s": 9.7, "overlock_b": 16.7}
TINY = dict(depths=(1, 1, 1, 1), sub_depths=(1, 2), embed_dims=(16, 32, 64, 64), sub_num_heads=(2, 2),
            projection=32, drop_path_rate=0.0)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine terms, so that merging BNs into convs is really exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


def tiny(**kwargs):
    torch.manual_seed(0)
    return randomize_bn(timm.create_model("overlock_xt", **dict(TINY, **kwargs))).eval()


# ------------------------------------------------------------------------------------ fidelity


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official_in_every_form(name):
    train, deploy, deploy_no_aux = OFFICIAL_PARAMS[name]
    assert count(meta_model(name, aux_head=True)) == train
    assert count(meta_model(name, aux_head=True, deploy=True)) == deploy
    assert count(meta_model(name, deploy=True)) == deploy_no_aux


@pytest.mark.parametrize("name", list(PAPER_GFLOPS))
def test_flops_match_the_paper(name):
    """Multiply-accumulates of convolutions and matmuls (na2d_av included) at 224, deploy form. They come out
    2-4% above the paper's one-decimal numbers (docs/models.md lists them); the paper does not say which ops
    its counter skipped, so this checks agreement to 5%."""
    model = meta_model(name, deploy=True).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    gmacs = counter.get_total_flops() / 2e9
    assert abs(gmacs / PAPER_GFLOPS[name] - 1) < 0.05, f"{name}: {gmacs:.2f} GMACs vs paper {PAPER_GFLOPS[name]}"


@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
def test_dilated_reparam_conv_merges_exactly(kernel_size):
    block = randomize_bn(DilatedReparamConv(6, kernel_size)).eval()
    x = torch.randn(2, 6, 19, 21)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert block.deploy and len(block.dilated) == 0
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_reparameterize_keeps_outputs_and_drops_the_aux_head():
    model = tiny(aux_head=True)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        expected = model(x)
        via_timm = timm.utils.reparameterize_model(model)  # a copy, branches merged (timm's benchmark --reparam)
        torch.testing.assert_close(via_timm(x), expected, atol=1e-5, rtol=1e-5)
        model.reparameterize()
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert model.aux_head is None
    assert count(model) == count(timm.create_model("overlock_xt", deploy=True, **TINY))


# ------------------------------------------------------------------------------------ ContMix


def contmix_loop(mix: ContMix, x, query, context):
    """ContMix from the paper's equations, one pixel at a time (maps at least as large as the kernels)."""
    B, C, H, W = x.shape
    G, c = mix.groups, C // (2 * mix.groups)
    q = mix.weight_query(query) * (C // G) ** -0.5  # official scale: (C / G) ** -0.5
    centres = mix.weight_key(context).flatten(2)  # [B, C/2, 49]
    w, b = mix.weight_proj.weight, mix.weight_proj.bias
    out = torch.zeros_like(x)
    for y in range(H):
        for xx in range(W):
            for g in range(G):
                affinity = q[:, g * c:(g + 1) * c, y, xx, None].mul(centres[:, g * c:(g + 1) * c]).sum(1)  # [B, 49]
                logits = affinity @ w.T + b
                start = 0
                for half, (k, rpb) in enumerate(((mix.small_kernel, mix.rpb1), (mix.kernel_size, mix.rpb2))):
                    y0 = min(max(y - k // 2, 0), H - k)  # clamped window
                    x0 = min(max(xx - k // 2, 0), W - k)
                    taps = logits[:, start:start + k * k].reshape(B, k, k)
                    bias = torch.stack([torch.stack([rpb[g, y0 + i - y + k - 1, x0 + j - xx + k - 1] for j in range(k)])
                                        for i in range(k)])
                    weights = (taps + bias).flatten(1).softmax(-1).reshape(B, k, k)
                    channels = slice(half * C // 2 + g * c, half * C // 2 + (g + 1) * c)
                    window = x[:, channels, y0:y0 + k, x0:x0 + k]
                    out[:, channels, y, xx] = (window * weights[:, None]).sum((-1, -2))
                    start += k * k
    return out


def test_contmix_matches_a_per_pixel_loop():
    torch.manual_seed(0)
    mix = randomize_bn(ContMix(dim=16, ctx_dim=8, kernel_size=5, small_kernel=3, groups=2)).eval()
    with torch.no_grad():
        mix.rpb1.normal_()
        mix.rpb2.normal_()
    x, query, context = torch.randn(2, 16, 7, 6), torch.randn(2, 16, 7, 6), torch.randn(2, 8, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(mix(x, query, context), contmix_loop(mix, x, query, context), atol=1e-5,
                                   rtol=1e-4)


def test_contmix_upsamples_maps_smaller_than_its_kernel():
    """Official rule: short side -> kernel size (long side scaled, truncated), ContMix there, average-pool back."""
    torch.manual_seed(0)
    mix = randomize_bn(ContMix(dim=16, ctx_dim=8, kernel_size=5, small_kernel=3, groups=2)).eval()
    x, query, context = torch.randn(1, 16, 3, 4), torch.randn(1, 16, 3, 4), torch.randn(1, 8, 3, 4)
    up = lambda t: F.interpolate(t, size=(5, 6), mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(contmix_loop(mix, up(x), up(query), up(context)), (3, 4))
        torch.testing.assert_close(mix(x, query, context), expected, atol=1e-5, rtol=1e-4)


def _count_fused(monkeypatch):
    """Record the calls ContMix makes to contmix_fused_forward (one per half)."""
    from vizoo.backbones import overlock

    calls, real = [], overlock.contmix_fused_forward

    def fused(*args, **kwargs):
        assert kwargs["backend"] == "triton"  # the interpreter on CPU
        calls.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(overlock, "contmix_fused_forward", fused)
    return calls


def _random_contmix(small_kernel, kernel_size):
    torch.manual_seed(0)
    mix = randomize_bn(ContMix(dim=16, ctx_dim=8, kernel_size=kernel_size, small_kernel=small_kernel, groups=2))
    with torch.no_grad():
        mix.rpb1.normal_()
        mix.rpb2.normal_()
        mix.weight_proj.weight.normal_(std=0.3)
    return mix.eval()


def _fuse(monkeypatch, max_kernel):
    """Let ContMix take the fused path on CPU (the Triton interpreter) for halves with kernels up to max_kernel."""
    from vizoo.backbones import overlock

    monkeypatch.setattr(overlock, "FUSED_CONTMIX_DEVICES", ("cpu",))
    monkeypatch.setattr(overlock, "FUSED_CONTMIX_MAX_KERNEL", max_kernel)


@pytest.mark.parametrize("shape,small,large,max_kernel", [((9, 19), 3, 7, 99), ((6, 17), 5, 5, 99),
                                                          ((3, 4), 3, 5, 99), ((9, 19), 3, 7, 5)],
                         ids=["9x19-k3-K7", "6x17-k5-K5", "3x4-upsampled", "9x19-k3-K7-only-k3-fused"])
def test_fused_contmix_matches_unfused(monkeypatch, shape, small, large, max_kernel):
    """The fused path (CPU: the Triton interpreter) gives the unfused module's output, in eval mode without
    gradients, for the halves whose kernel is at most FUSED_CONTMIX_MAX_KERNEL (the others stay unfused)."""
    mix = _random_contmix(small, large)
    x, query, context = torch.randn(2, 16, *shape), torch.randn(2, 16, *shape), torch.randn(2, 8, *shape)
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        expected = mix(x, query, context)  # CPU is not among the default FUSED_CONTMIX_DEVICES
        assert not calls
        _fuse(monkeypatch, max_kernel)
        got = mix(x, query, context)
    assert calls == [k for k in (small, large) if k <= max_kernel]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_fused_contmix_only_without_gradients(monkeypatch):
    """With the flag on, a forward that needs gradients (or that is compiled) keeps the unfused path; without
    gradients the fused path also serves parameters that require grad."""
    _fuse(monkeypatch, 99)
    mix = _random_contmix(3, 5)
    x, query, context = torch.randn(1, 16, 6, 7), torch.randn(1, 16, 6, 7), torch.randn(1, 8, 6, 7)
    calls = _count_fused(monkeypatch)
    out = mix(x, query, context)
    out.sum().backward()
    assert not calls and mix.rpb2.grad is not None
    torch.compile(mix, fullgraph=True, backend="aot_eager")(x, query, context)
    assert not calls
    with torch.no_grad():
        torch.testing.assert_close(mix(x, query, context), out.detach(), atol=1e-5, rtol=1e-4)
    assert calls == [3, 5]


def test_fused_contmix_model_matches_unfused(monkeypatch):
    """A tiny OverLoCK (eval, no gradients) with every ContMix half fused: every ContMix, fed what the model feeds it,
    gives the unfused output, and so do the logits. Its kernels are made sharp (random rpb and projection); the
    ContMix outputs are compared too because the blocks scale them down at initialisation."""
    model = tiny()
    mixes = [m for m in model.modules() if isinstance(m, ContMix)]
    outs = {False: [], True: []}
    fused = [False]
    with torch.no_grad():
        for mix in mixes:
            mix.rpb1.normal_()
            mix.rpb2.normal_()
            mix.weight_proj.weight.normal_(std=0.3)
            mix.register_forward_hook(lambda m, args, out: outs[fused[0]].append(out))
    x = torch.randn(1, 3, 64, 96)
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        expected = model(x)
        _fuse(monkeypatch, 99)
        fused[0] = True
        got = model(x)
    assert len(calls) == 2 * len(mixes) == 2 * len(outs[True])
    for fused, unfused in zip(outs[True], outs[False]):
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

# ------------------------------------------------------------------------------------ aux head and training


def test_aux_head_only_in_training_mode():
    model = tiny(aux_head=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        model.train()
        logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 1000)
    assert count(tiny()) < count(model)  # aux_head=False (default) builds none


def test_lightning_module_adds_the_weighted_aux_loss():
    from vizoo.train.module import ImageClassifier

    module = ImageClassifier("overlock_xt", num_classes=5, model_kwargs=dict(TINY, aux_head=True),
                             label_smoothing=0.0, aux_loss_weight=0.4)
    module.train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    torch.manual_seed(0)
    loss = module.training_step((x, y), 0)
    torch.manual_seed(0)
    logits, aux = module.model(x)
    expected = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------------------ checkpoints


def to_official(state_dict, model):
    """vizoo keys -> the official layout, as the official module tree names and shapes them."""
    out = {}
    for key, value in state_dict.items():
        k = key
        for new, old in (("stem.", "patch_embed1."), ("head.proj.", "head.0."), ("head.norm.", "head.1."),
                         ("head.fc.", "head.4."), ("aux_head.norm.", "aux_head.0."), ("aux_head.fc.", "aux_head.2.")):
            if k.startswith(new):
                k = old + k[len(new):]
                if old.endswith(("4.", "2.")) and k.endswith("weight"):
                    value = value[:, :, None, None]
        k = k.replace(".contmix.", ".")
        if k.endswith(".weight_proj.weight"):
            value = value[:, :, None, None]
        for part in ("proj.7", "fusion.4", "mlp.3"):  # GRN
            for new, old in ((".weight", ".gamma"), (".bias", ".beta")):
                if k.endswith(f".{part}{new}"):
                    k, value = k[: -len(new)] + old, value.reshape(1, -1, 1, 1)
        k = k.replace(".fc1.", ".proj.1.").replace(".fc2.", ".proj.3.")  # SE (head/aux fc already renamed)
        if k.rsplit(".", 2)[-2] in ("ls", "ls1", "ls2", "x_scale", "h_scale") and k.endswith(".weight"):
            value = value.reshape(-1, 1, 1, 1)
        out[k] = value
    for name, module in model.named_modules():  # dilated.{i}.{conv,bn} -> dil_{conv,bn}_k{k}_{r}
        if isinstance(module, DilatedReparamConv):
            for i, (kk, r) in enumerate(module.branches):
                renames = ((f"dilated.{i}.conv.", f"dil_conv_k{kk}_{r}."), (f"dilated.{i}.bn.", f"dil_bn_k{kk}_{r}."))
                for new, old in renames:
                    for key in [key for key in out if key.startswith(f"{name}.{new}")]:
                        out[f"{name}.{old}{key[len(name) + len(new) + 1:]}"] = out.pop(key)
    return out


def test_official_train_form_loads_into_both_forms():
    source = tiny(aux_head=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
    official = {"state_dict": {"module." + k: v for k, v in to_official(source.state_dict(), source).items()}}
    assert any("dil_conv_k" in k for k in official["state_dict"])
    for kwargs in (dict(aux_head=True), dict(deploy=True)):
        model = timm.create_model("overlock_xt", **dict(TINY, **kwargs)).eval()
        model.load_state_dict(checkpoint_filter_fn(copy.deepcopy(official), model))
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_official_deploy_form_loads_into_a_train_form_model():
    source = tiny(aux_head=True)
    source.reparameterize()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
    model = timm.create_model("overlock_xt", **TINY).eval()
    model.load_state_dict(checkpoint_filter_fn(to_official(source.state_dict(), source), model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_checkpoint_with_other_classes_keeps_the_new_classifiers():
    source = tiny(aux_head=True)
    model = timm.create_model("overlock_xt", num_classes=10, aux_head=True, **TINY)
    sd = checkpoint_filter_fn(to_official(source.state_dict(), source), model)
    assert not any(k.startswith(("head.fc.", "aux_head.fc.")) for k in sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["aux_head.fc.bias", "aux_head.fc.weight", "head.fc.bias", "head.fc.weight"]
    assert not unexpected


def test_checkpoint_of_another_variant_is_refused():
    source = tiny()
    other = timm.create_model("overlock_xt", **dict(TINY, embed_dims=(16, 32, 64, 96)))
    with pytest.raises(ValueError, match="shapes do not match"):
        checkpoint_filter_fn(source.state_dict(), other)
    deeper = timm.create_model("overlock_xt", **dict(TINY, depths=(2, 1, 1, 1)))
    with pytest.raises(ValueError, match="missing key"):
        checkpoint_filter_fn(source.state_dict(), deeper)


# ------------------------------------------------------------------------------------ input errors


def test_small_images():
    model = tiny()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 40)).shape == (1, 1000)  # 1x1 at stride 32: ContMix upsamples
        with pytest.raises(ValueError, match="at least 32x32"):
            model(torch.randn(1, 3, 31, 64))


def test_bad_configuration():
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        timm.create_model("overlock_xt", **dict(TINY, kernel_sizes=(17, 15, 12, 7)))
    with pytest.raises(ValueError, match="must split into"):
        timm.create_model("overlock_xt", **dict(TINY, sub_num_heads=(3, 2)))


def test_compiled_model_matches_eager():
    """torch.compile traces a whole (tiny) OverLoCK without graph breaks; aot_eager skips inductor's C++ build."""
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x), model(x))


# ------------------------------------------------------------------------------------ GPU


def test_grn_is_timms_in_float32_and_keeps_a_16_bit_dtype():
    from timm.layers.grn import GlobalResponseNorm

    from vizoo.backbones.overlock import GRN

    ours, timms = GRN(6, channels_last=False), GlobalResponseNorm(6, channels_last=False)
    with torch.no_grad():
        for p in (*ours.parameters(), *timms.parameters()):
            p.copy_(torch.arange(6.0) / 6 - 0.4)
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(ours(x), timms(x), rtol=0, atol=0)
    out = ours(x.bfloat16())
    assert out.dtype == torch.bfloat16  # timm's promotes to float32 through its parameters
    torch.testing.assert_close(out.float(), timms(x.bfloat16().float()), atol=4e-2, rtol=2e-2)


def test_autocast_casts_shared_inputs_once_and_keeps_grn_outputs(monkeypatch):
    """tools/cast_census.py on fake CUDA tensors, bf16 autocast: no dilated branch casts its input
    (DilatedReparamConv casts it once for all of them), and timm's GRN forward in place of vizoo's adds casts
    (its float32 output cast again by each consumer)."""
    import importlib.util
    from pathlib import Path

    from timm.layers.grn import GlobalResponseNorm

    from vizoo.backbones.overlock import GRN

    spec = importlib.util.spec_from_file_location("cast_census", Path(__file__).parents[2] / "tools" / "cast_census.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ours = tool.census("overlock_xt", batch=2)
    where = {key[0] for key in ours.count if key[1] == "activation"}
    assert where and not any(".dilated." in w for w in where), sorted(where)
    monkeypatch.setattr(GRN, "forward", GlobalResponseNorm.forward)
    timms = tool.census("overlock_xt", batch=2)
    assert sum(timms.bytes.values()) > sum(ours.bytes.values())


@pytest.mark.gpu
def test_dilated_reparam_conv_casts_its_input_once_under_autocast_gpu(monkeypatch):
    """Under CUDA autocast a float32 input is cast once for the large kernel and all dilated branches (not once
    per branch). The outputs stay those of the per-branch casts (the same bf16 operands). The input gradient
    differs by rounding only: with one shared cast autograd adds the branches' gradients in bf16 before the cast
    back, with per-branch casts it adds them in float32; so it is compared at bf16's resolution of the largest
    gradient."""
    from vizoo.backbones import overlock

    torch.manual_seed(0)
    conv = overlock.DilatedReparamConv(16, 13).cuda().train()
    x = torch.randn(4, 16, 28, 28, device="cuda", requires_grad=True)
    grad = torch.randn(4, 16, 28, 28, device="cuda")
    results = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(overlock, "autocast_input", lambda t: t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = conv(x)
        results.append((out.float(), *torch.autograd.grad(out, (x, conv.lk_origin.weight), grad.to(out.dtype))))
    (out, d_x, d_w), (out_ref, d_x_ref, d_w_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=8e-3, atol=1e-5)
    for got, want in ((d_x, d_x_ref), (d_w, d_w_ref)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.gpu
def test_inductor_compiled_model_matches_eager_gpu():
    """overlock_t compiles with inductor in one graph (vizoo::na2d_av_fwd is one node), bf16, eager's logits."""
    model = timm.create_model("overlock_t").cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x).float()
        out = torch.compile(model, fullgraph=True)(x).float()
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["overlock_t", "overlock_s"])
def test_gpu_triton_model_matches_cpu_reference(name):
    """The whole model at 224 on CUDA (na2d_av through Triton) against the CPU (reference op), fp32; then a
    bf16 autocast training step that must stay finite."""
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model(name, aux_head=True)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, aux = model(torch.randn(8, 3, 224, 224, device="cuda"))
        loss = logits.float().logsumexp(-1).mean() + 0.4 * aux.float().logsumexp(-1).mean()
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
def test_gpu_fused_contmix_model_matches_unfused():
    """overlock_t at 224 (ContMix at 14x14 with k=5/K=13 and 7x7 with k=5/K=7), bf16 autocast inference: the
    default fused halves (FUSED_CONTMIX_MAX_KERNEL) and none give the same logits, and both stay as close to the
    fp32 logits."""
    from vizoo.backbones import overlock

    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("overlock_t")).cuda().eval()
    with torch.no_grad():
        for mix in [m for m in model.modules() if isinstance(m, ContMix)]:
            mix.rpb1.normal_()
            mix.rpb2.normal_()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        exact = model(x)
        out = {}
        default = overlock.FUSED_CONTMIX_MAX_KERNEL
        for fused in (False, True):
            overlock.FUSED_CONTMIX_MAX_KERNEL = default if fused else 0
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out[fused] = model(x).float()
            finally:
                overlock.FUSED_CONTMIX_MAX_KERNEL = default
    torch.testing.assert_close(out[True], out[False], atol=3e-2, rtol=3e-2)
    err = {fused: (o - exact).abs().max().item() for fused, o in out.items()}
    assert err[True] <= 1.5 * err[False] + 1e-3, err


# ------------------------------------------------------------------------------------ configs

CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "overlock"
OFFICIAL_DROP_PATH = {"xt": 0.1, "t": 0.15, "s": 0.4, "b": 0.5}


def _merged(*names):
    """What LightningCLI builds from several ``-c`` files: later files override keys of earlier ones."""
    import yaml

    merged: dict = {}
    for name in names:
        for section, values in yaml.safe_load((CONFIG_DIR / name).read_text()).items():
            merged[section] = dict(merged.get(section, {}), **values) if isinstance(values, dict) else values
    return merged


@pytest.mark.parametrize("size", list(OFFICIAL_DROP_PATH))
def test_configs_are_the_official_recipe(size):
    import inspect

    from vizoo.data import ImageDataModule
    from vizoo.train.module import ImageClassifier

    cfg = _merged("base_in1k.yaml", f"overlock_{size}_in1k.yaml")
    assert set(cfg["model"]) <= set(inspect.signature(ImageClassifier).parameters)
    assert set(cfg["data"]) <= set(inspect.signature(ImageDataModule).parameters)
    m, t, d = cfg["model"], cfg["trainer"], cfg["data"]
    assert m["model_name"] == f"overlock_{size}" and m["drop_path_rate"] == OFFICIAL_DROP_PATH[size]
    assert d["batch_size"] * t["devices"] * t["num_nodes"] == 2048 and m["lr"] == 2e-3
    assert (m["weight_decay"], m["warmup_epochs"], m["min_lr"], m["ema_decay"]) == (0.05, 5, 1e-5, 0.9999)
    assert (m["mixup"], m["cutmix"], m["label_smoothing"], d["re_prob"]) == (0.8, 1.0, 0.1, 0.25)
    assert m["model_kwargs"]["aux_head"] and m["aux_loss_weight"] == 0.4
    assert t["max_epochs"] == 300 and t["gradient_clip_val"] == 5.0 and d["auto_augment"] == "rand-m9-mstd0.5-inc1"


@pytest.mark.slow
def test_cpu_demo_config_trains(tmp_path, monkeypatch):
    """Two training steps and a validation batch of the CPU demo (embedded digits), through the real CLI."""
    from vizoo.train.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "-c", str(CONFIG_DIR / "overlock_demo_cpu.yaml"), "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--data.batch_size=8"])
    assert cli.model.model.aux_head is not None
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_epoch"])

"""NAT / DiNAT / isotropic NAT: official parameter counts and MACs, dilation schedules, the NA layer's
padding and relative-position-bias semantics, GNA strides, the checkpoint converter, and input errors.

Reference numbers come from building the official SHI-Labs code (counted from its released modules); MACs
are counted fvcore-style (what the papers report): matmuls/convs (FlopCounterMode FLOPs / 2), plus
5 * numel per affine LayerNorm and one add per (query, key) for the relative position bias, as natten
0.14's fvcore handle counts it. Big models are built on the meta device, so nothing large is allocated.
"""

from __future__ import annotations

import contextlib
import math
import re
from unittest import mock

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import vizoo  # noqa: F401
from vizoo.backbones import nat as natmod
from vizoo.backbones.layers import NeighborhoodAttention2d
from vizoo.backbones.nat import NAT, NATIsotropic, checkpoint_filter_fn, dinat_dilations

NAMES = [
    "nat_mini",
    "nat_tiny",
    "nat_small",
    "nat_base",
    "dinat_mini",
    "dinat_tiny",
    "dinat_small",
    "dinat_base",
    "dinat_large",
    "dinat_large_k11",
    "nat_iso_small",
    "nat_iso_base",
    "dinat_iso_small",
    "dinat_iso_base",
]

OFFICIAL_PARAMS = {
    "nat_mini": 19_984_174,
    "nat_tiny": 27_901_582,
    "nat_small": 50_743_297,
    "nat_base": 89_769_652,
    "dinat_mini": 19_984_174,
    "dinat_tiny": 27_901_582,
    "dinat_small": 50_719_681,
    "dinat_base": 89_769_652,
    "dinat_large": 200_943_514,
    "dinat_large.in22k_ft_in1k_384": 200_943_514,
    "dinat_large_k11": 201_144_250,
    "nat_iso_small": 21_999_736,
    "nat_iso_base": 86_465_800,
    "dinat_iso_small": 21_999_736,
    "dinat_iso_base": 86_465_800,
}

# (name, input side, official fvcore GMACs)
OFFICIAL_MACS = [
    ("nat_mini", 224, 2.713),
    ("nat_tiny", 224, 4.321),
    ("dinat_large.in22k_ft_in1k_384", 384, 89.730),
    ("dinat_large_k11", 384, 92.350),
    ("nat_iso_small", 224, 4.320),
]

TINY = dict(embed_dim=32, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.0)


def meta_model(name: str, **kwargs):
    """Build on the meta device (shapes only) and skip torch's default initialisers, which are slow there."""
    with contextlib.ExitStack() as stack:
        for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm):
            stack.enter_context(mock.patch.object(cls, "reset_parameters", lambda self: None))
        stack.enter_context(torch.device("meta"))
        return timm.create_model(name, **kwargs)


def fvcore_gmacs(model: torch.nn.Module, side: int) -> float:
    """fvcore-style GMACs of one image on the meta device (see the module docstring)."""
    extra = [0]

    def layer_norm(module, inputs, output):
        extra[0] += 5 * inputs[0].numel()

    def rpb_adds(module, inputs, output):
        if module.rpb is not None:
            B, H, W, _ = output.shape
            extra[0] += (
                B
                * module.num_heads
                * max(H, module.window_extent)
                * max(W, module.window_extent)
                * module.kernel_size**2
            )

    hooks = [
        m.register_forward_hook(layer_norm) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)
    ]
    hooks += [
        m.register_forward_hook(rpb_adds) for m in model.modules() if isinstance(m, NeighborhoodAttention2d)
    ]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, side, side, device="meta"))
    for h in hooks:
        h.remove()
    return (counter.get_total_flops() / 2 + extra[0]) / 1e9


def tiny(name="nat_mini", **kwargs):
    """A small member of the family; hierarchical dilations sized for 64x64 inputs (unless img_size given)."""
    torch.manual_seed(0)
    if "iso" not in name:
        kwargs.setdefault("img_size", 64)
    args = dict(TINY, **kwargs) if "iso" not in name else dict(embed_dim=64, depth=3, num_heads=2, **kwargs)
    return timm.create_model(name, **args).eval()


# ------------------------------------------------------------------------------------ fidelity


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_equals_official(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name,side,official", OFFICIAL_MACS)
def test_macs_match_official(name, side, official):
    macs = fvcore_gmacs(meta_model(name).eval(), side)
    # the papers round to 3 decimals; vizoo matches them to that rounding (0.1%)
    assert abs(macs / official - 1) < 0.001, f"{name}@{side}: {macs:.3f} GMACs vs official {official}"


def test_dilation_schedules_match_the_papers():
    assert meta_model("dinat_mini").dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]
    assert meta_model("dinat_tiny").dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert meta_model("dinat_large.in22k_ft_in1k_384").dilations == [
        [1, 13, 1],
        [1, 6, 1, 6],
        [1, 3] * 9,
        [1] * 5,
    ]
    k11 = meta_model("dinat_large_k11")  # its one tag is the 384 one
    assert k11.kernel_size == 11 and k11.dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert meta_model("dinat_large", img_size=384).dilations == [
        [1, 13, 1],
        [1, 6, 1, 6],
        [1, 3] * 9,
        [1] * 5,
    ]
    assert meta_model("nat_tiny").dilations == [[1] * 3, [1] * 4, [1] * 18, [1] * 5]
    assert meta_model("dinat_iso_small").dilations == [1, 2] * 6
    assert meta_model("nat_iso_base").dilations == [1] * 12
    # a user kwarg beats what the tag implies
    assert meta_model("dinat_large.in22k_ft_in1k_384", img_size=224).dilations == meta_model("dinat_large").dilations
    assert dinat_dilations([2, 2], 96, 7) == [[1, 3], [1, 1]]


def test_the_old_11x11_tag_names_the_new_model():
    """The tag that used to switch dinat_large to 11x11 windows is refused with the model that replaced it."""
    with pytest.raises(ValueError, match="dinat_large_k11.in22k_ft_in1k_384"):
        meta_model("dinat_large.in22k_ft_in1k_384_11x11")


def test_layer_scale_only_where_official():
    has_ls = {
        n: any(k.endswith("ls1.gamma") for k, _ in meta_model(n).named_parameters())
        for n in ["nat_mini", "nat_small", "nat_base", "dinat_small", "dinat_base", "dinat_large"]
    }
    assert has_ls == {
        "nat_mini": False,
        "nat_small": True,
        "nat_base": True,
        "dinat_small": False,
        "dinat_base": True,
        "dinat_large": False,
    }


def test_names_do_not_shadow_timm():
    from timm.models._registry import _module_to_models

    for name in NAMES:
        owners = [mod for mod, names in _module_to_models.items() if name in names]
        assert owners == ["nat"], f"{name} is also registered by {owners}"


# ------------------------------------------------------------------------------------ the NA layer


def test_layer_equals_dense_attention_with_rpb_when_window_covers_map():
    """k = 7 on a 7x7 map is global attention: check qkv layout, scale and the key-minus-query RPB offset."""
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=7).eval()
    with torch.no_grad():
        layer.rpb.normal_()
    x = torch.randn(1, 7, 7, 16)
    q, k, v = layer.qkv(x).reshape(1, 49, 3, 2, 8).permute(2, 0, 3, 1, 4)  # [B, heads, N, d]
    ys, xs = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    dy = ys.flatten()[None, :] - ys.flatten()[:, None]  # key - query
    dx = xs.flatten()[None, :] - xs.flatten()[:, None]
    bias = layer.rpb[:, dy + 6, dx + 6]  # [heads, N, N]
    attn = ((q * 8**-0.5) @ k.transpose(-1, -2) + bias).softmax(-1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(1, 7, 7, 16))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_small_inputs_are_zero_padded_before_qkv_like_official():
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=3, dilation=2).eval()
    with torch.no_grad():
        layer.qkv.bias.normal_()  # padded tokens carry this bias as keys and values
    x = torch.randn(2, 4, 5, 16)  # below kernel_size * dilation = 6
    padded = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 2))
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, layer(padded)[:, :4, :5])
    assert out.shape == x.shape
    strict = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=3, dilation=2, pad_small=False)
    with pytest.raises(ValueError, match="smallest accepted size is 6x6"):
        strict(x)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        NeighborhoodAttention2d(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="stride must be in"):
        NeighborhoodAttention2d(dim=32, num_heads=1, kernel_size=3, stride=4, rpb=False)
    with pytest.raises(ValueError, match="rpb=False"):
        NeighborhoodAttention2d(dim=32, num_heads=1, kernel_size=3, stride=2)
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttention2d(dim=32, num_heads=1, attn_drop=0.1)
    with pytest.raises(ValueError, match=r"\[B, H, W, 32\]"):
        NeighborhoodAttention2d(dim=32, num_heads=1)(torch.randn(1, 32, 8, 8))


# ------------------------------------------------------------------------------------ models on small inputs


@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini", "nat_iso_small", "dinat_iso_small"])
def test_small_models_run_on_small_inputs(name):
    model = tiny(name, num_classes=5)
    for side in (32, 50):  # padding everywhere; odd sizes
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            out = model(x)
            final, inter = model.forward_intermediates(x)
            feats = model.forward_features(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        assert torch.equal(final, feats) and feats.shape[-1] == model.num_features
        if isinstance(model, NAT):
            assert [t.shape[1] for t in inter] == [32, 64, 128, 256]
            assert [t.shape[-1] for t in inter] == [math.ceil(side / r) for r in (4, 8, 16, 32)]


@pytest.mark.parametrize("name", ["nat_mini", "dinat_iso_small"])
def test_nchw_and_channels_last_inputs_give_the_same_output(name):
    model = tiny(name, num_classes=5)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_contract_details_on_a_small_nat():
    model = tiny("dinat_mini", num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 2], output_fmt="NHWC")
        assert [t.shape[-1] for t in inter] == [32, 128] and inter[0].shape[1:3] == (16, 16)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, final.permute(0, 3, 1, 2))
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], model.forward_intermediates(x, indices=[1])[1][0])
        model.reset_classifier(0)
        assert model(x).shape == (1, 256) == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == (1, 2, 2, 256)
    assert all(n.endswith(".rpb") for n in model.no_weight_decay()) and len(model.no_weight_decay()) == 5
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.stages) == 2 and model.num_features == 64
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_features_only_gives_nchw_pyramid():
    model = timm.create_model("nat_mini", features_only=True, out_indices=(1, 3), **TINY).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 8), (1, 256, 2, 2)]
    assert model.feature_info.reduction() == [8, 32]


def test_gna_stride_option():
    model = tiny("nat_mini", stride=2)
    assert all(
        m.stride == 2 and m.rpb is None for m in model.modules() if isinstance(m, NeighborhoodAttention2d)
    )
    reference = tiny("nat_mini", rpb=False)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        strided, plain = model(x), reference(x)
    assert torch.isfinite(strided).all() and not torch.allclose(strided, plain, atol=1e-4)
    blocked = tiny("nat_mini", stride=7, kernel_size=7)  # stride == kernel: blocked (Swin-style) windows
    with torch.no_grad():
        assert torch.isfinite(blocked(x)).all()
    with pytest.raises(ValueError, match="rpb=False"):
        tiny("nat_mini", stride=2, rpb=True)


def test_model_argument_errors():
    with pytest.raises(ValueError, match="one list per level"):
        timm.create_model("dinat_mini", dilations=[[1, 2]], **TINY)
    with pytest.raises(ValueError, match="one entry per level"):
        NAT(depths=(1, 1), num_heads=(1,))
    with pytest.raises(ValueError, match=r"images \[B, C, H, W\]"):
        tiny("nat_mini")(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="attn_drop"):
        tiny("nat_mini", attn_drop_rate=0.1)


# ------------------------------------------------------------------------------------ checkpoint conversion


def official_state_dict(
    embed_dim, depths, heads, mlp_ratio, kernel_size=7, layer_scale=False, num_classes=1000, in_chans=3
):
    """A state dict with the original repo's key names and shapes (spec of classification/nat.py)."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def put(key, *shape):
        sd[key] = torch.randn(*shape, generator=g)

    put("patch_embed.proj.0.weight", embed_dim // 2, in_chans, 3, 3)
    put("patch_embed.proj.0.bias", embed_dim // 2)
    put("patch_embed.proj.1.weight", embed_dim, embed_dim // 2, 3, 3)
    put("patch_embed.proj.1.bias", embed_dim)
    put("patch_embed.norm.weight", embed_dim)
    put("patch_embed.norm.bias", embed_dim)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed_dim * 2**i
        hidden = int(c * mlp_ratio)
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                put(p + norm + ".weight", c)
                put(p + norm + ".bias", c)
            put(p + "attn.qkv.weight", 3 * c, c)
            put(p + "attn.qkv.bias", 3 * c)
            put(p + "attn.rpb", h, 2 * kernel_size - 1, 2 * kernel_size - 1)
            put(p + "attn.proj.weight", c, c)
            put(p + "attn.proj.bias", c)
            put(p + "mlp.fc1.weight", hidden, c)
            put(p + "mlp.fc1.bias", hidden)
            put(p + "mlp.fc2.weight", c, hidden)
            put(p + "mlp.fc2.bias", c)
            if layer_scale:
                put(p + "gamma1", c)
                put(p + "gamma2", c)
        if i < len(depths) - 1:
            put(f"levels.{i}.downsample.reduction.weight", 2 * c, c, 3, 3)
            put(f"levels.{i}.downsample.norm.weight", 2 * c)
            put(f"levels.{i}.downsample.norm.bias", 2 * c)
    c = embed_dim * 2 ** (len(depths) - 1)
    put("norm.weight", c)
    put("norm.bias", c)
    put("head.weight", num_classes, c)
    put("head.bias", num_classes)
    return sd


def to_hf_layout(sd, prefix="nat."):
    """The same weights under transformers' NatForImageClassification names."""
    out = {}
    for key, v in sd.items():
        if m := re.fullmatch(r"levels\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            p, part = f"{prefix}encoder.levels.{m[1]}.layers.{m[2]}.", m[3]
            if part.startswith("attn.qkv."):
                kind = part.rsplit(".", 1)[1]
                for name, chunk in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[f"{p}attention.self.{name}.{kind}"] = chunk
            elif part in ("gamma1", "gamma2"):
                continue
            else:
                new = {
                    "norm1": "layernorm_before",
                    "norm2": "layernorm_after",
                    "attn.rpb": "attention.self.rpb",
                    "attn.proj": "attention.output.dense",
                    "mlp.fc1": "intermediate.dense",
                    "mlp.fc2": "output.dense",
                }
                stem, _, tail = part.rpartition(".") if part != "attn.rpb" else (part, "", "")
                out[p + new[stem] + ("." + tail if tail else "")] = v
            if part == "norm1.weight" and f"levels.{m[1]}.blocks.{m[2]}.gamma1" in sd:
                out[p + "layer_scale_parameters"] = torch.stack(
                    [sd[f"levels.{m[1]}.blocks.{m[2]}.gamma1"], sd[f"levels.{m[1]}.blocks.{m[2]}.gamma2"]]
                )
        elif m := re.fullmatch(r"levels\.(\d+)\.downsample\.(.+)", key):
            out[f"{prefix}encoder.levels.{m[1]}.downsample.{m[2]}"] = v
        elif m := re.fullmatch(r"patch_embed\.proj\.(\d)\.(.+)", key):
            out[f"{prefix}embeddings.patch_embeddings.projection.{m[1]}.{m[2]}"] = v
        elif key.startswith("patch_embed.norm."):
            out[prefix + "embeddings.norm." + key.rsplit(".", 1)[1]] = v
        elif key.startswith("norm."):
            out[prefix + "layernorm." + key.rsplit(".", 1)[1]] = v
        elif key.startswith("head."):
            out["classifier." + key.rsplit(".", 1)[1]] = v
    return out


@pytest.fixture(scope="module")
def tiny_official():
    return official_state_dict(32, (1, 2, 1, 1), (1, 2, 4, 8), 2.0, layer_scale=True, num_classes=10)


def test_converter_maps_official_layout(tiny_official):
    model = tiny("nat_mini", layer_scale=1e-5, num_classes=10)
    for wrapped in (
        tiny_official,
        {"model": tiny_official},
        {"state_dict": {"module." + k: v for k, v in tiny_official.items()}},
    ):
        out = checkpoint_filter_fn(wrapped, model)
        model.load_state_dict(out, strict=True)
    sd = model.state_dict()
    assert torch.equal(
        sd["stages.1.downsample.reduction.weight"], tiny_official["levels.0.downsample.reduction.weight"]
    )
    assert torch.equal(sd["stages.1.blocks.1.ls2.gamma"], tiny_official["levels.1.blocks.1.gamma2"])
    assert torch.equal(sd["stages.2.blocks.0.attn.rpb"], tiny_official["levels.2.blocks.0.attn.rpb"])
    assert torch.equal(sd["stem.conv2.weight"], tiny_official["patch_embed.proj.1.weight"])
    assert torch.equal(sd["head.fc.weight"], tiny_official["head.weight"])
    # vizoo's own layout passes through unchanged
    assert checkpoint_filter_fn(sd, model).keys() == sd.keys()


def test_converter_maps_hugging_face_layout(tiny_official):
    model = tiny("nat_mini", layer_scale=1e-5, num_classes=10)
    expected = checkpoint_filter_fn(tiny_official, model)
    for prefix in ("nat.", "dinat."):
        hf = to_hf_layout(tiny_official, prefix)
        assert any(k.endswith("attention.self.query.weight") for k in hf)
        out = checkpoint_filter_fn(hf, model)
        assert out.keys() == expected.keys()
        for k in out:
            assert torch.equal(out[k], expected[k]), k


def test_converter_maps_isotropic_layout():
    model = tiny("dinat_iso_small", num_classes=10)
    sd = {
        k.replace("blocks.", "layers.").replace("head.fc.", "head."): v for k, v in model.state_dict().items()
    }
    out = checkpoint_filter_fn(sd, model)
    assert out.keys() == model.state_dict().keys()


def test_timm_pretrained_loading_uses_the_converter(tmp_path):
    official = official_state_dict(32, (1, 2, 1, 1), (1, 2, 4, 8), 2.0, layer_scale=True, num_classes=1000)
    path = tmp_path / "nat_tiny_official.pth"
    torch.save({"model": official}, path)
    args = dict(TINY, layer_scale=1e-5, pretrained_cfg_overlay=dict(file=str(path)))
    model = timm.create_model("nat_mini", pretrained=True, **args)
    assert torch.equal(model.stages[2].blocks[0].attn.rpb, official["levels.2.blocks.0.attn.rpb"])
    assert torch.equal(model.head.fc.weight, official["head.weight"])
    new_head = timm.create_model("nat_mini", pretrained=True, num_classes=5, **args)  # timm drops the head
    assert torch.equal(new_head.stem.conv1.weight, official["patch_embed.proj.0.weight"])
    assert new_head.head.fc.weight.shape == (5, 256)


def test_converter_errors(tiny_official):
    model = tiny("nat_mini", layer_scale=1e-5, num_classes=10)
    missing = {k: v for k, v in tiny_official.items() if k != "levels.1.blocks.0.attn.rpb"}
    with pytest.raises(ValueError, match=r"missing key.*stages\.1\.blocks\.0\.attn\.rpb"):
        checkpoint_filter_fn(missing, model)
    with pytest.raises(
        ValueError, match=r"unexpected key.*levels\.0\.blocks\.0\.attn\.relative_position_index"
    ):
        checkpoint_filter_fn(
            dict(tiny_official, **{"levels.0.blocks.0.attn.relative_position_index": torch.zeros(1)}), model
        )
    no_ls = tiny("nat_mini", num_classes=10)
    with pytest.raises(ValueError, match="unexpected key.*gamma"):
        checkpoint_filter_fn(tiny_official, no_ls)
    big_kernel = tiny("nat_mini", layer_scale=1e-5, num_classes=10, kernel_size=5)
    with pytest.raises(ValueError, match="RPB table of another kernel size"):
        checkpoint_filter_fn(tiny_official, big_kernel)
    with pytest.raises(ValueError, match="missing key"):
        checkpoint_filter_fn(
            to_hf_layout({k: v for k, v in tiny_official.items() if "levels.0.blocks.0.attn.qkv" not in k}),
            model,
        )


def test_pretrained_cfgs():
    cfgs = {name: natmod.default_cfgs[name].cfgs for name in NAMES}
    for name, tags in cfgs.items():
        for tag, cfg in tags.items():
            assert cfg.url.startswith("https://shi-labs.com/") and cfg.crop_pct in (0.875, 1.0)
            assert cfg.interpolation == "bicubic" and cfg.mean == (0.485, 0.456, 0.406)
            assert cfg.classifier == "head.fc" and cfg.license == "mit"
    assert set(cfgs["dinat_large"]) == {"in22k_ft_in1k", "in22k_ft_in1k_384"}
    assert set(cfgs["dinat_large_k11"]) == {"in22k_ft_in1k_384"}
    assert cfgs["dinat_large_k11"]["in22k_ft_in1k_384"].hf_hub_id == "shi-labs/dinat-large-11x11-in22k-in1k-384"
    model = meta_model("dinat_large.in22k_ft_in1k_384")
    assert model.pretrained_cfg["input_size"] == (3, 384, 384) and model.pretrained_cfg["crop_pct"] == 1.0
    assert isinstance(meta_model("nat_iso_small"), NATIsotropic)


# ------------------------------------------------------------------------------------ configs

CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "nat"


# What each single-file config (configs/nat/<model>_in1k.yaml before the base + override split) set: this recipe,
# shared by all twelve, plus run_name "<model>_in1k", model_name and the official drop path rate per model.
OLD_RECIPE = {
    "seed_everything": 0,
    "trainer": dict(accelerator="gpu", devices=8, strategy="ddp", num_nodes=1, max_epochs=300,
                    precision="bf16-mixed", gradient_clip_val=5.0, sync_batchnorm=False),
    "model": dict(lr=1e-3, weight_decay=0.05, warmup_epochs=20, min_lr=5e-6, label_smoothing=0.1, mixup=0.8,
                  cutmix=1.0, mixup_prob=1.0, ema_decay=None),
    "data": dict(dataset="folder", root="/path/to/imagenet", image_size=224, batch_size=128, num_workers=10,
                 augment=True, scale=[0.08, 1.0], hflip=0.5, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                 re_prob=0.25),
}
OLD_DROP_PATH = {
    "nat_mini": 0.2, "nat_tiny": 0.2, "nat_small": 0.3, "nat_base": 0.5, "dinat_mini": 0.2, "dinat_tiny": 0.2,
    "dinat_small": 0.3, "dinat_base": 0.5, "nat_iso_small": 0.1, "nat_iso_base": 0.4, "dinat_iso_small": 0.1,
    "dinat_iso_base": 0.4,
}


def _print_config(capsys, *files):
    """What ``vizoo fit -c FILE [-c FILE ...] --print_config`` prints, parsed (LightningCLI's own merge)."""
    import yaml

    from vizoo.train.cli import cli_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *[a for f in files for a in ("-c", str(f))], "--print_config"])
    assert not exit_info.value.code
    return yaml.safe_load(capsys.readouterr().out)


def test_config_files_are_one_base_and_one_file_per_model():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert names == {"base_in1k", "nat_demo_cpu"} | {f"{m}_in1k" for m in OLD_DROP_PATH}


@pytest.mark.parametrize("name", sorted(OLD_DROP_PATH))
def test_stacked_config_gives_the_old_single_file_settings(name, capsys):
    """``-c base_in1k.yaml -c <model>_in1k.yaml`` resolves to what the old single file set, and the two files
    set nothing else (every key they hold is one the old file held)."""
    import yaml

    files = [CONFIG_DIR / "base_in1k.yaml", CONFIG_DIR / f"{name}_in1k.yaml"]
    expected = {**OLD_RECIPE, "run_name": f"{name}_in1k"}
    expected["model"] = dict(OLD_RECIPE["model"], model_name=name, drop_path_rate=OLD_DROP_PATH[name])
    written: dict = {}
    for f in files:
        for key, value in yaml.safe_load(f.read_text()).items():
            written[key] = dict(written.get(key, {}), **value) if isinstance(value, dict) else value
    assert written == expected
    resolved = _print_config(capsys, *files)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert {k: resolved[key][k] for k in value} == value, key
        else:
            assert resolved[key] == value, key


def test_demo_config_is_the_cpu_recipe(capsys):
    resolved = _print_config(capsys, CONFIG_DIR / "nat_demo_cpu.yaml")
    assert resolved["model"]["model_name"] in NAMES
    assert resolved["trainer"]["accelerator"] == "cpu" and resolved["data"]["dataset"] == "digits"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini"])
def test_inductor_compiled_model_matches_eager_gpu(name):
    """The whole model compiles without graph breaks (vizoo::na_fwd is one node; the fused layer norm steps
    aside under compile) and gives eager's logits (bf16 autocast)."""
    model = timm.create_model(name).cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x).float()
        out = torch.compile(model, fullgraph=True)(x).float()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_compiled_training_step_runs_in_cuda_graphs_gpu():
    """``torch.compile(mode="reduce-overhead")`` captures NAT's training step, forward and backward with RPB, in
    CUDA graphs: Inductor skips none of its graphs (vizoo's ops make no host syncs and keep their tables on the
    GPU), and the replayed step gives eager's loss and gradients."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = timm.create_model("nat_mini", img_size=64, depths=(1, 1, 1, 1), num_classes=5).cuda().train()
    params = list(model.parameters())
    x = torch.randn(4, 3, 64, 64, device="cuda")
    ref = model(x).float().square().mean()
    ref_grads = torch.autograd.grad(ref, params)
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # the first calls warm up and record, the later ones replay
        loss = compiled(x).float().square().mean()
        grads = [g.clone() for g in torch.autograd.grad(loss, params)]
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("attn_backend", [None, "triton"])
def test_compiled_model_matches_eager(attn_backend):
    """torch.compile traces a whole (small) NAT without graph breaks and gives eager's output; aot_eager runs
    dynamo + AOTAutograd without inductor's C++ build, which alone takes minutes on a CI runner."""
    model = timm.create_model("nat_mini", img_size=64, depths=(1, 1, 1, 1), num_classes=5,
                              attn_backend=attn_backend).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

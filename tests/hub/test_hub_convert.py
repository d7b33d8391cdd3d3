"""`vizoo convert`: official checkpoints -> export folders through the family's checkpoint_filter_fn, every key
accounted for, pickles read without running code from them."""
from __future__ import annotations

import json
import re
import sys
import types

import pytest
import timm
import torch
from hub_testlib import NUM_CLASSES

import vizoo.backbones.nat as nat_module
from vizoo.hub import convert_checkpoint, verify_folder
from vizoo.hub.checkpoints import UnsafeObject, load_file
from vizoo.hub.cli import convert_main

NAT_TINY = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "img_size": 64}


class _YacsLikeNode(dict):
    """Stands in for yacs' CfgNode: a dict subclass from a module that will not exist at load time."""


def _save_with_foreign_object(obj, path):
    """torch.save ``obj`` with a config object whose class lives in a throwaway module (like InLine's yacs node)."""
    module = types.ModuleType("fake_yacs_config")
    _YacsLikeNode.__module__ = module.__name__
    module.CfgNode = _YacsLikeNode
    _YacsLikeNode.__qualname__ = "CfgNode"
    sys.modules[module.__name__] = module
    try:
        torch.save(obj, path)
    finally:
        del sys.modules[module.__name__]


def _to_official_nat(state_dict):
    """vizoo NAT keys -> the original repository's (the inverse of what the family's filter does)."""
    out = {}
    for key, value in state_dict.items():
        k = key.replace("stem.conv1.", "patch_embed.proj.0.").replace("stem.conv2.", "patch_embed.proj.1.")
        k = k.replace("stem.norm.", "patch_embed.norm.").replace("head.fc.", "head.")
        k = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"levels.{int(m[1]) - 1}.downsample.", k)
        k = re.sub(r"^stages\.", "levels.", k)
        k = re.sub(r"\.ls([12])\.gamma$", r".gamma\1", k)
        out[k] = value
    return out


def test_restricted_unpickler_reads_tensors_and_runs_no_code(tmp_path):
    ref = {"w": torch.randn(3, 2)}
    cfg = _YacsLikeNode(MODEL=_YacsLikeNode(TYPE="inline_deit_tiny"))
    _save_with_foreign_object({"model": ref, "config": cfg, "epoch": 299, "max_accuracy": 72.4}, tmp_path / "c.pth")
    obj = load_file(tmp_path / "c.pth")
    torch.testing.assert_close(obj["model"]["w"], ref["w"])
    assert isinstance(obj["config"], UnsafeObject) and obj["epoch"] == 299

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": ref, "evil": Evil()}, tmp_path / "evil.pth")
    obj = load_file(tmp_path / "evil.pth")
    assert not marker.exists() and isinstance(obj["evil"], UnsafeObject)


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_file(tmp_path / "junk.pth")


def test_convert_official_nat_through_the_family_filter(tmp_path, monkeypatch, example_input):
    torch.manual_seed(0)
    ref = timm.create_model("nat_mini", num_classes=NUM_CLASSES, **NAT_TINY).eval()
    _save_with_foreign_object({"model": _to_official_nat(ref.state_dict()), "config": _YacsLikeNode(), "epoch": 3},
                              tmp_path / "nat_mini.pth")
    calls = []
    original = nat_module.checkpoint_filter_fn
    monkeypatch.setattr(nat_module, "checkpoint_filter_fn", lambda sd, m: calls.append(1) or original(sd, m))

    model, report = convert_checkpoint("nat_mini.in1k", tmp_path / "nat_mini.pth", tmp_path / "out",
                                       model_kwargs=NAT_TINY)
    assert calls, "the conversion did not go through nat.checkpoint_filter_fn"
    assert model.num_classes == NUM_CLASSES  # read from the checkpoint's classifier
    assert report.num_tensors == len(ref.state_dict()) and not report.explained_missing
    with torch.no_grad():
        torch.testing.assert_close(model(example_input), ref(example_input), rtol=0, atol=0)
    loaded = verify_folder(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(example_input), ref(example_input), rtol=0, atol=0)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert report.sha256 in config["vizoo"]["source"] and config["pretrained_cfg"]["tag"] == "in1k"


def test_convert_cli_reports_and_fails_on_unexplained_keys(tmp_path, capsys):
    torch.manual_seed(0)
    ref = timm.create_model("test_vit", num_classes=NUM_CLASSES, img_size=64).eval()
    sd = dict(ref.state_dict())
    sd["extra.buffer"] = torch.zeros(1)
    del sd["norm.bias"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "vit.pth")
    args = ["--model", "test_vit", "--checkpoint", str(tmp_path / "vit.pth"), "--out", str(tmp_path / "out"),
            "--model-kwargs", '{"img_size": 64}']
    with pytest.raises(SystemExit) as exit_info:
        convert_main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "1 missing key(s): norm.bias" in err and "1 unexpected key(s): extra.buffer" in err
    assert not (tmp_path / "out").exists()

    convert_main(args + ["--allow-missing", "norm.b*", "--allow-unexpected", "extra.*"])
    out = capsys.readouterr().out
    assert "expected missing (kept at init): norm.bias" in out and "expected unexpected (dropped): extra.buffer" in out
    verify_folder(tmp_path / "out")


def test_convert_checkpoint_of_another_variant(tmp_path):
    other = timm.create_model("test_vit", num_classes=NUM_CLASSES, img_size=64, embed_dim=32, num_heads=2)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*: file \[.*32.*\] vs model .*another variant"):
        convert_checkpoint("test_vit", tmp_path / "other.pth", None, model_kwargs={"img_size": 64},
                           num_classes=NUM_CLASSES)


def test_convert_unknown_model(tmp_path):
    torch.save({}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="Did you mean 'nat_mini'"):
        convert_checkpoint("nat_minii", tmp_path / "x.pth", None)



def test_extract_state_dict_layouts():
    from vizoo.hub.checkpoints import extract_state_dict

    a, b = torch.zeros(1), torch.ones(1)
    cswin_like = {"model": {"w": a}, "state_dict_ema": {"w": b}, "max_accuracy_e": 83.0}
    assert extract_state_dict(cswin_like)["w"] is a  # the paper's numbers are the raw weights
    assert extract_state_dict(cswin_like, ema=True)["w"] is b
    assert extract_state_dict({"state_dict": {"module.w": a}}) == {"w": a}  # OverLoCK: wrapper and DDP prefix
    assert extract_state_dict({"w": a}) == {"w": a}
    with pytest.raises(ValueError, match="no EMA weights"):
        extract_state_dict({"model": {"w": a}}, ema=True)
    with pytest.raises(ValueError, match=r"found no tensors.*'epoch'"):
        extract_state_dict({"epoch": 3, "optimizer": {}})

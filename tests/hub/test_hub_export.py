"""Export folders load back identically through every timm route, are written atomically, and bad input gets a
clear error (offline: HF_HUB_OFFLINE=1 is set by tests/conftest.py before huggingface_hub is imported)."""
from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import timm
import torch
from hub_testlib import NUM_CLASSES, TINY_IDS, populate_hub_cache

import vizoo.hub.export as export_mod
from vizoo.hub import create_model, export_model, verify_folder


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", TINY_IDS)
def test_round_trip_every_route(name, exports, tmp_path):
    _, folder, x, expected = exports[name]
    cfg_args = json.loads((folder / "config.json").read_text())["model_args"]
    populate_hub_cache(tmp_path / "cache", f"vizoo-test/{name}", folder)
    routes = {
        "local-dir": timm.create_model(f"local-dir:{folder}", pretrained=True),
        "hf-hub cache": timm.create_model(f"hf-hub:vizoo-test/{name}", pretrained=True, cache_dir=tmp_path / "cache"),
        "overlay file": timm.create_model(
            name, pretrained=True, **cfg_args,
            pretrained_cfg_overlay={"file": str(folder / "model.safetensors"), "num_classes": NUM_CLASSES}),
        "vizoo create_model": create_model(f"local-dir:{folder}"),
    }
    for route, loaded in routes.items():
        torch.testing.assert_close(_outputs(loaded, x), expected, rtol=0, atol=0, msg=route)
        if route != "overlay file":  # the overlay keeps the registry's cfg, which has no label names
            assert loaded.pretrained_cfg["label_names"] == [f"class{i}" for i in range(NUM_CLASSES)], route


def test_folder_contents(exports):
    _, folder, _, _ = exports["nat_mini"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "nat_mini"
    assert config["model_args"]["embed_dim"] == 16 and config["model_args"]["num_classes"] == NUM_CLASSES
    assert config["label_names"] == [f"class{i}" for i in range(NUM_CLASSES)]
    cfg = config["pretrained_cfg"]
    assert cfg["license"] == "mit" and cfg["paper_ids"] == "arXiv:2204.07143"
    assert "hf_hub_id" not in cfg and "url" not in cfg  # sources are stripped: the folder is the source
    assert config["vizoo"]["forward_check"]["numel"] == NUM_CLASSES
    card = (folder / "README.md").read_text()
    for text in ("license: mit", "https://arxiv.org/abs/2204.07143", "| top1 | 12.5 |", "hf-hub:", "import vizoo",
                 "`input_size`: [3, 224, 224]", "random weights (test)"):
        assert text in card, text
    # the weights are safetensors, not a pickle: the file starts with a little-endian header length + JSON
    raw = (folder / "model.safetensors").read_bytes()
    assert raw[8:9] == b"{" and not raw.startswith(b"PK")


def test_export_refuses_existing_and_overwrites_on_request(exports, tmp_path):
    model, _, _, _ = exports["test_vit"]
    out = export_model(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(model, out)
    before = (out / "model.safetensors").stat().st_mtime_ns
    export_model(model, out, overwrite=True)  # a folder holding only an export is replaced
    assert (out / "model.safetensors").stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or backup folder left


def test_overwrite_never_deletes_what_vizoo_did_not_write(exports, tmp_path):
    model, _, _, _ = exports["test_vit"]
    out = export_model(model, tmp_path / "m")
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    (out / "stale.txt").write_text("x")
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(FileExistsError, match=r"holds files an export does not write \(stale.txt, sub/\)"):
        export_model(model, out, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing
    assert (out / "sub" / "notes.txt").read_text() == "mine"


def test_export_refuses_the_current_folder(exports, tmp_path, monkeypatch):
    model, _, _, _ = exports["test_vit"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for target in (".", str(tmp_path.parent)):
        with pytest.raises(ValueError, match="current folder or holds it"):
            export_model(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_export_records_weights_hash_and_loaders_check_it(exports, tmp_path):
    from vizoo.hub.export import file_sha256
    from vizoo.hub.loading import create_model, verify_folder

    model, _, _, _ = exports["test_vit"]
    out = export_model(model, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["vizoo"]["weights_sha256"] == file_sha256(out / "model.safetensors")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # a byte flip inside a tensor: still a valid safetensors file
    (out / "model.safetensors").write_bytes(bytes(data))
    for load in (lambda: verify_folder(out), lambda: create_model(f"local-dir:{out}", pretrained=True)):
        with pytest.raises(ValueError, match=r"model.safetensors: its SHA-256 differs"):
            load()


def test_damaged_config_is_reported_by_path(exports, tmp_path):
    from vizoo.hub.loading import verify_folder

    model, _, _, _ = exports["test_vit"]
    out = export_model(model, tmp_path / "m")
    (out / "config.json").write_text('{"architecture": ')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        verify_folder(out)


def test_failed_export_leaves_nothing(exports, tmp_path, monkeypatch):
    model, _, _, _ = exports["test_vit"]

    def broken_card(*args, **kwargs):
        raise RuntimeError("killed while writing the card")

    monkeypatch.setattr(export_mod, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="killed"):
        export_model(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_bad_safetensors_local_dir(exports, tmp_path, damage):
    _, folder, _, _ = exports["test_vit"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    raw = (bad / "model.safetensors").read_bytes()
    raw = raw[: len(raw) // 2] if damage == "truncated" else b"\xff" * 16 + raw[16:]
    (bad / "model.safetensors").write_bytes(raw)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        create_model(f"local-dir:{bad}")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        verify_folder(bad)


def test_bad_safetensors_in_hub_cache_is_removed(exports, tmp_path):
    _, folder, _, _ = exports["test_vit"]
    cache = tmp_path / "cache"
    populate_hub_cache(cache, "vizoo-test/broken", folder)
    weights = next(cache.rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupted.*removed from the Hub cache"):
        create_model("hf-hub:vizoo-test/broken", cache_dir=cache)
    assert not weights.exists()


def test_modified_weights_in_hub_cache_are_named_and_removed(exports, tmp_path):
    _, folder, _, _ = exports["test_vit"]
    cache = tmp_path / "cache"
    populate_hub_cache(cache, "vizoo-test/flipped", folder)
    weights = next(cache.rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x10  # inside a tensor: the file still parses, only the recorded SHA-256 can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors: its SHA-256 differs.*removed from the Hub cache"):
        create_model("hf-hub:vizoo-test/flipped", cache_dir=cache)
    assert not weights.exists()


def test_unregistered_architecture(exports, tmp_path):
    _, folder, _, _ = exports["nat_mini"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architecture"] = "nat_mimi"
    (bad / "config.json").write_text(json.dumps(config))
    for call in (lambda: create_model(f"local-dir:{bad}"), lambda: verify_folder(bad)):
        with pytest.raises(ValueError, match=r"unknown model 'nat_mimi'. Did you mean 'nat_mini'.*import vizoo"):
            call()
    populate_hub_cache(tmp_path / "cache", "vizoo-test/unknown", bad)
    with pytest.raises(ValueError, match="import vizoo"):
        create_model("hf-hub:vizoo-test/unknown", cache_dir=tmp_path / "cache")


def test_weights_of_another_variant(exports, tmp_path):
    _, folder, _, _ = exports["nat_mini"]
    other = timm.create_model("nat_mini", embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=5)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    safetensors.torch.save_file(other.state_dict(), str(bad / "model.safetensors"))
    expected = r"shape mismatch.*stem\.conv1\.weight: file \[12, 3, 3, 3\] vs model \[8, 3, 3, 3\]"
    with pytest.raises(ValueError, match=expected):
        verify_folder(bad)


def test_missing_file_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the Hub cache.*HF_HUB_OFFLINE=1"):
        create_model("hf-hub:vizoo-test/never-downloaded", cache_dir=tmp_path / "empty")


def test_verify_refuses_pickles_and_a_changed_forward(exports, tmp_path):
    _, folder, _, _ = exports["test_vit"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle weights"):
        verify_folder(bad)
    (bad / "pytorch_model.bin").unlink()
    config = json.loads((bad / "config.json").read_text())
    config["vizoo"]["forward_check"]["first"][0] += 0.5
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="forward check"):
        verify_folder(bad)


def test_imagenet_models_get_synset_label_names(tmp_path):
    model = timm.create_model("nat_mini.in1k", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                              img_size=64)
    config = json.loads((export_model(model, tmp_path / "m") / "config.json").read_text())
    assert len(config["label_names"]) == 1000 and config["label_names"][0] == "n01440764"


def test_export_that_would_not_load_back_writes_nothing(tmp_path):
    model = timm.create_model("test_vit", img_size=64, embed_dim=32, num_heads=2)
    del model._model_args["embed_dim"]  # as if built by hand: timm did not record this constructor argument
    with pytest.raises(ValueError, match=r"does not load back.*shape mismatch.*pass them as model_args"):
        export_model(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    export_model(model, tmp_path / "m", model_args={"embed_dim": 32})
    verify_folder(tmp_path / "m")

"""`vizoo hub export|verify` from each kind of source, and hub names accepted by vizoo's Lightning module and probe."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch
from hub_testlib import NUM_CLASSES

from vizoo.cli import main as vizoo_main
from vizoo.hub import create_model
from vizoo.hub.cli import main as hub_main

VIT_KWARGS = {"img_size": 64}
NAMES = [f"digit{i}" for i in range(NUM_CLASSES)]


def _lightning_checkpoint(path, ema: bool):
    """A `vizoo fit` checkpoint written by Lightning itself from vizoo.train's ImageClassifier when it imports,
    else the documented layout by hand. Returns (raw weights, EMA weights or {})."""
    try:
        import lightning as L

        from vizoo.train.module import ImageClassifier
    except ImportError:
        ImageClassifier = None
    if ImageClassifier is not None:
        module = ImageClassifier(model_name="test_vit", num_classes=NUM_CLASSES, model_kwargs=VIT_KWARGS,
                                 class_names=NAMES, ema_decay=0.9 if ema else None)
        if ema:  # make the EMA copy differ from the raw weights
            with torch.no_grad():
                for p in module.ema.module.parameters():
                    p.add_(0.01)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.strategy.connect(module)
        trainer.save_checkpoint(path)
        raw = module.model.state_dict()
        return raw, (module.ema.module.state_dict() if ema else {})
    model = timm.create_model("test_vit", num_classes=NUM_CLASSES, **VIT_KWARGS)
    hparams = {"model_name": "test_vit", "num_classes": NUM_CLASSES, "model_kwargs": VIT_KWARGS, "class_names": NAMES}
    raw = model.state_dict()
    emas = {k: v + 0.01 if v.is_floating_point() else v for k, v in raw.items()} if ema else {}
    state_dict = {f"model.{k}": v for k, v in raw.items()}
    state_dict.update({f"ema.module.{k}": v for k, v in emas.items()})
    torch.save({"state_dict": state_dict, "hyper_parameters": hparams, "epoch": 4, "global_step": 120}, path)
    return raw, emas


def _assert_same_weights(folder, expected):
    got = safetensors.torch.load_file(str(folder / "model.safetensors"))
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_export_lightning_checkpoint_raw_and_ema(tmp_path, capsys):
    raw, emas = _lightning_checkpoint(tmp_path / "last.ckpt", ema=True)
    hub_main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "raw"), "--tag", "digits_ft",
              "--metrics", '{"val/acc": 0.91}'])
    hub_main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "ema"), "--ema"])
    _assert_same_weights(tmp_path / "raw", raw)
    _assert_same_weights(tmp_path / "ema", emas)
    config = json.loads((tmp_path / "raw" / "config.json").read_text())
    assert config["architecture"] == "test_vit" and config["label_names"] == NAMES
    assert config["pretrained_cfg"]["tag"] == "digits_ft" and config["model_args"]["num_classes"] == NUM_CLASSES
    card = (tmp_path / "raw" / "README.md").read_text()
    assert "vizoo fit" in card and "epoch" in card and "| val/acc | 0.91 |" in card
    ema_config = json.loads((tmp_path / "ema" / "config.json").read_text())
    assert "EMA weights" in ema_config["vizoo"]["source"] and ema_config["pretrained_cfg"]["tag"] == "vizoo_fit"
    vizoo_main(["hub", "verify", str(tmp_path / "ema")])
    assert "OK" in capsys.readouterr().out


def test_export_lightning_checkpoint_without_ema(tmp_path, capsys):
    _lightning_checkpoint(tmp_path / "last.ckpt", ema=False)
    with pytest.raises(SystemExit):
        hub_main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "ema"), "--ema"])
    assert "no EMA weights" in capsys.readouterr().err
    assert not (tmp_path / "ema").exists()


def test_export_name_with_checkpoint_file(tmp_path, example_input):
    torch.manual_seed(3)
    model = timm.create_model("test_vit", num_classes=NUM_CLASSES, **VIT_KWARGS).eval()
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    hub_main(["export", "test_vit", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "w.safetensors"),
              "--model-kwargs", json.dumps(dict(VIT_KWARGS, num_classes=NUM_CLASSES))])
    loaded = create_model(f"local-dir:{tmp_path / 'out'}").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(example_input), model(example_input), rtol=0, atol=0)


def test_export_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        hub_main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "checkpoint file not found" in capsys.readouterr().err
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(SystemExit):
        hub_main(["export", str(tmp_path / "plain.pth"), str(tmp_path / "out")])
    assert "not a `vizoo fit` checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hub_main(["export", "nat_mimi", str(tmp_path / "out")])
    assert "Did you mean 'nat_mini'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lightning_module_and_probe_accept_hub_names(exports):
    model, folder, x, expected = exports["nat_mini"]
    try:
        from vizoo.train.module import ImageClassifier
    except ImportError:
        pytest.skip("vizoo.train.module not available")
    module = ImageClassifier(model_name=f"local-dir:{folder}", pretrained=True, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)

    from vizoo.probe.features import BackboneSpec, create_backbone

    backbone = create_backbone(BackboneSpec(model=f"local-dir:{folder}"))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model.forward_head(model.forward_features(x),
                                                                              pre_logits=True), rtol=1e-5, atol=1e-6)


def test_vizoo_convert_runs_the_hub_cli_convert_command(capsys):
    """`vizoo convert` reaches vizoo.hub.cli.convert_main through the top-level dispatcher."""
    with pytest.raises(SystemExit) as e:
        vizoo_main(["convert", "--help"])
    assert e.value.code == 0 and "usage: vizoo convert" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        vizoo_main(["convert", "--model", "nat_mini", "--checkpoint", "x.pth", "--out", "o", "--model-kwargs", "[1]"])
    assert e.value.code == 2 and "must be a JSON object" in capsys.readouterr().err

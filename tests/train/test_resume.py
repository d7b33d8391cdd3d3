"""`vizoo fit` reliability: a killed run resumed with `--ckpt_path last` ends exactly where an uninterrupted run
ends; resuming never silently drops an option; bad input is a one-line error and leaves no empty run folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vizoo.cli import main

CONFIG = """\
seed_everything: 0
run_name: tiny
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 3
  limit_train_batches: 3
  limit_val_batches: 1
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_model_summary: false
  enable_progress_bar: false
model:
  model_name: vit_tiny_patch16_224
  model_kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}
  drop_path_rate: 0.1
  lr: 2.0e-3
  warmup_epochs: 1
data:
  dataset: digits
  image_size: 16
  batch_size: 16
  augment: true
  hflip: 0.5
  color_jitter: 0.0
"""

KILLER = """\
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAtEpoch(Callback):
    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final checkpoint: a real kill
"""


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIZOO_TRACEBACK", raising=False)
    return tmp_path


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def _versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "logs" / "tiny").glob("version_*"))


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_killed_run_resumes_exactly(run_dir):
    main(["fit", "-c", "tiny.yaml", "--run_name", "straight"])
    straight = _weights(run_dir / "logs/straight/version_0/checkpoints/last.ckpt")

    (run_dir / "killer.py").write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=f"{run_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    killed = subprocess.run(
        [sys.executable, "-m", "vizoo.cli", "fit", "-c", "tiny.yaml",
         "--trainer.callbacks+=killer.KillAtEpoch"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _weights(run_dir / "logs/tiny/version_0/checkpoints/last.ckpt")["epoch"] == 1  # two epochs were done

    main(["fit", "-c", "tiny.yaml", "--ckpt_path", "last"])
    resumed = _weights(run_dir / "logs/tiny/version_1/checkpoints/last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (straight["epoch"], straight["global_step"]) == (2, 9)
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    opt_a, opt_b = straight["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    assert straight["lr_schedulers"] == resumed["lr_schedulers"]


def test_last_without_a_checkpoint_is_refused(run_dir, capsys):
    line = _fail(["fit", "-c", "tiny.yaml", "--ckpt_path", "last"], capsys)
    assert "--ckpt_path last: no last.ckpt under logs/tiny/version_*/checkpoints/" in line
    assert not (run_dir / "logs").exists()


@pytest.fixture
def trained(run_dir):
    main(["fit", "-c", "tiny.yaml", "--trainer.max_epochs", "1"])
    return run_dir / "logs/tiny/version_0/checkpoints/last.ckpt"


def test_changed_hparams_are_refused_on_resume(trained, run_dir, capsys):
    line = _fail(["fit", "-c", "tiny.yaml", "--ckpt_path", str(trained), "--model.lr", "0.5",
                  "--model.model_kwargs", "{img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}"],
                 capsys)
    assert "model.lr: given 0.5, checkpoint 0.002" in line
    assert "model.model_kwargs" in line and "--allow_hparam_changes true" in line
    assert _versions(run_dir) == ["version_0"]


def test_allowed_hparam_change_takes_effect(trained, run_dir):
    main(["fit", "-c", "tiny.yaml", "--ckpt_path", str(trained), "--model.lr", "0.5",
          "--allow_hparam_changes", "true", "--trainer.max_epochs", "2"])
    ckpt = _weights(run_dir / "logs/tiny/version_1/checkpoints/last.ckpt")
    assert ckpt["hyper_parameters"]["lr"] == 0.5 and ckpt["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_is_one_line_error(trained, run_dir, capsys, damage):
    data = trained.read_bytes()
    bad = run_dir / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(4096))
    for command in ("fit", "test"):
        line = _fail([command, "-c", "tiny.yaml", "--ckpt_path", str(bad)], capsys)
        assert line.startswith(f"vizoo: error: cannot read checkpoint {bad}")
    assert _versions(run_dir) == ["version_0"]


def test_predict_refuses_to_clobber_and_logs_no_run(trained, run_dir, capsys):
    from PIL import Image

    images = run_dir / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(images / f"{i}.png")
    (run_dir / "predictions.csv").write_text("mine\n")
    args = ["predict", "-c", "tiny.yaml", "--ckpt_path", str(trained), "--data.predict_dir", str(images)]
    line = _fail(args, capsys)
    assert "predictions.csv exists" in line and "--overwrite true" in line
    assert (run_dir / "predictions.csv").read_text() == "mine\n"
    main(args + ["--predictions_file", "out.csv"])
    assert len((run_dir / "out.csv").read_text().splitlines()) == 4
    assert _versions(run_dir) == ["version_0"]  # predict writes no run folder


def test_bad_config_and_device_are_one_line_errors(run_dir, capsys):
    (run_dir / "bad.yaml").write_text("trainer: [1, 2\n")
    assert "bad.yaml" in _fail(["fit", "-c", "bad.yaml"], capsys)
    line = _fail(["fit", "-c", "tiny.yaml", "--trainer.accelerator", "gpu"], capsys)
    assert line.startswith("vizoo: error: trainer settings:") and "gpu" in line
    assert not (run_dir / "logs").exists()


def test_failed_run_leaves_no_empty_version_folder(run_dir, capsys):
    (run_dir / "empty").mkdir()
    line = _fail(["fit", "-c", "tiny.yaml", "--data.dataset", "folder", "--data.root", "empty"], capsys)
    assert "vizoo: error:" in line
    assert _versions(run_dir) == []


def test_remove_empty_run_keeps_runs_with_results(tmp_path):
    from vizoo.train.cli import remove_empty_run

    empty, kept = tmp_path / "version_0", tmp_path / "version_1"
    for folder in (empty, kept):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.yaml").write_text("x: 1\n")
    (kept / "metrics.csv").write_text("step\n1\n")
    assert remove_empty_run(empty) and not empty.exists()
    assert not remove_empty_run(kept) and (kept / "metrics.csv").exists()


def test_help_shows_no_lightning_warning():
    out = subprocess.run([sys.executable, "-m", "vizoo.cli", "fit", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "args parameter" not in out.stderr and "--allow_hparam_changes" in out.stdout
    assert textwrap.dedent(out.stderr).strip() == ""


def test_export_carries_the_training_data_config_and_no_borrowed_license(trained, run_dir):
    import timm
    from timm.data import resolve_model_data_config

    main(["hub", "export", str(trained), "plain"])
    main(["hub", "export", str(trained), "licensed", "--license", "mit"])
    plain = json.loads((run_dir / "plain/config.json").read_text())["pretrained_cfg"]
    model_cfg = resolve_model_data_config(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    assert plain["input_size"] == [3, 16, 16]  # the size trained at, not the architecture's 224
    assert plain["crop_pct"] == 1.0  # the embedded digits' evaluation crop
    assert plain["mean"] == list(model_cfg["mean"]) and plain["std"] == list(model_cfg["std"])
    assert "license" not in plain  # vit_tiny's apache-2.0 belongs to Google's weights, not these
    licensed = json.loads((run_dir / "licensed/config.json").read_text())["pretrained_cfg"]
    assert licensed["license"] == "mit"

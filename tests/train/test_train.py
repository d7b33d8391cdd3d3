"""End-to-end tests of the Lightning CLI training path on the embedded digits (tiny model, CPU)."""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vizoo.train import ImageClassifier
from vizoo.train.cli import cli_main
from vizoo.train.module import warmup_cosine

TINY = [
    "--model.model_name=test_vit",
    '--model.model_kwargs={"img_size": 16, "patch_size": 4}',
    "--data.dataset=digits",
    "--data.image_size=16",
    "--data.batch_size=32",
    "--trainer.accelerator=cpu",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--seed_everything=0",
]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_unknown_model_fails_at_once_with_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'test_vti'.*Did you mean 'test_vit"):
        ImageClassifier(model_name="test_vti")


def test_fit_test_predict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = TINY + ["--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--run_name=demo"]
    cli = cli_main(["fit", *args, "--model.ema_decay=0.9", "--model.mixup=0.2", "--model.warmup_epochs=0.5"])
    assert cli.trainer.global_step == 8
    run = tmp_path / "logs" / "demo" / "version_0"
    rows = read_metrics(run)
    assert any(r.get("val/acc") for r in rows) and any(r.get("val_ema/acc") for r in rows)
    assert any(v for r in rows for k, v in r.items() if k.startswith("lr-AdamW"))
    last = run / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert torch.load(last, weights_only=False)["hyper_parameters"]["class_names"][3] == "3"
    assert list((tmp_path / "logs" / "demo").glob("version_0/events.out.tfevents*"))

    test = cli_main(["test", *TINY, "--run_name=demo", f"--ckpt_path={last}"])
    acc = test.trainer.callback_metrics["test/acc"].item()
    assert 0.0 <= acc <= 1.0

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(images / f"{i}.png")
    cli_main(["predict", *TINY, "--run_name=demo", f"--ckpt_path={last}", f"--data.predict_dir={images}"])
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["class_name"] == r["class_index"] for r in rows)  # digit names are their indices
    assert all(0.0 < float(r["confidence"]) <= 1.0 for r in rows)


def _vizoo(*args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "vizoo.cli", *args], cwd=cwd, **kwargs)


@pytest.mark.slow
def test_resume_after_kill_continues_from_saved_step(tmp_path, monkeypatch):
    """Kill a running `vizoo fit` with SIGKILL, then resume from last.ckpt: training continues at its step."""
    common = TINY + ["--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--run_name=r"]
    proc = _vizoo("fit", *common, "--trainer.max_epochs=100", cwd=tmp_path,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "logs" / "r" / "version_0" / "checkpoints" / "last.ckpt"
    saved = 0
    deadline = time.time() + 240
    try:
        while saved < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                saved = torch.load(last, weights_only=False)["global_step"]
            except Exception:  # not written yet, or caught mid-write
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert saved >= 4, "no checkpoint was written before the deadline"
    saved = torch.load(last, weights_only=False)["global_step"]
    extra = 3
    monkeypatch.chdir(tmp_path)
    cli = cli_main([*common, "--trainer.max_epochs=100", f"--trainer.max_steps={saved + extra}"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last))
    assert cli.trainer.global_step == saved + extra
    rows = read_metrics(Path(cli.trainer.logger.log_dir))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss_step")})
    assert len(steps) == extra and steps[0] >= saved, steps


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_sync_metrics(tmp_path, monkeypatch):
    """The same config on 2 gloo ranks: both finish, and the synced val/acc equals a 1-process validation."""
    args = TINY + ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--run_name=ddp"]
    proc = _vizoo("fit", *args, "--trainer.devices=2", "--trainer.strategy=ddp", cwd=tmp_path,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    run = tmp_path / "logs" / "ddp" / "version_0"
    ddp_acc = [float(r["val/acc"]) for r in read_metrics(run) if r.get("val/acc")][-1]
    last = run / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    single = cli_main(["validate", *TINY, "--run_name=ddp_check", f"--ckpt_path={last}"])
    assert single.trainer.callback_metrics["val/acc"].item() == pytest.approx(ddp_acc, abs=1e-6)


def test_fit_with_channels_last_checkpointing_bf16_and_drop_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main([
        "fit", *TINY, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.precision=bf16-mixed", "--model.channels_last=true", "--model.grad_checkpointing=true",
        "--model.drop_path_rate=0.1", "--model.cutmix=1.0", "--run_name=opts",
    ])
    model = cli.model.model
    assert cli.trainer.global_step == 2
    assert model.grad_checkpointing and model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert torch.isfinite(torch.tensor(cli.trainer.callback_metrics["train/loss_epoch"].item()))

"""End to end: `vizoo fit -c configs/scanpath/oat_synthetic.yaml` (shortened) then `vizoo scanpath evaluate|predict`;
a short run on synthetic data must beat every baseline on held-out scenes. Also the CLI's config detection,
its errors, `synthesize` and the benchmark entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vizoo.scanpath.bench import main as bench_main
from vizoo.scanpath.cli import main as scanpath_main
from vizoo.scanpath.data import load_scenes
from vizoo.train.cli import cli_main, names_model_class

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "scanpath" / "oat_synthetic.yaml")

# The recipe as it is (a world whose searchers are guided more by shape than by colour, with a strong
# saccade-length cost; many scenes with one searcher each), shortened to 6 epochs, keeping the checkpoint with
# the best validation sequence score; on the CPU so that the run is the same everywhere.
SHORT = [
    "--model.init_args.monitor=val/sequence_score", "--model.init_args.monitor_mode=max",
    "--trainer.max_epochs=6", "--trainer.accelerator=cpu", "--trainer.enable_model_summary=false", "--run_name=short",
]
FLOOR = {"sequence_score": 0.42, "behavioural_error": 0.40}  # measured: 0.444 and 0.326


def test_config_detection_keeps_image_configs_on_image_classifier():
    assert names_model_class(["fit", "-c", CONFIG])
    assert names_model_class(["fit", "--model.class_path=vizoo.scanpath.ScanpathModule"])
    assert not names_model_class(["fit", "-c", str(ROOT / "configs" / "demo" / "digits.yaml")])
    assert not names_model_class(["fit", "--model.model_name=test_vit"])


@pytest.fixture
def one_thread():
    """One intra-op thread: the same arithmetic (and so the same trained model) on every machine, and no
    thread spinning when CI shares its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_training_beats_every_baseline(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "-c", CONFIG, *SHORT])
    ckpt = tmp_path / "logs" / "short" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    scanpath_main(["evaluate", "--checkpoint", str(ckpt), "--out", "ev", "--plots", "2"])
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    methods = report["methods"]
    assert report["num_scenes"] == 225 and set(methods) == {"OAT", "random", "centre", "similarity"}
    oat = methods["OAT"]
    for name in ("random", "centre", "similarity"):
        assert oat["sequence_score"] > methods[name]["sequence_score"], (name, methods)
        assert oat["behavioural_error"] < methods[name]["behavioural_error"], (name, methods)
    assert oat["sequence_score"] >= FLOOR["sequence_score"] and oat["behavioural_error"] <= FLOOR["behavioural_error"]
    assert "| OAT |" in (tmp_path / "ev" / "metrics.md").read_text()
    assert len(list((tmp_path / "ev" / "plots").glob("*.png"))) == 2

    scanpath_main(["predict", "--checkpoint", str(ckpt), "--out", "pred", "--samples", "3", "--plots", "1"])
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(predictions) == 225
    assert all(len(p) == 3 and all(1 <= len(s) <= 12 for s in p) for p in predictions.values())


def test_cli_errors_and_synthesize(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        scanpath_main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")])
    fake = tmp_path / "image.ckpt"
    torch.save({"hyper_parameters": {"model_name": "resnet18"}, "state_dict": {}}, fake)
    with pytest.raises(ValueError, match="not a `vizoo fit` checkpoint of a ScanpathModule"):
        scanpath_main(["evaluate", "--checkpoint", str(fake), "--out", str(tmp_path / "o")])
    from vizoo.cli import main as vizoo_main

    vizoo_main(["scanpath", "synthesize", "--out", str(tmp_path / "world"), "--num-scenes", "3", "--seed", "2"])
    assert [s.scene_id for s in load_scenes(tmp_path / "world")] == [f"synthetic-2-{i}" for i in range(3)]


def test_bench_entry_point_on_cpu(capsys):
    bench_main(["--device", "cpu", "--batch-size", "2", "--objects", "4", "--max-length", "2", "--crop-size", "32",
                "32", "--warmup", "0", "--iters", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["what"] for r in rows] == ["inference (greedy)", "train step"]
    assert all(r["scanpaths_per_s"] > 0 for r in rows)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            bench_main(["--device", "cuda"])

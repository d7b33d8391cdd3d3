"""`vizoo probe`: outputs, layer-wise and low-shot modes, config files, and errors on bad input."""

import json
from pathlib import Path

import pytest
import yaml

from vizoo.probe import cli
from vizoo.probe.demo import DEMO_YAML

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--model",
    "vit_tiny_patch16_224",
    "--pretrained",
    "false",
    "--model_kwargs",
    '{"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}',
    "--dataset",
    "shapes",
    "--dataset_kwargs",
    '{"num_samples": 36}',
    "--image_size",
    "16",
    "--train.epochs",
    "2",
    "--train.lrs",
    "[1e-2]",
    "--progress",
    "false",
]


def run(tmp_path, *extra):
    return cli.main(
        TINY + ["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *extra]
    )


def test_layerwise_run_writes_table_json_and_png(tmp_path, capsys):
    report = run(tmp_path, "--heads", '[linear, "ep:num_queries=4"]', "--layers", "[-1, 0]")
    rows = [(r["layer"], r["label"]) for r in report["results"]]
    assert rows == [(0, "linear"), (0, "ep(num_queries=4)"), (1, "linear"), (1, "ep(num_queries=4)")]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["meta"]["layers"] == [0, 1] and saved["meta"]["norm"] is False
    assert saved["meta"]["split_sizes"] == {"train": 36, "val": 36, "test": 36}
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "ep(num_queries=4)" in out and "top-1" in out and "MACs" in out


def test_low_shot_gives_one_result_per_seed(tmp_path):
    report = run(tmp_path, "--heads", "[linear]", "--k_shot", "2", "--seeds", "[0, 1]")
    assert [(r["seed"], r["num_train"]) for r in report["results"]] == [(0, 12), (1, 12)]  # 6 classes x 2


def test_every_shipped_config_parses_and_the_demo_is_the_default():
    demo = cli.load_config(REPO / "configs" / "probe" / "demo.yaml")
    assert demo == cli.load_config(DEMO_YAML) == cli.resolve_settings([])[0]
    assert demo["train"]["lrs"] == [3e-3, 3e-2] and len(demo["heads"]) == 8
    for name in ("mae_linear", "ep", "dinov2_linear"):
        job = cli.job_from_settings(cli.load_config(REPO / "configs" / "probe" / f"{name}.yaml"))
        assert job.train.epochs in (10, 90) and job.heads


def test_options_without_model_apply_to_the_main_job():
    demo = cli.load_config(DEMO_YAML)
    settings, explicit = cli.resolve_settings(["--train.device", "cpu", "--train.epochs", "2"])
    assert settings["model"] == demo["model"] and settings["heads"] == demo["heads"] and not explicit
    assert settings["train"]["device"] == "cpu" and settings["train"]["epochs"] == 2
    assert settings["train"]["lrs"] == demo["train"]["lrs"]  # dotted overrides keep the rest of the section
    settings, _ = cli.resolve_settings(["--model", "resnet18"])
    assert settings["model"] == "resnet18" and settings["heads"] != demo["heads"]


def test_print_config_is_a_config_that_runs_the_same_job(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--train.epochs", "3", "--print_config"])
    assert info.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    settings, _ = cli.resolve_settings(["-c", str(printed)])
    assert settings == cli.resolve_settings(["--train.epochs", "3"])[0]


def _error(tmp_path, capsys, *extra):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, *extra)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_unknown_head_lists_the_valid_ones(tmp_path, capsys):
    err = _error(tmp_path, capsys, "--heads", "[linear, epp]")
    assert "unknown probe head 'epp'" in err and "Did you mean 'ep'" in err and "simpool" in err


def test_k_shot_larger_than_a_class(tmp_path, capsys):
    err = _error(tmp_path, capsys, "--k_shot", "7")
    assert "k=7 images per class is larger than the smallest class" in err


def test_prefix_head_on_a_model_without_prefix_tokens(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(
            [
                "--model",
                "nat_mini",
                "--pretrained",
                "false",
                "--model_kwargs",
                '{"embed_dim": 8, "depths": [1], "num_heads": [1], "kernel_size": 3}',
                "--dataset",
                "shapes",
                "--dataset_kwargs",
                '{"num_samples": 12}',
                "--image_size",
                "16",
                "--heads",
                "[linear:pool=cls]",
                "--train.epochs",
                "1",
                "--progress",
                "false",
                "--cache_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path),
            ]
        )
    err = capsys.readouterr().err
    assert "needs prefix tokens" in err and "pool='avg'" in err


def _folder(root: Path, classes: dict[str, int]):
    from PIL import Image

    for split in ("train", "val"):
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(root / split / name / f"{i}.png")


def test_one_class_and_empty_datasets(tmp_path, capsys):
    _folder(tmp_path / "one", {"cat": 3})
    err = _error(tmp_path, capsys, "--dataset", "folder", "--root", str(tmp_path / "one"))
    assert "needs at least 2" in err
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    err = _error(tmp_path, capsys, "--dataset", "folder", "--root", str(tmp_path / "empty"))
    assert "no images" in err or "empty" in err


def test_incompatible_cache_given_explicitly(tmp_path, capsys):
    run(tmp_path, "--heads", "[linear]")
    train_cache = next(p for p in (tmp_path / "cache").iterdir() if "-train-" in p.name)
    with pytest.raises(SystemExit):
        cli.main(TINY + ["--norm", "true", "--cache_dir", str(train_cache), "--output_dir", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert "written for different inputs" in err and "norm" in err


def test_unknown_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"modle": "x"}))
    with pytest.raises(SystemExit):
        cli.main(["-c", str(bad)])
    err = capsys.readouterr().err
    assert "modle" in err and err.count("\n") == 1


def test_unknown_model_suggests_close_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", "nat_minni", "--progress", "false", "--output_dir", str(tmp_path)])
    assert "unknown model 'nat_minni'. Did you mean 'nat_mini'?" in capsys.readouterr().err


def test_one_value_where_a_list_is_expected_is_a_list_of_one():
    settings, _ = cli.resolve_settings(["--model", "resnet18", "--heads", "linear", "--layers", "-1",
                                        "--train.lrs", "0.01", "--seeds", "3", "--inputs", "cls1"])
    job = cli.job_from_settings(settings)
    assert [h.label for h in job.heads] == ["linear"] and job.layers == [-1] and job.inputs == ["cls1"]
    assert job.train.lrs == [0.01] and job.seeds == [3]

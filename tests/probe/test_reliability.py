"""`vizoo probe` reliability: damaged feature caches are reported by path and rebuilt (never used as they are);
outputs and numbers are checked before any work; another run's results are never replaced unless asked."""

import json
import os

import pytest
import safetensors.torch
import torch

from vizoo.probe import cli
from vizoo.probe.cache import MANIFEST_FILE, dataset_identity, extract_split, make_payload
from vizoo.probe.features import resolve_layers, weights_digest

from .test_cli import TINY, run


def _extract(model, dataset, root, **kwargs):
    layers = resolve_layers(model, [-1])
    payload = make_payload("vit_tiny_patch16_224", {"depth": 2}, weights_digest(model), "eval",
                           {"input_size": (3, 16, 16)}, layers, False, dataset_identity("tiny", "train", dataset))
    return extract_split(model, dataset, payload, layers, False, root, batch_size=8, shard_size=8, progress=False,
                         **kwargs)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def _nan_shard(path):
    tensors = safetensors.torch.load_file(str(path))
    name = next(k for k in tensors if k.startswith("tokens."))
    tensors[name][0, 0, 0] = float("nan")
    with safetensors.safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    # the checksum is updated too, so only the finiteness check can catch it
    from vizoo.hub.export import file_sha256

    path.with_suffix(".sha256").write_text(file_sha256(path))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "byte_flip_in_data": lambda p: _flip_byte(p, -3),  # still a valid safetensors file
    "nan_values": _nan_shard,
    "checksum_missing": lambda p: p.with_suffix(".sha256").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shard_is_reported_and_rebuilt(tiny_vit, tiny_images, tmp_path, capfd, damage):
    good = _extract(tiny_vit, tiny_images, tmp_path)
    shard = sorted(tmp_path.glob("*/shard-00001.safetensors"))[0]
    DAMAGE[damage](shard)
    rebuilt = []
    again = _extract(tiny_vit, tiny_images, tmp_path, on_shard=lambda i, p: rebuilt.append(i))
    assert rebuilt == [1]  # only the damaged shard is extracted again
    err = capfd.readouterr().err
    assert f"feature cache file {shard} is damaged" in err
    for layer in good.layers:
        assert torch.equal(again.tokens[layer], good.tokens[layer])
    assert torch.equal(again.labels, good.labels)


@pytest.mark.parametrize("content", ['{"version": 1, "key"', "[]", "\x00\x01"])
def test_damaged_manifest_is_reported_and_rebuilt(tiny_vit, tiny_images, tmp_path, capfd, content):
    good = _extract(tiny_vit, tiny_images, tmp_path)
    manifest = next(tmp_path.glob("*/" + MANIFEST_FILE))
    manifest.write_text(content)
    rebuilt = []
    again = _extract(tiny_vit, tiny_images, tmp_path, on_shard=lambda i, p: rebuilt.append(i))
    assert rebuilt == []  # the shards were fine: only the manifest is written again
    assert f"feature cache file {manifest} is damaged" in capfd.readouterr().err
    assert json.loads(manifest.read_text())["num_samples"] == len(good)
    assert torch.equal(again.tokens[good.layers[0]], good.tokens[good.layers[0]])


def _fail(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--image_size", "0", "image_size must be an integer >= 1, got 0"),
        ("--train.epochs", "0", "epochs must be an integer >= 1, got 0"),
        ("--train.lrs", "[.nan]", "lrs must be a non-empty list of finite numbers"),
        ("--train.weight_decay", ".inf", "weight_decay must be a finite number >= 0, got inf"),
        ("--extract_batch_size", "0", "extract_batch_size must be an integer >= 1, got 0"),
        ("--hflip", "1.5", "hflip must be a probability in [0, 1], got 1.5"),
        ("--train.device", "cuda:7", "cuda:7"),
        ("--train.device", "tpu", "device must be cpu, cuda or cuda:N"),
        ("--model_kwargs", "{bad", "model_kwargs"),
        ("--train.epochs", "two", "train.epochs"),
    ],
)
def test_bad_numbers_and_devices_fail_before_work(tmp_path, capsys, monkeypatch, option, value, message):
    import vizoo.probe.features as features

    monkeypatch.setattr(features, "create_model", lambda *a, **k: pytest.fail("built a model"), raising=False)
    monkeypatch.setattr("vizoo.hub.loading.create_model", lambda *a, **k: pytest.fail("built a model"))
    line = _fail(capsys, *TINY, "--output_dir", str(tmp_path / "out"), option, value)
    assert message in line
    assert not (tmp_path / "out").exists()


def test_unwritable_output_fails_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vizoo.hub.loading.create_model", lambda *a, **k: pytest.fail("built a model"))
    (tmp_path / "file").write_text("x")
    line = _fail(capsys, *TINY, "--output_dir", str(tmp_path / "file"))
    assert "is a file" in line
    line = _fail(capsys, *TINY, "--output_dir", str(tmp_path / "file" / "sub"))
    assert line.startswith("vizoo probe: error: cannot write results to")
    assert (tmp_path / "file").read_text() == "x"


def test_results_of_another_run_are_kept(tmp_path, capsys):
    run(tmp_path, "--heads", "[linear]")
    results = tmp_path / "out" / "results.json"
    first = results.read_text()
    run(tmp_path, "--heads", "[linear]")  # the same run again may replace its own results
    line = _fail(capsys, *TINY, "--heads", "[linear]", "--train.epochs", "1", "--output_dir", str(tmp_path / "out"),
                 "--cache_dir", str(tmp_path / "cache"))
    assert "holds the results of another run (settings that differ: train)" in line and "--overwrite" in line
    assert json.loads(results.read_text())["meta"]["settings"] == json.loads(first)["meta"]["settings"]
    run(tmp_path, "--heads", "[linear]", "--train.epochs", "1", "--overwrite", "true")
    assert json.loads(results.read_text())["meta"]["settings"]["train"]["epochs"] == 1


def test_a_variant_of_a_config_goes_to_its_own_folder(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        model="vit_tiny_patch16_224", pretrained=False,
        model_kwargs=dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2),
        dataset="shapes", dataset_kwargs=dict(num_samples=36), image_size=16, train=dict(epochs=2, lrs=[1e-2]),
        heads=["linear"], output_dir="res", cache_dir=str(tmp_path / "cache"), progress=False,
    )))
    cli.main(["-c", str(config)])
    cli.main(["-c", str(config), "--train.epochs", "1"])  # a variant: its own folder, the first results stay
    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("res"))
    assert len(folders) == 2 and folders[0] == "res" and folders[1].startswith("res-")
    assert json.loads((tmp_path / "res" / "results.json").read_text())["meta"]["settings"]["train"]["epochs"] == 2
    assert json.loads((tmp_path / folders[1] / "results.json").read_text())["meta"]["settings"]["train"]["epochs"] == 1

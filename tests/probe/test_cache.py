"""Feature cache: round trip, resume after a simulated kill without recomputation, key mismatch detection."""

import json

import pytest
import torch

from vizoo.probe.cache import (
    MANIFEST_FILE,
    cache_key,
    dataset_identity,
    extract_split,
    load_split,
    make_payload,
    storage_order,
)
from vizoo.probe.features import extract_tokens, resolve_layers, weights_digest


def _payload(model, dataset, layers, norm=False, transform="eval-transform"):
    identity = dataset_identity("tiny", "train", dataset)
    return make_payload(
        "vit_tiny_patch16_224",
        {"depth": 2},
        weights_digest(model),
        transform,
        {"input_size": (3, 16, 16)},
        layers,
        norm,
        identity,
    )


def _direct(model, dataset, layers, norm=False):
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return extract_tokens(model, images, layers, norm)


def test_round_trip_matches_direct_extraction(tiny_vit, tiny_images, tmp_path):
    layers = resolve_layers(tiny_vit, [-1, 0])
    assert layers == [0, 1]
    def extract(**kwargs):
        return extract_split(tiny_vit, tiny_images, _payload(tiny_vit, tiny_images, layers), layers, False,
                             tmp_path, batch_size=4, shard_size=8, progress=False, **kwargs)

    split = extract()
    direct = _direct(tiny_vit, tiny_images, layers)
    order = storage_order(22)  # rows are stored in a seeded random order of the split
    assert sorted(order.tolist()) == list(range(22)) and order.tolist() != list(range(22))
    assert len(split) == 22 and split.labels.tolist() == (order % 3).tolist()
    for layer, ref in zip(layers, direct):
        ref.tokens, ref.prefix = ref.tokens[order], ref.prefix[order]
        assert split.tokens[layer].dtype == torch.float16
        assert split.tokens[layer].shape == (22, 16, 32) and split.prefix[layer].shape == (22, 1, 32)
        torch.testing.assert_close(split.tokens[layer].float(), ref.tokens, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(split.prefix[layer].float(), ref.prefix, atol=2e-3, rtol=2e-3)
        assert split.grids[layer] == (4, 4)
    manifest = json.loads(next(tmp_path.glob("*/" + MANIFEST_FILE)).read_text())
    assert manifest["norm"] is False and manifest["layers"] == [0, 1] and len(manifest["shards"]) == 3
    # a second call loads the cache and computes nothing
    calls = []
    again = extract(on_shard=lambda i, p: calls.append(i))
    assert calls == [] and torch.equal(again.tokens[1], split.tokens[1])


def test_norm_changes_the_tokens(tiny_vit, tiny_images):
    plain, normed = (
        _direct(tiny_vit, tiny_images, [1], False)[0],
        _direct(tiny_vit, tiny_images, [1], True)[0],
    )
    assert not torch.allclose(plain.tokens, normed.tokens)
    ref = tiny_vit.norm(torch.cat([plain.prefix, plain.tokens], 1))[:, 1:]
    torch.testing.assert_close(normed.tokens, ref)


class Killed(RuntimeError):
    pass


def test_resume_after_kill_keeps_shards_and_equals_uninterrupted(tiny_vit, tiny_images, tmp_path):
    layers = [1]
    payload = _payload(tiny_vit, tiny_images, layers)

    def crash_after_two(i, path):
        if i == 1:
            raise Killed("simulated kill")

    with pytest.raises(Killed):
        extract_split(
            tiny_vit,
            tiny_images,
            payload,
            layers,
            False,
            tmp_path / "a",
            batch_size=4,
            shard_size=5,
            progress=False,
            on_shard=crash_after_two,
        )
    (directory,) = list((tmp_path / "a").iterdir())
    assert not (directory / MANIFEST_FILE).exists()
    kept = {p.name: p.stat().st_mtime_ns for p in directory.glob("shard-*.safetensors")}
    assert sorted(kept) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    computed = []
    resumed = extract_split(
        tiny_vit,
        tiny_images,
        payload,
        layers,
        False,
        tmp_path / "a",
        batch_size=4,
        shard_size=5,
        progress=False,
        on_shard=lambda i, p: computed.append(i),
    )
    assert computed == [2, 3, 4]  # 22 images in shards of 5: only the three missing shards
    assert {p: (directory / p).stat().st_mtime_ns for p in kept} == kept
    whole = extract_split(
        tiny_vit,
        tiny_images,
        payload,
        layers,
        False,
        tmp_path / "b",
        batch_size=4,
        shard_size=5,
        progress=False,
    )
    assert torch.equal(resumed.tokens[1], whole.tokens[1]) and torch.equal(resumed.labels, whole.labels)
    assert torch.equal(resumed.prefix[1], whole.prefix[1])


def test_incompatible_cache_is_never_reused(tiny_vit, tiny_images, tmp_path):
    layers = [1]
    first = _payload(tiny_vit, tiny_images, layers)
    extract_split(tiny_vit, tiny_images, first, layers, False, tmp_path, shard_size=50, progress=False)
    (directory,) = list(tmp_path.iterdir())
    # another transform (or norm, or weights) goes to another folder automatically ...
    other = _payload(tiny_vit, tiny_images, layers, norm=True, transform="other-transform")
    assert cache_key(other) != cache_key(first)
    split = extract_split(tiny_vit, tiny_images, other, layers, True, tmp_path, shard_size=50, progress=False)
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(split.tokens[1], load_split(directory).tokens[1])
    # ... and pointing at the first cache folder explicitly is a clear error naming what differs
    with pytest.raises(ValueError, match="different inputs.*norm.*transform"):
        extract_split(tiny_vit, tiny_images, other, layers, True, directory, progress=False)
    with pytest.raises(ValueError, match="does not match the wanted key"):
        load_split(directory, key=cache_key(other))


def test_other_weights_give_another_key(tiny_vit, tiny_images):
    import copy

    changed = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        changed.blocks[0].mlp.fc1.bias.add_(1e-3)
    assert weights_digest(changed) != weights_digest(tiny_vit)
    assert cache_key(_payload(changed, tiny_images, [1])) != cache_key(_payload(tiny_vit, tiny_images, [1]))


def test_empty_split_is_an_error(tiny_vit, tmp_path):
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    payload = make_payload("m", {}, "w", "t", {}, [1], False, dict(name="x", split="train"))
    with pytest.raises(ValueError, match="empty"):
        extract_split(tiny_vit, empty, payload, [1], False, tmp_path, progress=False)


def test_image_folder_identity_follows_the_files(tmp_path):
    from PIL import Image

    from vizoo.data import create_dataset

    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "train" / name / "a.png")
    first = dataset_identity("folder", "train", create_dataset("folder", "train", root=str(tmp_path)))
    Image.new("RGB", (8, 8), (200, 20, 30)).save(tmp_path / "train" / "cat" / "a.png")
    import os

    os.utime(tmp_path / "train" / "cat" / "a.png", ns=(1, 1))
    second = dataset_identity("folder", "train", create_dataset("folder", "train", root=str(tmp_path)))
    assert first["labels_sha"] == second["labels_sha"] and first["files_sha"] != second["files_sha"]

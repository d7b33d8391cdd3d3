"""Token sources: a cache streamed from disk gives the cached rows (each once per epoch, checked on read), and a
job that streams its cache trains and reports like one that holds it in memory."""

import pytest
import torch

from vizoo.probe.cache import DamagedCacheFile, dataset_identity, extract_split, load_split, make_payload
from vizoo.probe.features import resolve_layers, weights_digest
from vizoo.probe.sources import ShardStream


def _cache(model, dataset, root, shard_size=5):
    layers = resolve_layers(model, [-1, 0])
    payload = make_payload("vit_tiny_patch16_224", {"depth": 2}, weights_digest(model), "eval",
                           {"input_size": (3, 16, 16)}, layers, False, dataset_identity("tiny", "train", dataset))
    return extract_split(model, dataset, payload, layers, False, root, batch_size=8, shard_size=shard_size,
                         progress=False, load=False)


def _rows(batches):
    tokens = torch.cat([b[0]["1"] for b in batches])
    return tokens, torch.cat([b[1]["0"] for b in batches]), torch.cat([b[2] for b in batches])


def test_streamed_epochs_hold_every_row_once(tiny_vit, tiny_images, tmp_path):
    directory = _cache(tiny_vit, tiny_images, tmp_path)  # 22 rows in shards of 5, 5, 5, 5, 2
    split = load_split(directory)
    stream = ShardStream(directory, {"1": 1, "0": 0}, batch_size=4, shuffle=False, workers=2, prefetch=2)
    batches = list(stream)
    assert len(batches) == len(stream) == 6 and [len(b[2]) for b in batches] == [4, 4, 4, 4, 4, 2]
    tokens, prefix0, labels = _rows(batches)  # evaluation: the stored order
    assert torch.equal(tokens, split.tokens[1]) and torch.equal(prefix0, split.prefix[0])
    assert torch.equal(labels, split.labels)

    train = ShardStream(directory, {"1": 1, "0": 0}, batch_size=4, shuffle=True, seed=3, workers=2, prefetch=2)
    orders = []
    for epoch in range(2):
        train.sampler.set_epoch(epoch)
        batches = list(train)
        assert len(batches) == len(train) == 5 and all(len(b[2]) == 4 for b in batches)  # 22 // 4 full batches
        tokens, _, labels = _rows(batches)
        # every streamed row is a cached row with its own label, none twice
        where = [int(torch.nonzero((split.tokens[1] == t).all(-1).all(-1))[0]) for t in tokens]
        assert len(set(where)) == len(where) == 20 and torch.equal(split.labels[where], labels)
        orders.append(where)
    assert orders[0] != orders[1]  # shards and rows reshuffled per epoch


def test_a_damaged_shard_is_caught_when_streamed(tiny_vit, tiny_images, tmp_path):
    directory = _cache(tiny_vit, tiny_images, tmp_path)
    shard = directory / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(DamagedCacheFile, match="shard-00002.*SHA-256"):
        list(ShardStream(directory, {"1": 1}, batch_size=4, shuffle=False))


def test_a_streamed_job_trains_and_reports(tmp_path):
    from vizoo.probe.engine import TrainConfig
    from vizoo.probe.pipeline import ProbeJob, run_probe

    job = ProbeJob(
        model="vit_tiny_patch16_224",
        model_kwargs=dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2),
        pretrained=False,
        dataset="shapes",
        dataset_kwargs={"num_samples": 36},
        image_size=16,
        heads=["linear", "ep:num_queries=2"],
        train=TrainConfig(epochs=2, batch_size=8, lrs=[1e-3, 1e-2], device="cpu"),
        progress=False,
        cache_dir=str(tmp_path),
        stream=True,
    )
    results = run_probe(job)["results"]
    assert [r["label"] for r in results] == ["linear", "ep(num_queries=2)"]
    for r in results:
        assert r["streamed"] and r["val_count"] == 36 and r["test_count"] == 36
        assert len(r["sweep"]) == 2 and all(len(s["val_top1_per_epoch"]) == 2 for s in r["sweep"])

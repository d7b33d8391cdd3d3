"""The augmented protocol: frozen backbone every step, many heads, selection on validation; with augmentation off
it gives what the cached protocol gives (one engine, two token sources)."""

import pytest
import torch

from vizoo.probe.engine import HeadSpec, TrainConfig
from vizoo.probe.pipeline import ProbeJob, run_probe

TINY_VIT = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2)


def test_augmented_protocol_trains_heads_only(tmp_path):
    job = ProbeJob(
        model="vit_tiny_patch16_224",
        model_kwargs=dict(TINY_VIT),
        pretrained=False,
        dataset="shapes",
        dataset_kwargs={"num_samples": 24},
        image_size=16,
        protocol="augmented",
        layers=[-1, 0],
        heads=[HeadSpec("linear", {"pool": "cls"}), HeadSpec("ep", {"num_queries": 2})],
        train=TrainConfig(epochs=2, batch_size=8, lrs=[0.0, 1e-2]),
        progress=False,
        cache_dir=str(tmp_path),
        scale=(0.5, 1.0),
    )
    import vizoo.probe.pipeline as pipeline

    seen = {}
    original = pipeline.create_backbone

    def spy(spec):
        model = original(spec)
        seen["model"] = model
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    pipeline.create_backbone = spy
    try:
        report = run_probe(job)
    finally:
        pipeline.create_backbone = original
    results = report["results"]
    assert [(r["layer"], r["label"]) for r in results] == [
        (0, "linear(pool=cls)"),
        (0, "ep(num_queries=2)"),
        (1, "linear(pool=cls)"),
        (1, "ep(num_queries=2)"),
    ]
    for r in results:
        assert r["protocol"] == "augmented" and len(r["sweep"]) == 2
        assert all(len(s["val_top1_per_epoch"]) == 2 for s in r["sweep"])
        assert 0.0 <= r["test_top1"] <= r["test_top5"] <= 100.0 and r["top5_k"] == 5
        assert (r["val_count"], r["test_count"], r["world_size"]) == (24, 24, 1)
    model = seen["model"]
    assert not model.training  # the frozen backbone stayed in eval mode
    after = model.state_dict()
    assert all(torch.equal(after[k].cpu(), v) for k, v in seen["before"].items())  # and unchanged
    assert report["meta"]["split_sizes"] == {"train": 24, "val": 24, "test": 24}


def test_both_token_sources_give_the_same_results_without_augmentation(tmp_path):
    """The cache (tokens extracted once) and the backbone run every step on the same images in the same batches
    select the same head, lr and epoch and report the same metrics."""
    reports = {}
    for protocol in ("cached", "augmented"):
        job = ProbeJob(
            model="vit_tiny_patch16_224",
            model_kwargs=dict(TINY_VIT),
            pretrained=False,
            dataset="shapes",
            dataset_kwargs={"num_samples": 30},
            image_size=16,
            protocol=protocol,
            augment=False,
            heads=["linear", "ep:num_queries=2"],
            train=TrainConfig(epochs=3, batch_size=8, lrs=[1e-3, 3e-2], device="cpu"),
            progress=False,
            cache_dir=str(tmp_path),
        )
        torch.manual_seed(0)  # the same random backbone for both
        reports[protocol] = run_probe(job)["results"]
    keys = ("label", "lr", "best_epoch", "val_top1", "test_top1", "test_top5")
    for cached, augmented in zip(reports["cached"], reports["augmented"]):
        assert [cached[k] for k in keys] == [augmented[k] for k in keys]
        assert cached["val_loss"] == pytest.approx(augmented["val_loss"], rel=1e-4)
        per_epoch = [[s["val_top1_per_epoch"] for s in run["sweep"]] for run in (cached, augmented)]
        assert per_epoch[0] == per_epoch[1]

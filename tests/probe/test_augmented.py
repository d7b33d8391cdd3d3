"""The augmented protocol (Lightning): frozen backbone every step, many heads, selection on validation."""

import torch

from vizoo.probe.pipeline import ProbeJob, run_probe
from vizoo.probe.trainer import HeadSpec, TrainConfig

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

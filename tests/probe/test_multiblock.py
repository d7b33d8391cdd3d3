"""DINOv2 multi-block linear inputs (cached): widths D, 2D, 4D, 5D from one cache; exact concatenation."""

import pytest
import torch

from vizoo.heads import create_head
from vizoo.heads.linear import PlainLinear
from vizoo.probe.cache import load_split
from vizoo.probe.engine import HeadSpec, TrainConfig
from vizoo.probe.multiblock import InputSpec, concat_features
from vizoo.probe.pipeline import ProbeJob, run_probe

D = 16
VIT = dict(img_size=16, patch_size=4, depth=5, embed_dim=D, num_heads=2)  # 16 patches + a class token


def _job(tmp_path, **kw):
    base = dict(
        model="vit_tiny_patch16_224",
        model_kwargs=dict(VIT),
        pretrained=False,
        dataset="shapes",
        dataset_kwargs={"num_samples": 36},
        image_size=16,
        inputs=["cls1", "cls1+avg", "cls4", "cls4+avg"],
        norm=True,
        heads=[HeadSpec("plain_linear")],
        train=TrainConfig(epochs=2, batch_size=12, lrs=[1e-3, 1e-1], optimizer="sgd"),
        progress=False,
        cache_dir=str(tmp_path),
    )
    base.update(kw)
    return ProbeJob(**base)


def test_four_dinov2_inputs_train_from_one_cache(tmp_path):
    report = run_probe(_job(tmp_path))
    assert report["meta"]["layers"] == [1, 2, 3, 4]  # the last 4 of 5 blocks, cached once
    manifests = sorted(tmp_path.glob("*/manifest.json"))
    assert len(manifests) == 3  # train, val, test: one extraction each, shared by the four inputs
    assert len({r["train_time_s"] for r in report["results"]}) == 1  # and one training pass for all of them
    results = report["results"]
    assert [r["input"] for r in results] == ["cls1", "cls1+avg", "cls4", "cls4+avg"]
    assert [r["in_dim"] for r in results] == [D, 2 * D, 4 * D, 5 * D]
    classes = len(report["meta"]["classes"])
    for r in results:
        assert r["params"] == r["in_dim"] * classes + classes  # a bare Linear: no BatchNorm, no pooling
        assert r["layer"] == 4 and len(r["sweep"]) == 2 and r["label"] == f"plain_linear [{r['input']}]"
        assert 0.0 <= r["test_top1"] <= 100.0


def test_concatenation_equals_the_hand_built_one(tmp_path):
    run_probe(_job(tmp_path, inputs=["cls4+avg", "cls1"], train=TrainConfig(epochs=1, lrs=[1e-3])))
    (train_dir,) = [p.parent for p in tmp_path.glob("*-train-*/manifest.json")]
    split = load_split(train_dir)
    assert split.layers == [1, 2, 3, 4] and split.prefix[4].shape[1] == 1
    cls = [split.prefix[layer][:, 0].float() for layer in (1, 2, 3, 4)]
    avg = split.tokens[4].float().mean(dim=1)
    want = {
        "cls1": cls[3],
        "cls1+avg": torch.cat([cls[3], avg], 1),
        "cls4": torch.cat(cls, 1),
        "cls4+avg": torch.cat(cls + [avg], 1),
        "avg": avg,
    }
    for text, expected in want.items():
        spec = InputSpec.parse(text)
        got = concat_features(split, spec)
        assert got.shape == (len(split), spec.width(D)) and torch.equal(got, expected), text
    # block order is oldest first: the first D columns of cls4 are block 1's class token, not block 4's
    assert not torch.equal(want["cls4"][:, :D], cls[3])


def test_plain_linear_is_dinov2s_head():
    torch.manual_seed(0)
    head = create_head("plain_linear", 256, 100)
    assert isinstance(head, PlainLinear) and head.num_params() == 256 * 100 + 100
    assert torch.count_nonzero(head.classifier.bias) == 0
    assert abs(float(head.classifier.weight.detach().std()) - 0.01) < 5e-4
    x = torch.randn(3, 1, 256)
    head.train()
    assert torch.allclose(head(x), x[:, 0] @ head.classifier.weight.T + head.classifier.bias)  # no BN


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(inputs=["cls9"]), "out of range"),
        (dict(inputs=["cls"]), "not understood"),
        (dict(inputs=["cls1"], layers=[-1]), "either layers"),
        (dict(inputs=["cls1"], protocol="augmented"), "cached protocol"),
        (dict(inputs=["cls1"], heads=[HeadSpec("ep")]), "only linear heads"),
    ],
)
def test_bad_inputs_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_probe(_job(tmp_path, **kwargs))


def test_dinov2_config_is_the_real_protocol():
    from pathlib import Path

    from vizoo.probe import cli

    path = Path(__file__).resolve().parents[2] / "configs" / "probe" / "dinov2_linear.yaml"
    settings, _ = cli.resolve_settings(["-c", str(path), "--train.device", "cpu", "--inputs", "[cls4+avg, cls1]"])
    assert settings["inputs"] == ["cls4+avg", "cls1"]  # the command line overrides the file
    settings, _ = cli.resolve_settings(["-c", str(path), "--train.device", "cpu"])
    job = cli.job_from_settings(settings)
    assert [InputSpec.parse(s).width(768) for s in job.inputs] == [768, 1536, 3072, 3840]
    assert [h.name for h in job.heads] == ["plain_linear"] and job.norm and job.protocol == "cached"
    t = job.train
    assert (t.optimizer, t.weight_decay, t.warmup_epochs, t.epochs, t.scale_lr) == ("sgd", 0.0, 0.0, 10, True)
    assert len(t.lrs) == 13 and min(t.lrs) == 1e-5 and max(t.lrs) == 0.1

"""The probing benchmark runs (toy sizes on the CPU; no timing assertions)."""

import math

from vizoo.probe.bench import bench_cached_heads, bench_protocols


def test_bench_cached_heads_and_protocols_run():
    heads = bench_cached_heads(
        heads=("linear", "ep"),
        num_samples=32,
        num_tokens=16,
        dim=32,
        num_classes=10,
        batch_size=16,
        device="cpu",
    )
    assert set(heads["alone"]) == {"linear", "ep"}
    assert all(v > 0 and math.isfinite(v) for v in heads["alone"].values()) and heads["speedup"] > 0
    proto = bench_protocols(
        "vit_tiny_patch16_224",
        dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2),
        image_size=16,
        num_images=8,
        batch_size=4,
        num_classes=10,
        epochs=3,
        device="cpu",
    )
    assert proto["setting"]["num_tokens"] == 16 and proto["setting"]["dim"] == 32
    assert proto["cached_epoch_seconds"] > 0 and proto["augmented_epoch_seconds"] > 0
    assert proto["speedup_over_epochs"] > 0

"""The probing benchmark runs end to end (toy sizes on the CPU; no timing assertions)."""

import math

from vizoo.probe.bench import bench_heads, bench_protocols, bench_stream
from vizoo.probe.cache import load_split


def test_bench_heads_stream_and_protocols_run(tmp_path):
    heads = bench_heads(heads=("linear", "ep"), num_samples=32, num_tokens=16, dim=32, num_classes=10,
                        batch_size=16, device="cpu", amp=False, workdir=tmp_path)
    assert set(heads["alone_seconds"]) == {"linear", "ep"}
    assert all(v > 0 and math.isfinite(v) for v in heads["alone_seconds"].values()) and heads["speedup"] > 0
    assert len(load_split(tmp_path / "heads-train")) == 32  # a real cache: checksums and manifest hold

    stream = bench_stream(heads=("linear",), lrs=(0.1,), num_samples=40, num_tokens=16, dim=32, num_classes=10,
                          batch_size=16, readers=2, device="cpu", amp=False, workdir=tmp_path)
    assert stream["plain_read_gb_per_s"] > 0 and stream["fraction_of_plain_read"] > 0
    assert stream["imagenet_epochs_per_hour"] > 0

    proto = bench_protocols("vit_tiny_patch16_224", dict(img_size=16, patch_size=4, depth=1, embed_dim=32,
                            num_heads=2), image_size=16, num_images=8, batch_size=4, num_classes=10, epochs=3,
                            device="cpu")
    assert proto["setting"]["num_tokens"] == 16 and proto["setting"]["dim"] == 32
    assert proto["cached_epoch_seconds"] > 0 and proto["augmented_epoch_seconds"] > 0

"""The main job of ``vizoo probe`` (what runs with no arguments).

A transfer setting on real data that ships with the dependencies, no download: a small NAT backbone
(``nat_mini`` shrunk through model arguments) trained by the project on ``mnist5k`` (5,000 real MNIST digits)
with its own command, shipped in ``vizoo/assets/demo_backbone/`` (``config.json`` + ``model.safetensors``,
the layout of timm's ``save_for_hf`` so ``timm.create_model('local-dir:<path>')`` loads it), then frozen and
probed on scikit-learn's ``digits`` (1,797 real 8x8 UCI digits: another source, other writers, another
resolution). How the weights were made: ``configs/probe/README.md``.

``configs/probe/demo.yaml`` holds the same settings (a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_BACKBONE = ASSETS / "demo_backbone"

DEMO_CONFIG = dict(
    model="local-dir:{assets}/demo_backbone",
    dataset="digits",
    image_size=64,
    heads=[
        "linear",
        "ep:num_queries=8",
        "mhca:num_heads=4",
        "abmilp",
        "simpool",
        "esimpool:num_heads=4",
        "cbam",
        "dolg",
    ],
    lrs=[3e-3, 3e-2],
    epochs=15,
    batch_size=128,
    optimizer="adamw",
    weight_decay=0.0,
    warmup_epochs=1.0,
    norm=True,
    protocol="cached",
    output_dir="vizoo_probe/demo",
)


def expand_model_name(name: str) -> str:
    """Replace ``{assets}`` by the path of ``vizoo/assets`` (works from any working directory)."""
    return name.replace("{assets}", str(ASSETS))

"""The main job of ``vizoo probe`` (what runs with no arguments).

A transfer setting on real data that ships with the dependencies, no download: a small NAT backbone
(``nat_mini`` shrunk through model arguments) trained by the project on ``mnist5k`` (5,000 real MNIST digits)
with its own command, shipped in ``vizoo/assets/demo_backbone/`` (``config.json`` + ``model.safetensors``,
the layout of timm's ``save_for_hf`` so ``timm.create_model('local-dir:<path>')`` loads it), then frozen and
probed on scikit-learn's ``digits`` (1,797 real 8x8 UCI digits: another source, other writers, another
resolution). How the weights were made: ``configs/probe/README.md``.

Its settings are ``vizoo/assets/probe_demo.yaml`` (linked as ``configs/probe/demo.yaml``).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_BACKBONE = ASSETS / "demo_backbone"

DEMO_YAML = ASSETS / "probe_demo.yaml"  # the main job's settings (configs/probe/demo.yaml links to it)


def expand_model_name(name: str) -> str:
    """Replace ``{assets}`` by the path of ``vizoo/assets`` (works from any working directory)."""
    return name.replace("{assets}", str(ASSETS))

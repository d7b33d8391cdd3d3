"""Helpers for the Hub tests: one tiny model of each vizoo family plus a timm model, a Hub cache builder."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

import vizoo

# Tiny constructor kwargs per family module (the last component of the entrypoint's module). A family missing
# here falls back to its smallest variant at full size (slow): add it when a family lands.
TINY_BY_FAMILY = {
    "nat": [
        ("nat_mini", {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "img_size": 64}),
        ("dinat_iso_small", {"embed_dim": 16, "depth": 2, "num_heads": 1, "img_size": 64}),
    ],
    "inline": [],
    "overlock": [],
}
TIMM_MODEL = ("test_vit", {"img_size": 64})
NUM_CLASSES = 5
INPUT = (2, 3, 64, 64)


def family_of(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in vizoo.list_models():
        out.setdefault(family_of(name), []).append(name)
    return out


def _smallest(names: list[str]) -> str:
    """The variant with the fewest parameters (counted on the meta device, so nothing is allocated)."""
    sizes = {}
    for name in names:
        try:
            with torch.device("meta"):
                sizes[name] = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:  # noqa: BLE001  (an init that cannot run on meta: fall back to the name order)
            sizes[name] = float("inf")
    return min(sorted(sizes), key=sizes.get)


def tiny_models() -> list[tuple[str, dict]]:
    """(name, kwargs) for the timm model and at least one model of each vizoo family that exists."""
    specs = [TIMM_MODEL]
    for family, names in sorted(families().items()):
        known = [(n, kw) for n, kw in TINY_BY_FAMILY.get(family, []) if n in names]
        if not known:
            known = [(_smallest(names), {})]
        specs += known
    return [(n, dict(kw, num_classes=NUM_CLASSES)) for n, kw in specs]


TINY = tiny_models()
TINY_IDS = [n for n, _ in TINY]


def input_for(model: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    """A seeded batch at the model's size: ``img_size`` from the tiny kwargs, else its cfg's input size."""
    side = kwargs.get("img_size") or model.pretrained_cfg["input_size"][-1]
    return torch.randn(INPUT[0], 3, side, side, generator=torch.Generator().manual_seed(1))


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "c" * 40) -> None:
    """Lay out ``folder``'s files as a Hub cache entry (plain files; no blobs or symlinks are needed)."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    snap = entry / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)


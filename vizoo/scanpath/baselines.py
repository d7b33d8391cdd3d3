"""Baseline scanpaths for the evaluation table: random, centre-bias and greedy target-similarity object orders.

Each baseline visits objects in an order and stops on reaching the target (or after ``max_length``
fixations), so its scanpaths look like a searcher that always recognises the target:

* ``random``: a uniformly random order of the objects;
* ``centre``: objects by distance of their box centre from the image centre (nearest first), the centre bias
  of free viewing;
* ``similarity``: greedy target-similarity: from the image centre, repeatedly the unvisited object whose colour
  is most like the target's, the nearest one among equals. Colour similarity is the histogram intersection of
  the objects' hue histograms (12 bins over pixels with saturation above 0.35), which ignores shape and
  texture, as a colour-guided searcher would.

OAT's evaluation compares against random, centre-bias, saliency and RGB-similarity scanpaths that its repository
reads from files it does not ship; the three here are written from those names.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from vizoo.scanpath.data import Scene

BASELINES = ("random", "centre", "similarity")


def _until_target(order, target: int, max_length: int) -> list[int]:
    path = []
    for i in order:
        path.append(int(i))
        if i == target or len(path) == max_length:
            break
    return path


def random_order(scene: Scene, max_length: int, rng: np.random.Generator) -> list[int]:
    return _until_target(rng.permutation(len(scene.boxes)), scene.target, max_length)


def centre_order(scene: Scene, max_length: int, rng: np.random.Generator | None = None) -> list[int]:
    width, height = scene.size
    distance = np.linalg.norm(scene.centres - [width / 2, height / 2], axis=1)
    return _until_target(np.argsort(distance, kind="stable"), scene.target, max_length)


def hue_histograms(scene: Scene, bins: int = 12, min_saturation: float = 0.35) -> np.ndarray:
    """``[N, bins]`` normalised hue histograms of the objects' saturated pixels (all zeros if none)."""
    out = np.zeros((len(scene.boxes), bins))
    for i, (x0, y0, x1, y1) in enumerate(scene.boxes.astype(int)):
        rgb = scene.image[y0:y1, x0:x1].reshape(-1, 3).astype(np.float64) / 255
        high, low = rgb.max(1), rgb.min(1)
        chroma = high - low
        keep = (high > 0) & (chroma / np.maximum(high, 1e-12) > min_saturation)
        if not keep.any():
            continue
        r, g, b = rgb[keep].T
        c, h = chroma[keep], high[keep]
        hue = np.where(h == r, ((g - b) / c) % 6, np.where(h == g, (b - r) / c + 2, (r - g) / c + 4)) / 6
        counts = np.bincount(np.minimum((hue * bins).astype(int), bins - 1), minlength=bins)
        out[i] = counts / counts.sum()
    return out


def similarity_order(scene: Scene, max_length: int, rng: np.random.Generator | None = None) -> list[int]:
    hist = hue_histograms(scene)
    similarity = np.minimum(hist, hist[scene.target]).sum(1).round(6)
    width, height = scene.size
    position = np.array([width / 2, height / 2])
    visited = np.zeros(len(hist), bool)
    order = []
    while not visited.all():
        distance = np.linalg.norm(scene.centres - position, axis=1)
        candidates = np.flatnonzero(~visited)
        best = candidates[np.lexsort((distance[candidates], -similarity[candidates]))[0]]
        order.append(best)
        visited[best] = True
        position = scene.centres[best]
    return _until_target(order, scene.target, max_length)


BASELINE_FUNCTIONS: dict[str, Callable[..., list[int]]] = {
    "random": random_order, "centre": centre_order, "similarity": similarity_order,
}


def baseline_scanpaths(name: str, scenes: list[Scene], max_length: int, seed: int = 0) -> list[list[int]]:
    """One scanpath per scene from baseline ``name`` (see the module docstring)."""
    if name not in BASELINE_FUNCTIONS:
        from vizoo.utils import unknown_name_error

        raise unknown_name_error("baseline", name, BASELINES)
    rng = np.random.default_rng(seed)
    return [BASELINE_FUNCTIONS[name](scene, max_length, rng) for scene in scenes]

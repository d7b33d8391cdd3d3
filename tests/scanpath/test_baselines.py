"""Baselines on a hand-made scene whose orders can be written down."""
from __future__ import annotations

import numpy as np
import pytest

from vizoo.scanpath.baselines import baseline_scanpaths, centre_order, hue_histograms, similarity_order
from vizoo.scanpath.data import Scene

RED, DARK_RED, BLUE = (220, 40, 40), (110, 20, 20), (40, 80, 220)


def _scene(target: int) -> Scene:
    # five 10x10 objects in a row on a 100x20 grey image; colours: red, blue, dark red, blue, red (object 4)
    image = np.full((20, 100, 3), 200, np.uint8)
    colours = [RED, BLUE, DARK_RED, BLUE, RED]
    boxes = []
    for i, colour in enumerate(colours):
        x0 = 5 + 20 * i
        image[5:15, x0:x0 + 10] = colour
        boxes.append([x0, 5, x0 + 10, 15])
    return Scene(image, boxes, target)


def test_hue_histograms_ignore_brightness_and_grey():
    hist = hue_histograms(_scene(0))
    assert hist[0] == pytest.approx(hist[2]) and hist[0][0] == pytest.approx(1.0)  # red and dark red: hue 0
    assert hist[1] == pytest.approx(hist[3]) and not np.allclose(hist[0], hist[1])
    grey = Scene(np.full((20, 20, 3), 128, np.uint8), [[0, 0, 10, 10]], 0)
    assert hue_histograms(grey).sum() == 0  # no saturated pixel


def test_centre_and_similarity_orders_hand_case():
    scene = _scene(target=4)  # centres x = 10, 30, 50, 70, 90; the image centre is x = 50
    assert centre_order(scene, 10) == [2, 1, 3, 0, 4]  # ties (equal distance) keep index order
    # red objects (hue of the red target) first: 2 at the centre, then 0 and 4 tie at distance 40 (lower index first)
    assert similarity_order(scene, 10) == [2, 0, 4]
    assert similarity_order(scene, 2) == [2, 0]  # max_length cuts the scanpath


def test_random_baseline_is_seeded_and_stops_at_target():
    scenes = [_scene(t) for t in range(5)]
    first = baseline_scanpaths("random", scenes, 10, seed=3)
    assert first == baseline_scanpaths("random", scenes, 10, seed=3)
    assert all(p[-1] == s.target and len(set(p)) == len(p) for p, s in zip(first, scenes))
    with pytest.raises(ValueError, match="unknown baseline 'centr'"):
        baseline_scanpaths("centr", scenes, 10)

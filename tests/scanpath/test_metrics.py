"""Scanpath metrics on hand-computed cases, and MultiMatch against the multimatch-gaze package."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vizoo.scanpath.metrics import (
    MULTIMATCH_DIMS,
    behaviour,
    behavioural_error,
    edit_distance,
    multimatch,
    scanmatch,
    score_scanpaths,
    sequence_score,
)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        pytest.param([1, 2, 3], [1, 2, 3], 1.0, id="identical"),
        pytest.param([1, 2, 3], [1, 3], 2 / 3, id="one-deleted"),
        pytest.param([1, 2], [3, 4], 0.0, id="disjoint"),
        pytest.param([1, 2, 3, 4], [4, 3, 2, 1], 1 / 4, id="reversed"),
        pytest.param([5, 1, 5, 2], [1, 2, 5], 2 / 4, id="interleaved"),
    ],
)
def test_sequence_score_hand_cases(pred, gt, expected):
    assert sequence_score(pred, gt) == pytest.approx(expected)
    assert sequence_score(gt, pred) == pytest.approx(expected)


def test_sequence_score_of_two_empty_scanpaths_is_nan():
    assert math.isnan(sequence_score([], []))
    assert sequence_score([], [1]) == 0.0


@pytest.mark.parametrize(
    "a, b, expected",
    [("kitten", "sitting", 3), ([1, 2, 3], [], 3), ([1, 2, 3], [1, 2, 3], 0), ([1, 2], [2, 1], 2), ("ab", "ba", 2)],
)
def test_edit_distance_hand_cases(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_multimatch_identical_is_one():
    fix = np.array([[10.0, 20.0], [50.0, 60.0], [90.0, 10.0], [30.0, 30.0]])
    result = multimatch(fix, fix, (100, 100), [0.2, 0.3, 0.1, 0.4], [0.2, 0.3, 0.1, 0.4])
    assert result == pytest.approx(dict.fromkeys(MULTIMATCH_DIMS, 1.0))


def test_multimatch_hand_case_perpendicular_paths():
    # rightward saccades (10, 0) twice against downward (0, 10) twice on a 100x100 screen (diagonal 141.42):
    # aligned diagonally; |u - v| = 14.14 -> vector 1 - 14.14 / 282.84 = 0.95; angle pi/2 -> direction 0.5;
    # equal lengths -> 1; start points (0,0)/(0,0) and (10,0)/(0,10): median 7.07 -> position 0.95.
    a = [[0, 0], [10, 0], [20, 0]]
    b = [[0, 0], [0, 10], [0, 20]]
    result = multimatch(a, b, (100, 100))
    assert result["vector"] == pytest.approx(0.95)
    assert result["direction"] == pytest.approx(0.5)
    assert result["length"] == pytest.approx(1.0)
    assert result["position"] == pytest.approx(0.95)
    assert math.isnan(result["duration"])


def test_multimatch_short_scanpath_is_nan_and_outside_is_error():
    assert all(math.isnan(v) for v in multimatch([[0, 0], [1, 1]], [[0, 0], [1, 1], [2, 2]], (10, 10)).values())
    with pytest.raises(ValueError, match=r"fix2: fixation 1 .* outside the 10x10 screen"):
        multimatch([[0, 0], [1, 1], [2, 2]], [[0, 0], [11, 1], [2, 2]], (10, 10))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        multimatch([0, 1, 2], [[0, 0], [1, 1], [2, 2]], (10, 10))


def test_multimatch_matches_multimatch_gaze_on_random_scanpaths():
    mmg = pytest.importorskip("multimatch_gaze")
    rng = np.random.default_rng(0)
    size = (1280, 720)
    for _ in range(25):
        n1, n2 = rng.integers(3, 12, size=2)
        a = rng.uniform(0, 1, (n1, 2)) * size
        b = rng.uniform(0, 1, (n2, 2)) * size
        da, db = rng.uniform(0.05, 0.5, n1), rng.uniform(0.05, 0.5, n2)
        def rec(p, d):
            return np.rec.fromarrays([p[:, 0], p[:, 1], d], names="start_x,start_y,duration")
        expected = mmg.docomparison(rec(a, da), rec(b, db), screensize=list(size))
        ours = multimatch(a, b, size, da, db)
        np.testing.assert_allclose([ours[k] for k in MULTIMATCH_DIMS], expected, rtol=1e-9, atol=1e-12)


def test_scanmatch_hand_cases():
    fix = [[10, 10], [60, 40], [90, 90]]
    assert scanmatch(fix, fix, (100, 100)) == pytest.approx(1.0)
    # 2x1 grid: the two fixations are one cell apart; S = threshold - 1
    assert scanmatch([[10, 50]], [[60, 50]], (100, 100), grid=(2, 1), threshold=1.5) == pytest.approx(0.5 / 1.5)
    # a negative substitution is never taken: gaps cost 0
    assert scanmatch([[10, 50]], [[60, 50]], (100, 100), grid=(2, 1), threshold=0.5) == 0.0
    # temporal bins: 100 ms with 50 ms bins is two symbols against one -> half the identical score
    value = scanmatch([[10, 50]], [[10, 50]], (100, 100), grid=(2, 1), durations1=[100], durations2=[50],
                      temporal_bin=50)
    assert value == pytest.approx(0.5)
    assert math.isnan(scanmatch(np.zeros((0, 2)), np.zeros((0, 2)), (100, 100)))
    with pytest.raises(ValueError, match="outside"):
        scanmatch([[10, 150]], [[10, 50]], (100, 100))


def test_behaviour_hand_case():
    # runs 1 2 3 2 5: first visits 1 2 3 5, one revisit (2), one refixation (the second 1)
    stats = behaviour([1, 1, 2, 3, 2, 5], target=5)
    assert stats == pytest.approx(
        {"target_found": 1.0, "length": 6.0, "search_ratio": 4 / 6, "refixation_ratio": 1 / 6, "revisit_ratio": 1 / 6}
    )
    assert behaviour([3, 4], target=5)["target_found"] == 0.0
    with pytest.raises(ValueError, match="at least one fixation"):
        behaviour([], target=0)


def test_behavioural_error_hand_case():
    human = {"target_found": 1.0, "length": 5.0, "search_ratio": 0.5, "refixation_ratio": 0.25, "revisit_ratio": 0.25}
    model = dict(human, length=4.0)
    assert behavioural_error(human, human) == 0.0
    assert behavioural_error(model, human) == pytest.approx(0.2 / 5)
    # a zero human mean contributes the absolute error
    assert behavioural_error(dict(human, revisit_ratio=0.1), dict(human, revisit_ratio=0.0)) == pytest.approx(0.1 / 5)


def test_score_scanpaths_perfect_prediction():
    centres = np.array([[10.0, 10.0], [50.0, 10.0], [90.0, 50.0], [10.0, 90.0]])
    human = [0, 1, 1, 2, 3]
    result = score_scanpaths([human], [[human]], [centres], [3], [(100, 100)])
    assert result["sequence_score"] == 1.0 and result["edit_distance"] == 0.0
    assert result["behavioural_error"] == 0.0
    for k in ("vector", "direction", "length", "position"):
        assert result[f"multimatch_{k}"] == pytest.approx(1.0)
    worse = score_scanpaths([[3, 2]], [[human]], [centres], [3], [(100, 100)])
    assert worse["sequence_score"] == pytest.approx(1 / 5) and worse["behavioural_error"] > 0
    assert math.isnan(worse["multimatch_vector"])  # 2 fixations: documented NaN

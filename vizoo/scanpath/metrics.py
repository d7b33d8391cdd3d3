"""Scanpath metrics: sequence score, edit distance, MultiMatch, ScanMatch and OAT's behavioural metrics.

A scanpath is either a sequence of object indices (what OAT predicts) or an ``[n, 2]`` array of fixation
coordinates in pixels (what MultiMatch and ScanMatch compare; object scanpaths become coordinates through
the objects' box centres, as OAT does). Every function takes one pair (or one scanpath); averaging over the
human scanpaths of a trial and over trials is done by :func:`score_scanpaths`.

References:
    * Sequence score: Yang et al. "Predicting Goal-directed Human Attention Using Inverse Reinforcement
      Learning", CVPR 2020 (used by Gazeformer, HAT and OAT).
    * MultiMatch: Jarodzka, Holmqvist, Nystroem. ETRA 2010; Dewhurst et al. Behav. Res. Methods 2012. Written
      to agree with the ``multimatch-gaze`` package (Wagner et al. 2019) without simplification
      (``grouping=False``): tests/scanpath compare the two on random scanpaths.
    * ScanMatch: Cristino, Mathot, Theeuwes, Gilchrist. Behav. Res. Methods 2010, written from the paper.
    * Behavioural metrics and their mean relative error: Fang et al. "OAT: Object-Level Attention
      Transformer for Gaze Scanpath Prediction", ECCV 2024, written from the paper's definitions.

Short scanpaths never crash: sequence score and edit distance accept any length (two empty scanpaths give
NaN for the score); MultiMatch returns NaN for every dimension when either scanpath has fewer than 3
fixations (as multimatch-gaze does); ScanMatch returns NaN when both are empty. Averages skip NaNs.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

MULTIMATCH_DIMS = ("vector", "direction", "length", "position", "duration")
BEHAVIOUR_KEYS = ("target_found", "length", "search_ratio", "refixation_ratio", "revisit_ratio")


def _alignment_score(a: Sequence, b: Sequence, substitution) -> float:
    """Needleman-Wunsch global alignment with gap value 0: the best total of ``substitution(x, y)`` over
    monotone pairings of ``a`` and ``b`` (unpaired symbols cost nothing)."""
    prev = [0.0] * (len(b) + 1)
    for x in a:
        row = [0.0]
        for j, y in enumerate(b):
            row.append(max(prev[j] + substitution(x, y), prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def sequence_score(pred: Sequence[int], gt: Sequence[int]) -> float:
    """Sequence score (SS): Needleman-Wunsch alignment of two symbol strings with match 1, mismatch 0 and gap
    0, divided by the longer length. 1 for identical scanpaths, 0 when they share no symbol; NaN when both
    are empty. OAT's symbols are object indices."""
    longest = max(len(pred), len(gt))
    if longest == 0:
        return math.nan
    return _alignment_score(list(pred), list(gt), lambda x, y: 1.0 if x == y else 0.0) / longest


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that turn ``a`` into ``b``
    (FED when the symbols are fixation clusters; 0 for identical scanpaths)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = row
    return prev[-1]


def _as_fixations(points, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must be an [n, 2] array of (x, y) fixations, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} has non-finite coordinates")
    return points


def _check_inside(points: np.ndarray, screen_size: tuple[float, float], name: str) -> None:
    width, height = screen_size
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name}: fixation {i} at {tuple(points[i].tolist())} lies outside the {width}x{height} screen "
            "(coordinates must be in [0, width] x [0, height] pixels)"
        )


def _min_cost_alignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """The monotone path from (0, 0) to the last cell through right / down / diagonal steps with the least
    summed cost (MultiMatch's Dijkstra alignment, solved by dynamic programming on the same grid)."""
    n, m = cost.shape
    total = np.full((n, m), np.inf)
    total[0, 0] = cost[0, 0]
    for i in range(n):
        for j in range(m):
            if i == j == 0:
                continue
            best = min(
                total[i - 1, j] if i else np.inf,
                total[i, j - 1] if j else np.inf,
                total[i - 1, j - 1] if i and j else np.inf,
            )
            total[i, j] = best + cost[i, j]
    path, i, j = [(n - 1, m - 1)], n - 1, m - 1
    while (i, j) != (0, 0):
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((s for s in steps if s[0] >= 0 and s[1] >= 0), key=lambda s: total[s])
        path.append((i, j))
    return path[::-1]


def multimatch(
    fix1,
    fix2,
    screen_size: tuple[float, float],
    durations1: Sequence[float] | None = None,
    durations2: Sequence[float] | None = None,
) -> dict[str, float]:
    """MultiMatch similarity of two fixation scanpaths, five dimensions in [0, 1] (1 = identical).

    Each scanpath becomes its saccade vectors (fixation i to i+1). The two saccade sequences are aligned by the
    monotone path through the matrix of vector-difference lengths with the least summed cost; along that
    path, with ``D`` the screen diagonal and medians taken over the aligned pairs:

    * vector = 1 - median |u - v| / (2 D)
    * direction = 1 - median angle between u and v / pi
    * length = 1 - median ||u| - |v|| / D
    * position = 1 - median distance between the saccades' start fixations / D
    * duration = 1 - median |t1 - t2| / max(t1, t2) over the start fixations' durations (NaN without durations)

    No saccade merging is done (multimatch-gaze's ``grouping=False``). Scanpaths with fewer than 3 fixations
    give NaN for every dimension. Fixations outside ``[0, width] x [0, height]`` are a ValueError.
    """
    p1, p2 = _as_fixations(fix1, "fix1"), _as_fixations(fix2, "fix2")
    width, height = screen_size
    if width <= 0 or height <= 0:
        raise ValueError(f"screen_size must be positive (width, height), got {screen_size}")
    _check_inside(p1, screen_size, "fix1")
    _check_inside(p2, screen_size, "fix2")
    if len(p1) < 3 or len(p2) < 3:
        return dict.fromkeys(MULTIMATCH_DIMS, math.nan)
    s1, s2 = np.diff(p1, axis=0), np.diff(p2, axis=0)
    cost = np.linalg.norm(s1[:, None, :] - s2[None, :, :], axis=-1)
    rows, cols = map(np.array, zip(*_min_cost_alignment(cost)))
    u, v = s1[rows], s2[cols]
    diag = math.hypot(width, height)
    angle = np.abs(np.arctan2(u[:, 1], u[:, 0]) - np.arctan2(v[:, 1], v[:, 0]))
    angle = np.where(angle > math.pi, 2 * math.pi - angle, angle)
    result = {
        "vector": 1 - np.median(np.linalg.norm(u - v, axis=1)) / (2 * diag),
        "direction": 1 - np.median(angle) / math.pi,
        "length": 1 - np.median(np.abs(np.linalg.norm(u, axis=1) - np.linalg.norm(v, axis=1))) / diag,
        "position": 1 - np.median(np.linalg.norm(p1[rows] - p2[cols], axis=1)) / diag,
        "duration": math.nan,
    }
    if durations1 is not None and durations2 is not None:
        d1, d2 = np.asarray(durations1, float), np.asarray(durations2, float)
        if d1.shape != (len(p1),) or d2.shape != (len(p2),):
            raise ValueError("durations1/durations2 must give one duration per fixation")
        if (d1 <= 0).any() or (d2 <= 0).any():
            raise ValueError("fixation durations must be positive")
        a, b = d1[rows], d2[cols]
        result["duration"] = 1 - np.median(np.abs(a - b) / np.maximum(a, b))
    return {k: float(v) for k, v in result.items()}


def scanmatch(
    fix1,
    fix2,
    screen_size: tuple[float, float],
    grid: tuple[int, int] = (12, 8),
    threshold: float = 3.5,
    durations1: Sequence[float] | None = None,
    durations2: Sequence[float] | None = None,
    temporal_bin: float | None = None,
) -> float:
    """ScanMatch similarity in [0, 1] (1 = identical).

    The screen is cut into ``grid = (x_bins, y_bins)`` cells and each fixation becomes its cell. With
    ``temporal_bin`` (same unit as the durations) a cell is repeated once per started bin of the fixation's
    duration. Two cells score ``S(a, b) = threshold - d(a, b)``, with ``d`` the distance between the cells in
    cell units: Cristino et al.'s ``(d_max - d) - (d_max - threshold)``, so cells closer than ``threshold``
    reward alignment and farther ones penalise it. The Needleman-Wunsch score with gap value 0 is divided by
    ``threshold * max(len1, len2)``, the score of identical strings. NaN when both scanpaths are empty.
    """
    p1, p2 = _as_fixations(fix1, "fix1"), _as_fixations(fix2, "fix2")
    _check_inside(p1, screen_size, "fix1")
    _check_inside(p2, screen_size, "fix2")
    x_bins, y_bins = grid
    if x_bins < 1 or y_bins < 1 or threshold <= 0:
        raise ValueError(f"grid bins must be >= 1 and threshold > 0, got grid={grid}, threshold={threshold}")
    width, height = screen_size

    def symbols(points: np.ndarray, durations) -> list[tuple[int, int]]:
        cells = [
            (min(int(x / width * x_bins), x_bins - 1), min(int(y / height * y_bins), y_bins - 1))
            for x, y in points
        ]
        if temporal_bin is None:
            return cells
        if durations is None or len(durations) != len(cells):
            raise ValueError("temporal_bin needs one duration per fixation (durations1, durations2)")
        return [c for c, t in zip(cells, durations) for _ in range(max(1, math.ceil(t / temporal_bin)))]

    a, b = symbols(p1, durations1), symbols(p2, durations2)
    longest = max(len(a), len(b))
    if longest == 0:
        return math.nan
    score = _alignment_score(a, b, lambda c, e: threshold - math.hypot(c[0] - e[0], c[1] - e[1]))
    return score / (threshold * longest)


def behaviour(scanpath: Sequence[int], target: int) -> dict[str, float]:
    """OAT's five behavioural statistics of one object scanpath (consecutive repeats collapsed into runs):

    * ``target_found``: 1 if the last fixation is on the target, else 0;
    * ``length``: the number of fixations;
    * ``search_ratio``: runs on objects visited for the first time / fixations;
    * ``refixation_ratio``: fixations that repeat the previous object / fixations;
    * ``revisit_ratio``: runs that return to an object visited before / fixations.

    The three ratios sum to 1. An empty scanpath is a ValueError (every statistic needs one fixation).
    """
    scanpath = list(scanpath)
    if not scanpath:
        raise ValueError("behaviour() needs a scanpath with at least one fixation")
    runs = [x for i, x in enumerate(scanpath) if i == 0 or x != scanpath[i - 1]]
    seen: set[int] = set()
    first_visits = 0
    for x in runs:
        first_visits += x not in seen
        seen.add(x)
    n = len(scanpath)
    return {
        "target_found": float(scanpath[-1] == target),
        "length": float(n),
        "search_ratio": first_visits / n,
        "refixation_ratio": (n - len(runs)) / n,
        "revisit_ratio": (len(runs) - first_visits) / n,
    }


def mean_behaviour(scanpaths: Iterable[Sequence[int]], targets: Iterable[int]) -> dict[str, float]:
    """The mean of :func:`behaviour` over scanpaths (one target per scanpath)."""
    stats = [behaviour(s, t) for s, t in zip(scanpaths, targets)]
    if not stats:
        raise ValueError("mean_behaviour() needs at least one scanpath")
    return {k: float(np.mean([s[k] for s in stats])) for k in BEHAVIOUR_KEYS}


def behavioural_error(model: dict[str, float], human: dict[str, float]) -> float:
    """OAT's behavioural error: Delta = (1/5) sum_k |m_k - h_k| / h_k over the five mean statistics of
    :func:`behaviour` (model against humans; 0 is a perfect match, lower is better). A statistic whose human
    mean is 0 (relative error undefined) contributes its absolute error |m_k| instead."""
    terms = []
    for k in BEHAVIOUR_KEYS:
        m, h = model[k], human[k]
        terms.append(abs(m - h) / abs(h) if h != 0 else abs(m))
    return float(np.mean(terms))


def score_scanpaths(
    predictions: Sequence[Sequence[int]],
    humans: Sequence[Sequence[Sequence[int]]],
    centres: Sequence[np.ndarray],
    targets: Sequence[int],
    image_sizes: Sequence[tuple[float, float]],
) -> dict[str, float]:
    """All metrics of one method over a set of trials.

    ``predictions[i]`` is the predicted object scanpath of trial ``i``; ``humans[i]`` its human scanpaths;
    ``centres[i]`` its objects' box centres ``[N, 2]`` (pixels) and ``image_sizes[i]`` its ``(width, height)``.
    Pairwise metrics are averaged over the humans of a trial, then over trials (NaNs skipped); MultiMatch
    uses the object centres (no durations, so its duration dimension is left out, as in OAT). The
    behavioural error compares the mean statistics of all predictions with those of all human scanpaths.
    """
    if not (len(predictions) == len(humans) == len(centres) == len(targets) == len(image_sizes)):
        raise ValueError("predictions, humans, centres, targets and image_sizes must have one entry per trial")
    if not predictions:
        raise ValueError("score_scanpaths() needs at least one trial")
    per_trial: dict[str, list[float]] = {k: [] for k in ("sequence_score", "edit_distance", "scanmatch")}
    per_trial.update({f"multimatch_{k}": [] for k in MULTIMATCH_DIMS[:4]})
    for pred, trial_humans, centre, size in zip(predictions, humans, centres, image_sizes):
        if not trial_humans:
            raise ValueError("every trial needs at least one human scanpath")
        rows: dict[str, list[float]] = {k: [] for k in per_trial}
        for human in trial_humans:
            rows["sequence_score"].append(sequence_score(pred, human))
            rows["edit_distance"].append(edit_distance(pred, human))
            p, h = np.asarray(centre)[list(pred)], np.asarray(centre)[list(human)]
            rows["scanmatch"].append(scanmatch(p, h, size))
            for k, v in multimatch(p, h, size).items():
                if k != "duration":
                    rows[f"multimatch_{k}"].append(v)
        for k, values in rows.items():
            per_trial[k].append(_nanmean(values))
    result = {k: _nanmean(v) for k, v in per_trial.items()}
    model_stats = mean_behaviour(predictions, targets)
    human_stats = mean_behaviour(
        [h for hs in humans for h in hs], [t for hs, t in zip(humans, targets) for _ in hs]
    )
    result["behavioural_error"] = behavioural_error(model_stats, human_stats)
    result.update({f"behaviour_{k}": v for k, v in model_stats.items()})
    return result


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan

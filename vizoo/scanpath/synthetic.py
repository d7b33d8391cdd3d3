"""A seeded synthetic visual-search world: cluttered displays of objects and simulated searchers.

Displays follow OAT's setting (a grid-like display of objects, one of which is the search target): objects sit
in the cells of a ``rows x cols`` grid (a cell is left empty with probability ``1 - fill``) at a random offset
inside their cell, over a noisy background. Each object has a shape (circle, square, triangle, diamond),
a colour (six hues) and a texture (solid, stripes, checks). The target's feature triple is unique in its
display; every distractor feature equals the target's with probability ``share``, so that search is hard
enough for guidance to matter.

Searchers follow a small guided-search model (in the spirit of Wolfe's Guided Search: top-down feature
guidance, a cost for long saccades, inhibition of return), :class:`GuidedSearch`, documented field by field.
The eye starts at the display centre. At each step:

1. with probability ``refixation_prob`` it fixates the current object again;
2. otherwise, with probability ``revisit_prob`` (when some other object was already visited) it returns to an
   already visited object;
3. otherwise it moves to an unvisited object (to a visited one when none is left);

choosing, within the allowed set, object ``i`` with probability proportional to
``exp(guidance * sim_i - distance_cost * d_i)``, where ``sim_i`` in [0, 1] is the weighted fraction of
features object ``i`` shares with the target and ``d_i`` the distance from the current fixation in units of
the display diagonal. Fixating the target recognises it with probability ``detection_prob``; once
recognised, the searcher refixates it with probability ``confirm_prob`` and stops, so human scanpaths end on
the target. A searcher that reaches ``max_fixations`` stops without finding it.

Everything is drawn from ``numpy.random.default_rng([seed, index])``: scene ``index`` of seed ``seed`` is the
same whatever the number of scenes asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vizoo.scanpath.data import Scene

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = np.array(
    [[220, 40, 40], [40, 160, 60], [40, 80, 220], [235, 200, 30], [160, 60, 200], [20, 190, 200]], np.uint8
)
TEXTURES = ("solid", "stripes", "checks")


@dataclass
class GuidedSearch:
    """Parameters of the simulated searcher (see the module docstring for the model).

    Attributes:
        colour_weight: weight of a shared colour in the target similarity.
        shape_weight: weight of a shared shape.
        texture_weight: weight of a shared texture.
        guidance: logit gain of target similarity (0: no top-down guidance).
        distance_cost: logit cost per display diagonal of saccade length.
        refixation_prob: probability of fixating the current object again.
        revisit_prob: probability of returning to an already visited object (inhibition of return otherwise).
        detection_prob: probability that a fixation on the target recognises it.
        confirm_prob: probability of one more fixation on the recognised target before stopping.
        max_fixations: longest scanpath; a searcher stops there without having found the target.
    """

    colour_weight: float = 1.0
    shape_weight: float = 0.6
    texture_weight: float = 0.3
    guidance: float = 5.0
    distance_cost: float = 4.0
    refixation_prob: float = 0.1
    revisit_prob: float = 0.08
    detection_prob: float = 0.9
    confirm_prob: float = 0.3
    max_fixations: int = 24

    def __post_init__(self):
        for name in ("refixation_prob", "revisit_prob", "detection_prob", "confirm_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"GuidedSearch.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.max_fixations < 1:
            raise ValueError(f"GuidedSearch.max_fixations must be >= 1, got {self.max_fixations}")

    def similarity(self, features: np.ndarray, target: int) -> np.ndarray:
        """Weighted fraction of (colour, shape, texture) each object shares with the target, in [0, 1]."""
        weights = np.array([self.colour_weight, self.shape_weight, self.texture_weight])
        shared = features[:, [1, 0, 2]] == features[target, [1, 0, 2]]
        return shared @ weights / max(weights.sum(), 1e-12)

    def search(self, centres: np.ndarray, features: np.ndarray, target: int, image_size, rng) -> list[int]:
        """One simulated scanpath (object indices) over objects at ``centres`` with ``features`` [N, 3]."""
        width, height = image_size
        diagonal = np.hypot(width, height)
        priority = self.guidance * self.similarity(features, target)
        position = np.array([width / 2, height / 2])
        path: list[int] = []
        visited = np.zeros(len(centres), bool)
        while len(path) < self.max_fixations:
            if path and rng.random() < self.refixation_prob:
                choice = path[-1]
            else:
                others = visited.copy()
                if path:
                    others[path[-1]] = False
                if others.any() and (rng.random() < self.revisit_prob or visited.all()):
                    allowed = others
                else:
                    allowed = ~visited if (~visited).any() else others
                logits = priority - self.distance_cost * np.linalg.norm(centres - position, axis=1) / diagonal
                logits = np.where(allowed, logits, -np.inf)
                p = np.exp(logits - logits.max())
                choice = int(rng.choice(len(centres), p=p / p.sum()))
            path.append(choice)
            visited[choice] = True
            position = centres[choice]
            if choice == target and rng.random() < self.detection_prob:
                if len(path) < self.max_fixations and rng.random() < self.confirm_prob:
                    path.append(choice)
                break
        return path


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= (0.48 * size) ** 2
    if shape == "square":
        return (np.abs(xx - c) <= 0.4 * size) & (np.abs(yy - c) <= 0.4 * size)
    if shape == "diamond":
        return np.abs(xx - c) + np.abs(yy - c) <= 0.5 * size
    return (yy >= 0.1 * size) & (yy <= 0.92 * size) & (np.abs(xx - c) <= (yy - 0.1 * size) * 0.55)  # triangle


def _render(features, size: int) -> np.ndarray:
    """An RGBA-like (rgb, mask) patch for one object."""
    shape, colour, texture = features
    mask = _shape_mask(SHAPES[shape], size)
    rgb = np.broadcast_to(COLOURS[colour], (size, size, 3)).astype(np.int16)
    yy, xx = np.mgrid[0:size, 0:size]
    if TEXTURES[texture] == "stripes":
        rgb = np.where(((yy // 2) % 2 == 0)[..., None], rgb, rgb // 3)
    elif TEXTURES[texture] == "checks":
        rgb = np.where((((yy // 3) + (xx // 3)) % 2 == 0)[..., None], rgb, 255 - (255 - rgb) // 3)
    return rgb.astype(np.uint8), mask


def make_scene(
    index: int,
    seed: int = 0,
    rows: int = 3,
    cols: int = 6,
    cell: int = 24,
    fill: float = 0.85,
    share: float = 0.4,
    searchers: int = 5,
    search: GuidedSearch | None = None,
) -> Scene:
    """Scene ``index`` of the synthetic world ``seed`` (see the module docstring), with ``searchers`` scanpaths."""
    if rows < 1 or cols < 1 or rows * cols < 2 or cell < 8:
        raise ValueError(f"need rows, cols >= 1 with at least 2 cells and cell >= 8 pixels, got {rows}x{cols}, {cell}")
    if not 0 < fill <= 1 or not 0 <= share <= 1 or searchers < 1:
        raise ValueError(f"need 0 < fill <= 1, 0 <= share <= 1, searchers >= 1; got {fill}, {share}, {searchers}")
    search = search or GuidedSearch()
    rng = np.random.default_rng([seed, index])
    height, width = rows * cell, cols * cell
    image = rng.normal(200, 18, (height, width, 3))  # clutter: pixel noise around light grey
    image = np.clip(image, 0, 255).astype(np.uint8)
    cells = np.flatnonzero(rng.random(rows * cols) < fill)
    if len(cells) < 2:
        cells = rng.choice(rows * cols, 2, replace=False)
    target_features = np.array([rng.integers(len(SHAPES)), rng.integers(len(COLOURS)), rng.integers(len(TEXTURES))])
    sizes = (len(SHAPES), len(COLOURS), len(TEXTURES))
    target = int(rng.integers(len(cells)))
    features = np.zeros((len(cells), 3), int)
    for i in range(len(cells)):
        if i == target:
            features[i] = target_features
            continue
        while True:
            draw = [t if rng.random() < share else rng.integers(n) for t, n in zip(target_features, sizes)]
            if list(draw) != list(target_features):
                break
        features[i] = draw
    size = int(cell * 0.75)
    boxes = []
    for i, c in enumerate(cells):
        r, col = divmod(int(c), cols)
        x0 = col * cell + int(rng.integers(0, cell - size + 1))
        y0 = r * cell + int(rng.integers(0, cell - size + 1))
        rgb, mask = _render(features[i], size)
        patch = image[y0:y0 + size, x0:x0 + size]
        patch[mask] = rgb[mask]
        boxes.append([x0, y0, x0 + size, y0 + size])
    boxes = np.array(boxes, float)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    paths = [search.search(centres, features, target, (width, height), rng) for _ in range(searchers)]
    return Scene(image, boxes, target, paths, scene_id=f"synthetic-{seed}-{index}")


def make_scenes(num_scenes: int, seed: int = 0, **kwargs) -> list[Scene]:
    """Scenes ``0 .. num_scenes-1`` of the synthetic world ``seed``; ``kwargs`` go to :func:`make_scene`."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    return [make_scene(i, seed, **kwargs) for i in range(num_scenes)]

"""Scanpath data: scenes of objects with human fixation sequences, their file formats, and splits.

A :class:`Scene` is one search display: an RGB image, the objects' boxes, which object is the target, and the
human scanpaths recorded on it as sequences of object indices (OAT's representation: each fixation is mapped
to the object whose box contains it, else to the object with the nearest box centre).

Formats read here:

* **vizoo's own folder** (:func:`save_scenes` / :func:`load_scenes`): ``scenes.json`` plus one PNG per scene.
  ``scenes.json`` is ``{"format": "vizoo-scanpath", "version": 1, "scenes": [record, ...]}`` with records
  ``{"id", "image" (file name), "boxes" ([[x0, y0, x1, y1], ...] pixels), "target" (object index),
  "scanpaths" ([[object index, ...], ...])}``. The synthetic generator's data and any converted dataset use it.
* **COCO-Search18** fixation JSON (:func:`read_coco_search18`): a list of trials with ``name`` (image file),
  ``task`` (target category), ``bbox`` (target ``[x, y, w, h]``), ``X``/``Y`` (fixations, pixels of the
  1680x1050 display). COCO-Search18 gives only the target's box, so the other objects' boxes come from a
  second JSON, ``{image name: [[x, y, w, h], ...]}`` in the same pixel frame (e.g. from COCO's annotations).
* **OAT's preprocessed trials** (:func:`read_oat`): a list of trials with ``layout_id``, ``sub_id``,
  ``package_target`` (``[target index]``), ``package_seq`` (fixated object indices) and
  ``question_img_feature`` (the R*C object crops, row-major, float in [0, 1], ``[h, w, 3]``). OAT stores it
  as a pickle; JSON with the same keys is read too. Indices are 1-based by default (``index_base``).

Bad input fails early with a ValueError naming the file, the record and what is accepted: empty scenes,
boxes outside the image or degenerate, overlapping boxes (a fixation must map to one object), a target that
is not among the objects, fixations outside the image, malformed records.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from vizoo.utils import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "vizoo-scanpath"


@dataclass
class Scene:
    """One search display.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` float object boxes ``(x0, y0, x1, y1)`` in pixels, non-overlapping, inside the image.
        target: index of the target object.
        scanpaths: human scanpaths, each a list of object indices.
        scene_id: a name used in error messages and output files.
    """

    image: np.ndarray
    boxes: np.ndarray
    target: int
    scanpaths: list[list[int]] = field(default_factory=list)
    scene_id: str = "scene"

    def __post_init__(self):
        self.image = np.asarray(self.image)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4) if len(self.boxes) else np.zeros((0, 4))
        self.scanpaths = [[int(i) for i in s] for s in self.scanpaths]
        validate_scene(self)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    @property
    def centres(self) -> np.ndarray:
        """``[N, 2]`` box centres (x, y) in pixels."""
        return np.stack([(self.boxes[:, 0] + self.boxes[:, 2]) / 2, (self.boxes[:, 1] + self.boxes[:, 3]) / 2], 1)


def validate_scene(scene: Scene) -> None:
    """Raise a ValueError naming the scene if it cannot be used (see the module docstring)."""
    name = f"scene {scene.scene_id!r}"
    image = scene.image
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"{name}: image must be an [H, W, 3] uint8 RGB array, got {image.dtype} {image.shape}")
    boxes = scene.boxes
    if len(boxes) == 0:
        raise ValueError(f"{name}: empty scene (no object boxes); a search display needs at least one object")
    width, height = scene.size
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{name}: box {i} {boxes[i].tolist()} is empty (need x0 < x1 and y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"{name}: box {i} {boxes[i].tolist()} lies outside the {width}x{height} image")
    overlap = _intersection_areas(boxes)
    np.fill_diagonal(overlap, 0)
    if (overlap > 0).any():
        i, j = np.argwhere(overlap > 0)[0]
        raise ValueError(
            f"{name}: boxes {i} and {j} overlap; object scanpaths need disjoint boxes so that every fixation "
            "maps to one object"
        )
    if not 0 <= scene.target < len(boxes):
        raise ValueError(f"{name}: target {scene.target} is not among the {len(boxes)} objects (0..{len(boxes) - 1})")
    for k, path in enumerate(scene.scanpaths):
        bad = [i for i in path if not 0 <= i < len(boxes)]
        if bad:
            raise ValueError(f"{name}: scanpath {k} fixates object {bad[0]}, not among the {len(boxes)} objects")
        if not path:
            raise ValueError(f"{name}: scanpath {k} is empty")


def _intersection_areas(boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)


def fixations_to_objects(xy, boxes: np.ndarray, image_size: tuple[int, int], where: str = "fixations") -> list[int]:
    """Map pixel fixations ``[n, 2]`` to object indices: the box that contains the fixation, else the box with
    the nearest centre (as OAT does). A fixation outside the image is a ValueError naming ``where``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    width, height = image_size
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height) | ~np.isfinite(xy).all(1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{where}: fixation {i} at {tuple(xy[i].tolist())} lies outside the {width}x{height} image")
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    inside = (
        (xy[:, None, 0] >= boxes[None, :, 0]) & (xy[:, None, 0] <= boxes[None, :, 2])
        & (xy[:, None, 1] >= boxes[None, :, 1]) & (xy[:, None, 1] <= boxes[None, :, 3])
    )
    nearest = np.linalg.norm(xy[:, None, :] - centres[None], axis=-1).argmin(1)
    return [int(np.argmax(row)) if row.any() else int(n) for row, n in zip(inside, nearest)]


def split_scenes(
    scenes: Sequence[Scene], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 1234
) -> tuple[list[Scene], list[Scene], list[Scene]]:
    """Train / val / test split by scene (all scanpaths of a scene stay together), over a seeded shuffle.

    OAT splits 80/10/10 over a shuffled index with seed 1234; so does the default here."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(scenes))
    n_train = round(fractions[0] * len(scenes))
    n_val = round(fractions[1] * len(scenes))
    def pick(idx):
        return [scenes[i] for i in idx]
    return pick(order[:n_train]), pick(order[n_train:n_train + n_val]), pick(order[n_train + n_val:])


# ----------------------------------------------------------------------------------------------------------
# vizoo's own folder format


def save_scenes(scenes: Sequence[Scene], root: str | Path) -> Path:
    """Write ``scenes`` as a vizoo scanpath folder (PNG images and ``scenes.json``, each written atomically)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, scene in enumerate(scenes):
        file = f"images/{i:06d}.png"
        with atomic_path(root / file) as tmp:
            Image.fromarray(scene.image).save(tmp, format="PNG")
        records.append({
            "id": scene.scene_id, "image": file, "boxes": scene.boxes.tolist(), "target": scene.target,
            "scanpaths": scene.scanpaths,
        })
    atomic_write_text(root / "scenes.json", json.dumps({"format": FORMAT_NAME, "version": 1, "scenes": records}))
    return root


def load_scenes(root: str | Path) -> list[Scene]:
    """Read a folder written by :func:`save_scenes` (or by hand in the same format)."""
    root = Path(root)
    index = root / "scenes.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: a vizoo scanpath folder holds scenes.json and its images")
    data = _load_json(index)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME or not isinstance(data.get("scenes"), list):
        raise ValueError(f"{index}: not a vizoo scanpath index (need {{'format': '{FORMAT_NAME}', 'scenes': [...]}})")
    scenes = []
    for k, record in enumerate(data["scenes"]):
        where = f"{index}, record {k}"
        _require(record, ("id", "image", "boxes", "target", "scanpaths"), where)
        image_path = root / record["image"]
        if not image_path.is_file():
            raise FileNotFoundError(f"{where}: image {image_path} not found")
        scenes.append(_scene(where, np.asarray(Image.open(image_path).convert("RGB")), record["boxes"],
                             record["target"], record["scanpaths"], str(record["id"])))
    return scenes


# ----------------------------------------------------------------------------------------------------------
# COCO-Search18


def read_coco_search18(
    fixations_file: str | Path,
    boxes_file: str | Path,
    image_dir: str | Path,
    target_iou: float = 0.5,
    max_length: int | None = None,
) -> list[Scene]:
    """Read COCO-Search18 trials (target-present) as scenes, one per (image, task).

    Args:
        fixations_file: COCO-Search18's fixation JSON (a list of trials, see the module docstring).
        boxes_file: ``{image name: [[x, y, w, h], ...]}``, the objects of each image in display pixels.
        image_dir: the display images, at ``image_dir/<task>/<name>`` (COCO-Search18's layout) or
            ``image_dir/<name>``.
        target_iou: the target is the object whose box overlaps the trial's ``bbox`` most, with at least this IoU.
        max_length: keep at most this many fixations per scanpath (COCO-Search18 work often uses 16).
    """
    fixations_file, boxes_file, image_dir = Path(fixations_file), Path(boxes_file), Path(image_dir)
    trials = _load_json(fixations_file)
    all_boxes = _load_json(boxes_file)
    if not isinstance(trials, list):
        raise ValueError(f"{fixations_file}: expected a JSON list of trials, got {type(trials).__name__}")
    if not isinstance(all_boxes, dict):
        raise ValueError(f"{boxes_file}: expected a JSON object {{image name: [[x, y, w, h], ...]}}")
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for k, trial in enumerate(trials):
        where = f"{fixations_file}, record {k}"
        _require(trial, ("name", "task", "bbox", "X", "Y"), where)
        name, task = str(trial["name"]), str(trial["task"])
        if name not in all_boxes:
            raise ValueError(f"{where}: image {name!r} has no object boxes in {boxes_file}")
        key = (name, task)
        if key not in grouped:
            image = _find_image(image_dir, task, name, where)
            try:
                boxes = np.asarray(all_boxes[name], dtype=np.float64).reshape(-1, 4)
            except (TypeError, ValueError):
                raise ValueError(f"{boxes_file}, image {name!r}: boxes must be a list of [x, y, w, h]") from None
            boxes[:, 2:] += boxes[:, :2]
            target = _match_target(trial["bbox"], boxes, target_iou, where)
            grouped[key] = {"image": image, "boxes": boxes, "target": target, "scanpaths": [], "where": where}
        entry = grouped[key]
        if len(trial["X"]) != len(trial["Y"]) or not trial["X"]:
            raise ValueError(f"{where}: X and Y must be non-empty lists of the same length")
        xy = np.stack([np.asarray(trial["X"], float), np.asarray(trial["Y"], float)], 1)
        height, width = entry["image"].shape[:2]
        path = fixations_to_objects(xy, entry["boxes"], (width, height), where=where)
        entry["scanpaths"].append(path[:max_length] if max_length else path)
    return [
        _scene(e["where"], e["image"], e["boxes"], e["target"], e["scanpaths"], f"{task}/{name}")
        for (name, task), e in grouped.items()
    ]


def _match_target(bbox, boxes: np.ndarray, min_iou: float, where: str) -> int:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}") from None
    target = np.array([[x, y, x + w, y + h]])
    inter = _intersection_areas(np.concatenate([target, boxes]))[0, 1:]
    union = w * h + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    iou = inter / np.maximum(union, 1e-9)
    best = int(iou.argmax())
    if iou[best] < min_iou:
        raise ValueError(
            f"{where}: the target bbox {list(bbox)} matches no object box (best IoU {iou[best]:.2f} < {min_iou}); "
            "the target must be among the objects"
        )
    return best


def _find_image(image_dir: Path, task: str, name: str, where: str) -> np.ndarray:
    for path in (image_dir / task / name, image_dir / name):
        if path.is_file():
            return np.asarray(Image.open(path).convert("RGB"))
    raise FileNotFoundError(f"{where}: image {name!r} not found under {image_dir}/{task}/ or {image_dir}/")


# ----------------------------------------------------------------------------------------------------------
# OAT's preprocessed trials


def read_oat(path: str | Path, rows: int, cols: int, index_base: int = 1, max_length: int | None = None) -> list[Scene]:
    """Read OAT's preprocessed trials (pickle as OAT writes it, or JSON with the same keys) as scenes.

    Trials sharing ``layout_id`` and target become one scene; its image is the object crops tiled row-major on
    a ``rows x cols`` grid and its boxes are the grid cells. Only read pickles you trust (a pickle can run
    code); JSON is safe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".json":
        trials = _load_json(path)
    else:
        try:
            with open(path, "rb") as f:
                trials = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"{path}: not a readable OAT pickle ({error})") from None
    if not isinstance(trials, list):
        raise ValueError(f"{path}: expected a list of trials, got {type(trials).__name__}")
    grouped: dict[tuple[str, int], dict[str, Any]] = {}
    for k, trial in enumerate(trials):
        where = f"{path}, record {k}"
        _require(trial, ("layout_id", "package_target", "package_seq", "question_img_feature"), where)
        crops = [np.asarray(c, dtype=np.float64) for c in trial["question_img_feature"]]
        if len(crops) != rows * cols or any(c.ndim != 3 or c.shape[2] != 3 or c.shape != crops[0].shape for c in crops):
            raise ValueError(f"{where}: question_img_feature must hold rows*cols={rows * cols} crops [h, w, 3] of "
                             f"one size, got {len(crops)}")
        target = int(np.ravel(trial["package_target"])[0]) - index_base
        key = (str(trial["layout_id"]), target)
        if key not in grouped:
            h, w = crops[0].shape[:2]
            image = np.zeros((rows * h, cols * w, 3), np.uint8)
            boxes = []
            for i, crop in enumerate(crops):
                r, c = divmod(i, cols)
                image[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.clip(np.round(crop * 255), 0, 255).astype(np.uint8)
                boxes.append([c * w, r * h, (c + 1) * w, (r + 1) * h])
            grouped[key] = {"image": image, "boxes": boxes, "scanpaths": [], "where": where}
        try:
            seq = [int(i) - index_base for i in trial["package_seq"]]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: package_seq must be a list of object indices") from None
        if not seq:
            raise ValueError(f"{where}: package_seq is empty")
        grouped[key]["scanpaths"].append(seq[:max_length] if max_length else seq)
    return [_scene(e["where"], e["image"], e["boxes"], t, e["scanpaths"], f"{layout}/{t}")
            for (layout, t), e in grouped.items()]


# ----------------------------------------------------------------------------------------------------------


def _scene(where: str, image, boxes, target, scanpaths, scene_id: str) -> Scene:
    """Build a Scene, prefixing any validation error with the file and record it came from."""
    try:
        return Scene(np.asarray(image), np.asarray(boxes, dtype=np.float64), int(target), scanpaths, scene_id)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def _require(record: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with keys {list(keys)}, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; a record needs {list(keys)}")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON ({error})") from None


# ----------------------------------------------------------------------------------------------------------
# tensors for the model


def scene_tensors(scene: Scene, crop_size: tuple[int, int] = (32, 32)) -> dict[str, torch.Tensor]:
    """A scene as model inputs: ``crops`` [N, 3, h, w] (each box resized to ``crop_size``, values in [0, 1]),
    ``centres`` [N, 2] (box centres as fractions of the image width and height) and ``target`` (scalar)."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
    crops = []
    for x0, y0, x1, y1 in scene.boxes:
        x0, y0 = math.floor(x0), math.floor(y0)
        x1, y1 = max(math.ceil(x1), x0 + 1), max(math.ceil(y1), y0 + 1)
        crop = image[None, :, y0:y1, x0:x1]
        crops.append(F.interpolate(crop, size=tuple(crop_size), mode="bilinear", antialias=True,
                                   align_corners=False)[0])
    width, height = scene.size
    centres = torch.from_numpy(scene.centres / np.array([width, height])).float()
    return {"crops": torch.stack(crops), "centres": centres, "target": torch.tensor(scene.target)}


def collate_scenes(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Pad a list of :func:`scene_tensors` dicts (optionally with a ``scanpath`` 1-D long tensor and an
    ``index``) into a batch: ``crops`` [B, N, 3, h, w], ``centres`` [B, N, 2], ``valid`` [B, N] (False on
    padding objects), ``target`` [B], ``scanpath`` [B, T] (-1 on padding), ``index`` [B]."""
    import torch

    n = max(len(item["crops"]) for item in items)
    batch_size = len(items)
    crops = items[0]["crops"].new_zeros((batch_size, n, *items[0]["crops"].shape[1:]))
    centres = torch.full((batch_size, n, 2), 0.5)
    valid = torch.zeros(batch_size, n, dtype=torch.bool)
    for b, item in enumerate(items):
        k = len(item["crops"])
        crops[b, :k], centres[b, :k], valid[b, :k] = item["crops"], item["centres"], True
    batch = {"crops": crops, "centres": centres, "valid": valid, "target": torch.stack([i["target"] for i in items])}
    if "scanpath" in items[0]:
        t = max(len(i["scanpath"]) for i in items)
        scanpath = torch.full((batch_size, t), -1, dtype=torch.long)
        for b, item in enumerate(items):
            scanpath[b, :len(item["scanpath"])] = item["scanpath"]
        batch["scanpath"] = scanpath
    if "index" in items[0]:
        batch["index"] = torch.tensor([i["index"] for i in items])
    return batch

"""Scanpath data: scene validation, fixation-to-object mapping, the readers (vizoo folder, COCO-Search18,
OAT) on small hand-written files, splits, batching, and the synthetic generator's determinism and searcher."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vizoo.scanpath.data import (
    Scene,
    collate_scenes,
    fixations_to_objects,
    load_scenes,
    read_coco_search18,
    read_oat,
    save_scenes,
    scene_tensors,
    split_scenes,
)
from vizoo.scanpath.synthetic import GuidedSearch, make_scene, make_scenes

IMAGE = np.zeros((20, 40, 3), np.uint8)
BOXES = [[0, 0, 10, 10], [20, 0, 30, 10], [20, 10, 40, 20]]


def test_scene_bad_input_errors():
    with pytest.raises(ValueError, match="empty scene"):
        Scene(IMAGE, [], 0, scene_id="s")
    with pytest.raises(ValueError, match=r"boxes 0 and 1 overlap"):
        Scene(IMAGE, [[0, 0, 10, 10], [5, 5, 15, 15]], 0)
    with pytest.raises(ValueError, match=r"box 1 .* outside the 40x20 image"):
        Scene(IMAGE, [[0, 0, 10, 10], [35, 0, 45, 10]], 0)
    with pytest.raises(ValueError, match=r"box 0 .* is empty"):
        Scene(IMAGE, [[5, 0, 5, 10]], 0)
    with pytest.raises(ValueError, match=r"scene 'x': target 3 is not among the 3 objects"):
        Scene(IMAGE, BOXES, 3, scene_id="x")
    with pytest.raises(ValueError, match=r"scanpath 1 fixates object 7"):
        Scene(IMAGE, BOXES, 0, [[0, 1], [7]])
    with pytest.raises(ValueError, match="uint8 RGB"):
        Scene(np.zeros((20, 40)), BOXES, 0)
    Scene(IMAGE, [[0, 0, 10, 10], [10, 0, 20, 10]], 0)  # touching edges are not an overlap


def test_fixations_to_objects_box_then_nearest_centre():
    # (5,5) inside box 0; (25,15) inside box 2; (14,5) in no box: nearest centre is box 0's (5,5)
    assert fixations_to_objects([[5, 5], [25, 15], [14, 5], [17, 6]], np.array(BOXES, float), (40, 20)) == [0, 2, 0, 1]
    with pytest.raises(ValueError, match=r"trial 3: fixation 1 at \(41.0, 5.0\) lies outside the 40x20 image"):
        fixations_to_objects([[5, 5], [41, 5]], np.array(BOXES, float), (40, 20), where="trial 3")


def test_save_load_round_trip(tmp_path):
    scenes = make_scenes(3, seed=1)
    loaded = load_scenes(save_scenes(scenes, tmp_path / "data"))
    for a, b in zip(scenes, loaded):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert (a.target, a.scanpaths, a.scene_id) == (b.target, b.scanpaths, b.scene_id)
    index = tmp_path / "data" / "scenes.json"
    data = json.loads(index.read_text())
    del data["scenes"][1]["target"]
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"scenes.json, record 1: missing key\(s\) \['target'\]"):
        load_scenes(tmp_path / "data")
    index.write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_scenes(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        load_scenes(tmp_path / "nothing")


def _coco_files(tmp_path, trials, boxes):
    (tmp_path / "images" / "cup").mkdir(parents=True)
    Image.fromarray(np.full((50, 80, 3), 128, np.uint8)).save(tmp_path / "images" / "cup" / "a.jpg")
    (tmp_path / "fix.json").write_text(json.dumps(trials))
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    return tmp_path / "fix.json", tmp_path / "boxes.json", tmp_path / "images"


def test_coco_search18_reader_hand_written_file(tmp_path):
    boxes = {"a.jpg": [[0, 0, 20, 20], [30, 0, 20, 20], [60, 30, 20, 20]]}  # [x, y, w, h]
    trials = [
        {"name": "a.jpg", "subject": 1, "task": "cup", "bbox": [61, 31, 18, 19], "X": [40, 10, 45, 70],
         "Y": [25, 10, 5, 40], "T": [200, 150, 180, 300], "length": 4, "split": "train"},
        {"name": "a.jpg", "subject": 2, "task": "cup", "bbox": [61, 31, 18, 19], "X": [40, 70], "Y": [25, 45],
         "T": [200, 300], "length": 2, "split": "train"},
    ]
    (scene,) = read_coco_search18(*_coco_files(tmp_path, trials, boxes))
    # (40,25): no box; nearest centre is box 1's (40,10); then boxes 0, 1, 2
    assert scene.target == 2 and scene.scene_id == "cup/a.jpg"
    assert scene.scanpaths == [[1, 0, 1, 2], [1, 2]]
    assert scene.boxes.tolist()[2] == [60, 30, 80, 50]


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param({"X": [40, 90], "Y": [25, 10]}, r"fix.json, record 1: fixation 1 at \(90.0, 10.0\) lies outside",
                     id="fixation-outside"),
        pytest.param({"bbox": [0, 25, 10, 10]}, r"fix.json, record 1: the target bbox .* matches no object box",
                     id="target-not-an-object"),
        pytest.param({"X": None}, r"fix.json, record 1: missing key", id="missing-key"),
    ],
)
def test_coco_search18_reader_bad_records(tmp_path, change, message):
    boxes = {"a.jpg": [[0, 0, 20, 20], [30, 0, 20, 20], [60, 30, 20, 20]]}
    good = {"name": "a.jpg", "task": "cup", "bbox": [61, 31, 18, 19], "X": [40, 70], "Y": [25, 45]}
    bad = dict(good, **change)
    bad = {k: v for k, v in bad.items() if v is not None}
    if "bbox" in change:
        bad["name"] = "b.jpg"
        boxes["b.jpg"] = boxes["a.jpg"]
    files = _coco_files(tmp_path, [good, bad], boxes)
    if "bbox" in change:
        Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(tmp_path / "images" / "b.jpg")
    with pytest.raises(ValueError, match=message):
        read_coco_search18(*files)


def test_oat_reader_hand_written_file(tmp_path):
    crops = [np.full((4, 3, 3), v).tolist() for v in (0.0, 0.5, 1.0)]
    trials = [
        {"layout_id": "Q1_1", "sub_id": 1, "package_target": [3], "package_seq": [1, 2, 3, 3],
         "question_img_feature": crops},
        {"layout_id": "Q1_1", "sub_id": 2, "package_target": [3], "package_seq": [2, 3], "question_img_feature": crops},
    ]
    path = tmp_path / "oat.json"
    path.write_text(json.dumps(trials))
    (scene,) = read_oat(path, rows=1, cols=3)
    assert scene.target == 2 and scene.scanpaths == [[0, 1, 2, 2], [1, 2]]
    assert scene.image.shape == (4, 9, 3) and scene.image[0, 3, 0] == 128 and scene.image[0, 8, 0] == 255
    assert scene.boxes.tolist() == [[0, 0, 3, 4], [3, 0, 6, 4], [6, 0, 9, 4]]
    trials[1]["package_target"] = [9]
    path.write_text(json.dumps(trials))
    with pytest.raises(ValueError, match=r"oat.json, record 1: .*target 8 is not among the 3 objects"):
        read_oat(path, rows=1, cols=3)
    with pytest.raises(ValueError, match=r"record 0: question_img_feature must hold rows\*cols=4"):
        read_oat(path, rows=2, cols=2)


def test_split_by_scene():
    scenes = make_scenes(10, seed=0)
    train, val, test = split_scenes(scenes)
    ids = [[s.scene_id for s in part] for part in (train, val, test)]
    assert [len(i) for i in ids] == [8, 1, 1] and len({i for part in ids for i in part}) == 10
    assert ids == [[s.scene_id for s in part] for part in split_scenes(scenes)]
    with pytest.raises(ValueError, match="summing to 1"):
        split_scenes(scenes, (0.5, 0.2, 0.2))


def test_scene_tensors_and_collate():
    a, b = make_scene(0, seed=3, fill=0.5), make_scene(1, seed=3, fill=1.0)
    items = [dict(scene_tensors(s, (16, 12)), scanpath=torch.tensor(s.scanpaths[0])) for s in (a, b)]
    batch = collate_scenes(items)
    n = max(len(a.boxes), len(b.boxes))
    assert batch["crops"].shape == (2, n, 3, 16, 12) and batch["valid"].sum().item() == len(a.boxes) + len(b.boxes)
    assert batch["scanpath"][0, : len(a.scanpaths[0])].tolist() == a.scanpaths[0]
    assert (batch["scanpath"][0, len(a.scanpaths[0]):] == -1).all()
    # the crop of box i is the image inside box i (synthetic boxes are whole pixels, crop size = box size here)
    x0, y0, x1, y1 = b.boxes[0].astype(int)
    exact = scene_tensors(b, (y1 - y0, x1 - x0))["crops"][0]
    assert torch.allclose(exact, torch.from_numpy(b.image[y0:y1, x0:x1]).permute(2, 0, 1).float() / 255, atol=1e-6)


def test_generator_is_deterministic_per_seed():
    first, again = make_scenes(4, seed=7), make_scenes(4, seed=7)
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and a.scanpaths == b.scanpaths and a.target == b.target
    alone = make_scene(3, seed=7)
    assert np.array_equal(alone.image, first[3].image) and alone.scanpaths == first[3].scanpaths
    other = make_scene(3, seed=8)
    assert not np.array_equal(other.image, first[3].image)


def test_guided_searcher_limits():
    centres = np.array([[50.0, 50.0], [10.0, 50.0], [90.0, 50.0], [90.0, 90.0]])
    features = np.array([[0, 0, 0], [1, 0, 0], [2, 1, 1], [2, 2, 2]])  # object 1 shares the colour/texture of 0
    rng = np.random.default_rng(0)
    exact = dict(refixation_prob=0.0, revisit_prob=0.0, detection_prob=1.0, confirm_prob=0.0)
    # pure guidance: straight to the target
    assert GuidedSearch(guidance=200, distance_cost=0, **exact).search(centres, features, 3, (100, 100), rng) == [3]
    # pure distance cost from the centre: the object at the centre first, each object once, the target last
    path = GuidedSearch(guidance=0, distance_cost=500, **exact).search(centres, features, 3, (100, 100), rng)
    assert path[0] == 0 and path[-1] == 3 and len(set(path)) == len(path)
    # similarity: weighted fraction of shared (colour, shape, texture)
    sim = GuidedSearch(colour_weight=1, shape_weight=0.5, texture_weight=0.5).similarity(features, 0)
    assert sim.tolist() == pytest.approx([1.0, 0.75, 0.0, 0.0])  # object 1: colour 1 + texture 0.5 of 2
    with pytest.raises(ValueError, match="revisit_prob must be a probability"):
        GuidedSearch(revisit_prob=1.5)


def test_synthetic_humans_end_on_the_target():
    scenes = make_scenes(20, seed=0)
    paths = [(p, s.target) for s in scenes for p in s.scanpaths]
    assert np.mean([p[-1] == t for p, t in paths]) > 0.9
    assert all(1 <= len(p) <= GuidedSearch().max_fixations for p, _ in paths)

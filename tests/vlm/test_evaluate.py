"""vizoo.vlm.evaluate: CHAIR and POPE on hand-made cases with values worked out by hand."""
import json

import pytest

from vizoo.vlm.evaluate import (
    COCO_SYNONYMS,
    chair,
    chair_from_files,
    coco_mentions,
    pope,
    pope_answer,
    pope_from_files,
    singular,
)


def test_word_list():
    assert len(COCO_SYNONYMS) == 80
    owners = {}
    for category, synonyms in COCO_SYNONYMS.items():
        for synonym in synonyms:
            key = " ".join(singular(w) for w in synonym.split())
            assert owners.setdefault(key, category) == category, f"{synonym!r} is in two categories"


def test_mentions_by_hand():
    text = "Two men at a dining table with hot dogs, a teddy bear, two bears, buses, knives and a cellphone."
    assert coco_mentions(text) == ["person", "dining table", "hot dog", "teddy bear", "bear", "bus", "knife",
                                   "cell phone"]
    assert coco_mentions("A glass of water on the grass.") == []


def test_chair_by_hand():
    objects = {"1": ["dog", "person"], "2": ["pizza", "dining table"], "3": ["cat"]}
    captions = {
        "1": "A man walks his dog past a car.",  # person, dog, car: 1 hallucinated of 3
        "2": "A pizza on a table.",  # pizza, table: none hallucinated
        "3": "A cat and a dog and another dog.",  # cat, dog, dog: 2 hallucinated mentions
    }
    result = chair(captions, objects)
    assert result["chair_s"] == pytest.approx(2 / 3)
    assert result["chair_i"] == pytest.approx(3 / 8) and result["mentions"] == 8
    assert result["recall"] == pytest.approx(5 / 5)
    assert result["length"] == pytest.approx((8 + 5 + 8) / 3)
    with pytest.raises(ValueError, match="not COCO category names"):
        chair(captions, {"1": ["doggo"]})


def test_pope_by_hand():
    assert pope_answer("Yes, there is a dog.") == "yes"
    assert pope_answer("No, there is no dog.") == "no"
    assert pope_answer("There is not a dog in the image. Yes.") == "no"
    assert pope_answer("I see a dog. No doubt.") == "yes"  # only the first sentence counts
    labels = ["yes", "yes", "yes", "no", "no"]
    answers = ["Yes", "yes.", "No", "Yes", "no"]  # TP 2, FN 1, FP 1, TN 1
    result = pope(labels, answers)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3) and result["yes_ratio"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope(["maybe"], ["yes"])


def test_files(tmp_path):
    instances = {"images": [{"id": 7, "file_name": "a.jpg"}], "categories": [{"id": 18, "name": "dog"}],
                 "annotations": [{"image_id": 7, "category_id": 18}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "answers.jsonl").write_text(json.dumps({"image": "/x/a.jpg", "answer": "A dog and a cat."}) + "\n")
    result = chair_from_files(tmp_path / "answers.jsonl", tmp_path / "instances.json")
    assert result["chair_s"] == 1.0 and result["chair_i"] == 0.5
    questions = [{"question_id": i, "image": "a.jpg", "text": "Is there a dog?", "label": label}
                 for i, label in enumerate(["yes", "no"])]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in questions))
    (tmp_path / "p.jsonl").write_text(json.dumps({"question_id": 0, "answer": "yes"}) + "\n")
    with pytest.raises(ValueError, match="1 questions have no answer"):
        pope_from_files(tmp_path / "p.jsonl", tmp_path / "q.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1 is not JSON"):
        pope_from_files(tmp_path / "bad.jsonl", tmp_path / "q.jsonl")

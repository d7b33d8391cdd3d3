"""Hallucination metrics for VLM answers: CHAIR over captions and POPE over yes/no questions.

CHAIR (Rohrbach, Hendricks, Burns, Darrell, Saenko. "Object Hallucination in Image Captioning." EMNLP 2018):
the COCO objects a caption mentions are found through a word list (the 80 COCO categories with their
synonyms; two-word names are matched before single words, so "hot dog" is food and "teddy bear" a toy);
a mention is hallucinated when its category is not among the image's annotated objects.

    CHAIR_S = captions with at least one hallucinated mention / captions
    CHAIR_I = hallucinated mentions / all object mentions (every mention counts, as in the reference code)

also reported: recall (annotated objects mentioned / annotated objects, per caption, summed) and the mean
caption length in words. The synonym lists are vizoo's own (plural and singular forms are matched by one
simple singulariser), not the reference code's file, so counts can differ from it on rare words.

POPE (Li, Du, Zhou, Wang, Zhao, Wen. "Evaluating Object Hallucination in Large Vision-Language Models."
EMNLP 2023): each answer becomes "no" when the first sentence contains the word "no" or "not", else "yes"
(POPE's rule); "yes" is the positive class for precision, recall and F1; yes-ratio is the share of "yes".
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "guy",
               "lady", "gentleman", "adult", "teenager", "player", "skier", "surfer", "skateboarder",
               "snowboarder", "pedestrian", "rider", "biker", "cyclist", "passenger"),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "automobile", "taxi", "cab", "sedan", "suv", "van", "jeep"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter", "moped"),
    "airplane": ("airplane", "aeroplane", "plane", "jet", "aircraft", "airliner"),
    "bus": ("bus", "minibus"),
    "train": ("train", "locomotive", "tram", "subway"),
    "truck": ("truck", "pickup", "lorry"),
    "boat": ("boat", "ship", "kayak", "canoe", "sailboat", "yacht", "ferry"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "parrot", "eagle", "owl", "swan", "sparrow"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup"),
    "horse": ("horse", "pony", "foal"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "ox"),
    "elephant": ("elephant",),
    "bear": ("bear",),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("tie", "necktie"),
    "suitcase": ("suitcase", "luggage", "baggage"),
    "frisbee": ("frisbee",),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard",),
    "sports ball": ("sports ball", "ball", "football", "soccer ball", "basketball", "tennis ball", "volleyball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass"),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "plant", "flowerpot"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk"),
    "toilet": ("toilet",),
    "tv": ("tv", "television", "tv screen"),
    "laptop": ("laptop", "computer"),
    "mouse": ("mouse",),
    "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "cellphone", "phone", "smartphone", "mobile phone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book", "novel"),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush",),
}

_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "knives": "knife", "geese": "goose", "oxen": "ox", "calves": "calf", "teeth": "tooth"}


def singular(word: str) -> str:
    """A small English singulariser, applied alike to captions and to the word lists."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes", "uses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _phrase_map() -> dict[str, str]:
    return {" ".join(singular(w) for w in syn.split()): category
            for category, synonyms in COCO_SYNONYMS.items() for syn in synonyms}


_PHRASES = _phrase_map()


def coco_mentions(caption: str) -> list[str]:
    """The COCO categories a caption mentions, once per mention, in order (two-word names first)."""
    words = [singular(w) for w in re.findall(r"[a-z]+", caption.lower())]
    found, i = [], 0
    while i < len(words):
        pair = " ".join(words[i: i + 2]) if i + 1 < len(words) else None
        if pair in _PHRASES:
            found.append(_PHRASES[pair])
            i += 2
        elif words[i] in _PHRASES:
            found.append(_PHRASES[words[i]])
            i += 1
        else:
            i += 1
    return found


def chair(captions: Mapping[str, str], objects: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """CHAIR over ``captions`` (image id -> caption) against ``objects`` (image id -> COCO category names).

    Returns chair_s, chair_i, recall, mean length (words), and the counts behind them.
    """
    unknown = sorted({o for objs in objects.values() for o in objs} - set(COCO_SYNONYMS))
    if unknown:
        raise ValueError(f"annotation objects {unknown[:10]} are not COCO category names (e.g. 'dining table')")
    missing = [k for k in captions if k not in objects]
    if missing:
        raise ValueError(f"{len(missing)} captioned images have no annotation (first: {missing[:3]})")
    if not captions:
        raise ValueError("no captions to evaluate")
    hallucinated_captions = mentions = hallucinated = covered = annotated = words = 0
    for image_id, caption in captions.items():
        truth = set(objects[image_id])
        found = coco_mentions(caption)
        bad = sum(c not in truth for c in found)
        hallucinated_captions += bad > 0
        mentions += len(found)
        hallucinated += bad
        covered += len(truth & set(found))
        annotated += len(truth)
        words += len(caption.split())
    n = len(captions)
    return {"chair_s": hallucinated_captions / n, "chair_i": hallucinated / mentions if mentions else 0.0,
            "recall": covered / annotated if annotated else 0.0, "length": words / n, "captions": n,
            "mentions": mentions, "hallucinated_mentions": hallucinated}


def pope_answer(text: str) -> str:
    """POPE's reading of a free-form answer: "no" if its first sentence has the word no or not, else "yes"."""
    first = text.split(".")[0].replace(",", " ").lower()
    return "no" if {"no", "not"} & set(first.split()) else "yes"


def pope(labels: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = "yes") and yes-ratio of free-form ``answers``."""
    if len(labels) != len(answers) or not labels:
        raise ValueError(f"need as many answers as labels, and at least one (got {len(answers)} answers and "
                         f"{len(labels)} labels)")
    bad = sorted({label for label in labels if label not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad[:5]}")
    predicted = [pope_answer(a) for a in answers]
    tp = sum(p == y == "yes" for p, y in zip(predicted, labels))
    fp = sum(p == "yes" != y for p, y in zip(predicted, labels))
    fn = sum(p == "no" != y for p, y in zip(predicted, labels))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(labels), "questions": len(labels)}


# ------------------------------------------------------------------------------------------------ files
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 JSON-lines file ({error})") from error
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line")
            records.append(record)
    return records


def _image_key(record: Mapping) -> str:
    if "image_id" in record:
        return str(record["image_id"])
    if "image" in record:
        return Path(str(record["image"])).name
    raise ValueError(f"an answer record needs 'image_id' or 'image': {dict(record)}")


def _text(record: Mapping, keys=("answer", "caption", "text")) -> str:
    for key in keys:
        if key in record:
            return str(record[key])
    raise ValueError(f"a record needs one of {keys}: {dict(record)}")


def load_objects(path: str | os.PathLike) -> dict[str, list[str]]:
    """Objects per image from a COCO instances file (keys: image id and file name) or a plain
    ``{image: [category names]}`` JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "annotations" in data and "categories" in data:
        names = {c["id"]: c["name"] for c in data["categories"]}
        objects: dict[str, set[str]] = defaultdict(set)
        for ann in data["annotations"]:
            objects[str(ann["image_id"])].add(names[ann["category_id"]])
        for image in data.get("images", []):
            objects[image["file_name"]] = objects[str(image["id"])]
        return {k: sorted(v) for k, v in objects.items()}
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return {str(k): list(v) for k, v in data.items()}
    raise ValueError(f"{path}: expected COCO instances JSON (annotations, categories, images) or "
                     "{image: [category names]}")


def chair_from_files(answers: str | os.PathLike, annotations: str | os.PathLike) -> dict[str, float]:
    captions = {_image_key(r): _text(r) for r in read_jsonl(answers)}
    return chair(captions, load_objects(annotations))


def pope_from_files(answers: str | os.PathLike, questions: str | os.PathLike) -> dict[str, float]:
    """POPE from a question file (question_id, label) and an answer file (question_id or id, answer)."""
    questions = read_jsonl(questions)
    by_id = {str(r.get("question_id", r.get("id"))): _text(r) for r in read_jsonl(answers)}
    missing = [str(q.get("question_id")) for q in questions if str(q.get("question_id")) not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} questions have no answer (first ids: {missing[:5]})")
    labels = [str(q["label"]).strip().lower() for q in questions]
    return pope(labels, [by_id[str(q["question_id"])] for q in questions])

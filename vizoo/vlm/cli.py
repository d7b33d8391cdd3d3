"""``vizoo carve``, ``vizoo paint`` and ``vizoo vlm-eval``.

``carve`` and ``paint`` load a Hugging Face VLM (a Hub id or a local folder), answer questions about images
and write ``OUT/answers.jsonl`` (one JSON object per question, appended as each finishes, so a rerun resumes
where it stopped) and one PNG per question in ``OUT/maps/`` (CARVE: the fused contrast map and the kept
regions; PAINT: the first-layer CLS attention and the boosted tokens). ``vlm-eval`` scores answer files with
CHAIR or POPE and writes the metrics as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vizoo.utils import atomic_write_text

PAINT_PROMPT = "Please help me describe the image in detail."  # PAINT's CHAIR prompt


# ------------------------------------------------------------------------------------------------ shared
def _common(parser: argparse.ArgumentParser, question_default: str | None) -> None:
    parser.add_argument("--model", required=True,
                        help="Hugging Face model id or local folder (with its processor)")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    parser.add_argument("--question", default=question_default,
                        help="the question asked about every --image" + (f" (default: {question_default!r})"
                                                                         if question_default else ""))
    parser.add_argument("--questions",
                        help="JSONL file with one {question_id, image, text} per line (POPE's format)")
    parser.add_argument("--image-root", default=".",
                        help="folder that relative image paths in --questions start from")
    parser.add_argument("--out", required=True, help="output folder (answers.jsonl, maps/)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")


def _layers(text: str) -> list[int]:
    """'20-25' or '2-' (to the last layer, returned as [2, -1]) or '3,5,7'."""
    try:
        if "-" in text:
            start, _, end = text.partition("-")
            return list(range(int(start), int(end) + 1)) if end else [int(start), -1]
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must look like '20-25', '2-' or '3,5,7', got {text!r}") \
            from None


def _items(args) -> list[dict]:
    """The questions to answer: {id, image, question} records."""
    from PIL import Image, UnidentifiedImageError

    from vizoo.vlm.evaluate import read_jsonl

    if args.questions and args.image:
        raise ValueError("give either --image (with --question) or --questions, not both")
    if args.questions:
        items = []
        root = Path(args.image_root)
        for n, record in enumerate(read_jsonl(args.questions)):
            if "image" not in record or not any(k in record for k in ("text", "question")):
                raise ValueError(f"{args.questions}: record {n + 1} needs 'image' and 'text' (or 'question')")
            image = Path(record["image"])
            items.append({"id": str(record.get("question_id", n)), "image": str(image if image.is_absolute()
                                                                              else root / image),
                          "question": str(record.get("text", record.get("question")))})
    elif args.image:
        if not args.question or not args.question.strip():
            raise ValueError("the question is empty; pass --question TEXT with --image")
        items = [{"id": f"{n:05d}-{Path(p).stem}", "image": p, "question": args.question} for n, p in
                 enumerate(args.image)]
    else:
        raise ValueError("nothing to do: give --image FILE [--image FILE ...] with --question, or "
                         "--questions FILE")
    items = items[: args.limit] if args.limit is not None else items
    for item in items:  # check every input before the model loads
        if not item["question"].strip():
            raise ValueError(f"question {item['id']} is empty")
        if not Path(item["image"]).is_file():
            raise FileNotFoundError(f"image file not found: {item['image']} (question {item['id']})")
        try:
            Image.open(item["image"]).close()  # reads the header only
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{item['image']} does not decode as an image ({error}); "
                             f"question {item['id']}") from error
    return items


class AnswerLog:
    """``answers.jsonl`` that a rerun resumes: whole lines are appended and flushed; a torn last line (a killed
    run) is dropped when the file is opened again."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            lines, good = path.read_text().splitlines(), []
            for line in lines:
                try:
                    self.done.add(str(json.loads(line)["id"]))
                    good.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass
            if len(good) != len(lines):
                atomic_write_text(path, "".join(line + "\n" for line in good))

    def add(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(str(record["id"]))


def load_model(name: str, device: str | None, dtype: str):
    """(model, processor) from a Hub id or a local folder; the model is in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(name).expanduser()
    if local.exists():
        name = str(local)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {name} (give a local folder or a Hub id like org/name)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs).to(device).eval()
    return model, AutoProcessor.from_pretrained(name)


def _run(items: list[dict], out: Path, answer) -> int:
    """Answer each item not yet in OUT/answers.jsonl with ``answer(item, png_path) -> dict``; returns how many
    were answered now."""
    from rich.progress import track

    (out / "maps").mkdir(parents=True, exist_ok=True)
    log = AnswerLog(out / "answers.jsonl")
    todo = [item for item in items if item["id"] not in log.done]
    if len(todo) < len(items):
        print(f"resuming: {len(items) - len(todo)} of {len(items)} questions already answered in {log.path}")
    for item in track(todo, description="answering", disable=not todo):
        record = dict(item, **answer(item, out / "maps" / f"{_safe(item['id'])}.png"))
        log.add(record)
    print(f"wrote {log.path} ({len(log.done)} answers) and maps in {out / 'maps'}")
    return len(todo)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _iter_layers(layers: list[int], num_layers: int) -> list[int]:
    return list(range(layers[0], num_layers)) if len(layers) == 2 and layers[1] == -1 else layers


# ------------------------------------------------------------------------------------------------ carve
def carve_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vizoo carve", description="Answer questions about images with CARVE "
                                     "(contrastive attention refinement).")
    _common(parser, None)
    parser.add_argument("--layers", type=_layers, default=list(range(20, 26)),
                        help="decoder layers (default 20-25)")
    parser.add_argument("--top-p", type=float, default=0.2, help="fraction of pixels in the mask, in (0, 1]")
    parser.add_argument("--regions", type=int, default=3, help="minimum number of connected regions kept")
    parser.add_argument("--region-strategy", default="attention_sum", choices=("attention_sum", "size"))
    parser.add_argument("--steps", default="all", choices=("all", "first", "last"))
    parser.add_argument("--final", default="both", choices=("both", "refined"),
                        help="answer from original + refined image (official code) or the refined one (paper)")
    parser.add_argument("--lam", type=float, default=1e-8)
    parser.add_argument("--no-cache", action="store_true",
                        help="rerun the whole sequence per token (official style)")
    parser.add_argument("--compile", action="store_true",
                        help="static KV cache and, on a GPU, a compiled decode step (CUDA graphs): the first "
                             "questions compile (minutes at 7B size), later ones run several times faster")
    args = parser.parse_args(argv)
    if args.compile and args.no_cache:
        parser.error("--compile needs the KV cache; drop --no-cache")
    from vizoo.vlm.carve import _check_p

    _check_p(args.top_p)
    items = _items(args)
    from vizoo.vlm import carve, get_adapter
    from vizoo.vlm.images import load_image, save_overlay

    model, processor = load_model(args.model, args.device, args.dtype)
    layers = get_adapter(model).check_layers(_iter_layers(args.layers, get_adapter(model).num_layers), "--layers")

    previous: dict = {}  # the last image's result: its general-instruction pass serves the next question on it

    def answer(item: dict, png: Path) -> dict:
        image = load_image(item["image"])
        general = previous.get(item["image"])
        result = carve(model, processor, image, item["question"], layers=layers, steps=args.steps, lam=args.lam,
                       top_p=args.top_p, regions=args.regions, region_strategy=args.region_strategy,
                       final=args.final, max_new_tokens=args.max_new_tokens, use_cache=not args.no_cache,
                       general=general, compile=args.compile)
        previous.clear()
        previous[item["image"]] = result
        title = f"{item['question']} -> {result.answer}"
        save_overlay(image, result.saliency, png, title=title, mask=result.mask)
        return {"answer": result.answer, "box": list(result.box), "task_answer": result.task_answer}

    _run(items, Path(args.out), answer)


# ------------------------------------------------------------------------------------------------ paint
def paint_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vizoo paint", description="Generate answers or captions with PAINT "
                                     "(boosted attention to informative image tokens).")
    _common(parser, PAINT_PROMPT)
    parser.add_argument("--alpha", type=float, default=0.7, help="boost of the local tokens")
    parser.add_argument("--beta", type=float, default=0.4, help="boost of the summary tokens")
    parser.add_argument("--gamma", type=float, default=0.1,
                        help="text-only correction (PAI's gamma - 1; 0 = off)")
    parser.add_argument("--layers", type=_layers, default=[2, -1],
                        help="decoder layers (default 2- : 2 to the last)")
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of patches taken as local tokens")
    parser.add_argument("--spatial-ratio", type=float, default=0.0)
    parser.add_argument("--head-specific", action="store_true", help="scale the boost per head (v1 paper idea)")
    args = parser.parse_args(argv)
    items = _items(args)
    import numpy as np
    import torch
    from PIL import Image

    from vizoo.vlm import get_adapter, paint
    from vizoo.vlm.carve import greedy_config
    from vizoo.vlm.images import load_image, save_overlay

    model, processor = load_model(args.model, args.device, args.dtype)
    adapter = get_adapter(model)
    layers = _iter_layers(args.layers, adapter.num_layers)
    config = greedy_config(model, args.max_new_tokens)
    with paint(model, processor, alpha=args.alpha, beta=args.beta, gamma=args.gamma, layers=layers,
               ratio=args.ratio, spatial_ratio=args.spatial_ratio, head_specific=args.head_specific) as painter:

        def answer(item: dict, png: Path) -> dict:
            image = load_image(item["image"])
            inputs = adapter.inputs(processor, [image], item["question"])
            with torch.no_grad():
                ids = model.generate(**inputs, generation_config=config)[:, inputs["input_ids"].shape[1]:]
            text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
            selection = painter.last["selection"]
            rows, cols = adapter.image_grid(inputs)
            chosen = np.zeros(rows * cols, bool)
            chosen[selection.local.cpu().numpy()] = chosen[selection.summary.cpu().numpy()] = True
            heat = selection.first_layer.reshape(rows, cols).cpu().numpy()
            grid = Image.fromarray(chosen.reshape(rows, cols).astype(np.uint8) * 255)
            mask = np.asarray(grid.resize(image.size, Image.NEAREST)) > 0
            save_overlay(image, heat, png, title=text, mask=mask)
            return {"answer": text, "local_tokens": selection.local.tolist(),
                    "summary_tokens": selection.summary.tolist()}

        _run(items, Path(args.out), answer)


# ------------------------------------------------------------------------------------------------ vlm-eval
def eval_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vizoo vlm-eval", description="Score VLM answers: CHAIR (captions vs "
                                     "COCO objects) or POPE (yes/no questions).")
    sub = parser.add_subparsers(dest="metric", required=True)
    c = sub.add_parser("chair", help="CHAIR_S / CHAIR_I of captions")
    c.add_argument("--answers", required=True, help="answers.jsonl (image or image_id, answer or caption)")
    c.add_argument("--annotations", required=True, help="COCO instances JSON, or {image: [category names]}")
    p = sub.add_parser("pope", help="POPE accuracy / precision / recall / F1 / yes-ratio")
    p.add_argument("--answers", required=True, help="answers.jsonl (question_id or id, answer)")
    p.add_argument("--questions", required=True, help="POPE question file (question_id, label)")
    for s in (c, p):
        s.add_argument("--out", help="write the metrics here as JSON")
    args = parser.parse_args(argv)
    from vizoo.vlm import evaluate

    if args.metric == "chair":
        metrics = evaluate.chair_from_files(args.answers, args.annotations)
    else:
        metrics = evaluate.pope_from_files(args.answers, args.questions)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)

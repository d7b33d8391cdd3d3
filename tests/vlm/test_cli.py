"""``vizoo carve``, ``vizoo paint`` and ``vizoo vlm-eval`` end to end on tiny models saved to disk."""
import json

import numpy as np
import pytest
from PIL import Image
from vlm_testlib import tiny_llava

from vizoo.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_cli")
    model, processor = tiny_llava()
    model.save_pretrained(root / "tiny-llava")
    processor.save_pretrained(root / "tiny-llava")
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "broken.png").write_text("not an image")
    return root


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_carve_command_writes_answers_and_maps_and_resumes(workdir, capsys):
    out = workdir / "carve"
    base = ["carve", "--model", str(workdir / "tiny-llava"), "--question", "what is this ?", "--layers", "0-2",
            "--max-new-tokens", "3", "--out", str(out)]
    main(base + ["--image", str(workdir / "0.png")])
    main(base + ["--image", str(workdir / "0.png"), "--image", str(workdir / "1.png")])  # resumes: one new answer
    records = _lines(out / "answers.jsonl")
    assert [r["id"] for r in records] == ["00000-0", "00001-1"]
    assert all(isinstance(r["answer"], str) and len(r["box"]) == 4 for r in records)
    assert "resuming: 1 of 2" in capsys.readouterr().out
    for r in records:
        with Image.open(out / "maps" / f"{r['id']}.png") as png:
            assert png.format == "PNG"
    with open(out / "answers.jsonl", "a") as f:
        f.write('{"id": "torn')  # a run killed mid-line
    main(base + ["--image", str(workdir / "0.png")])
    assert len(_lines(out / "answers.jsonl")) == 2


def test_paint_command_and_pope(workdir):
    questions = workdir / "pope.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"{i}.png", "text": "Is there a dog ?",
                                               "label": label}) for i, label in enumerate(["yes", "no"])))
    out = workdir / "paint"
    main(["paint", "--model", str(workdir / "tiny-llava"), "--questions", str(questions), "--image-root",
          str(workdir), "--max-new-tokens", "2", "--out", str(out)])
    records = _lines(out / "answers.jsonl")
    assert [r["id"] for r in records] == ["0", "1"] and (out / "maps" / "1.png").is_file()
    assert all(len(r["local_tokens"]) + len(r["summary_tokens"]) >= 1 for r in records)
    main(["vlm-eval", "pope", "--answers", str(out / "answers.jsonl"), "--questions", str(questions),
          "--out", str(out / "pope.json")])
    metrics = json.loads((out / "pope.json").read_text())
    from vizoo.vlm.evaluate import pope, pope_answer

    assert metrics == pope(["yes", "no"], [r["answer"] for r in records])
    assert metrics["yes_ratio"] == sum(pope_answer(r["answer"]) == "yes" for r in records) / 2


def test_chair_command(workdir):
    (workdir / "captions.jsonl").write_text(json.dumps({"image": "0.png", "answer": "A dog on a sofa."}) + "\n")
    (workdir / "objects.json").write_text(json.dumps({"0.png": ["dog"]}))
    main(["vlm-eval", "chair", "--answers", str(workdir / "captions.jsonl"), "--annotations",
          str(workdir / "objects.json"), "--out", str(workdir / "chair.json")])
    assert json.loads((workdir / "chair.json").read_text())["chair_i"] == 0.5  # the sofa is not annotated


@pytest.mark.parametrize("args, message", [
    (["--image", "{w}/broken.png", "--question", "what ?"], "does not decode"),
    (["--image", "{w}/0.png", "--question", " "], "question is empty"),
    (["--image", "{w}/0.png", "--question", "what ?", "--top-p", "1.5"], "top_p must be in"),
    (["--image", "{w}/missing.png", "--question", "what ?"], "image file not found"),
    (["--image", "{w}/0.png", "--question", "what ?", "--layers", "20-25"], "3 decoder layers"),
    (["--image", "{w}/0.png", "--question", "what ?", "--compile", "--no-cache"], "--compile needs the KV cache"),
], ids=["undecodable", "empty-question", "p", "missing", "layers", "compile-no-cache"])
def test_carve_command_bad_input(workdir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["carve", "--model", str(workdir / "tiny-llava"), "--out", str(workdir / "bad")]
             + [a.format(w=workdir) for a in args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err

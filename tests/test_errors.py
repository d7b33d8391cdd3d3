"""One error style across vizoo's commands: one line that names what was wrong and what is accepted, a non-zero
exit for every refusal, and "did you mean" only for close names."""
from __future__ import annotations

import pytest
import torch

from vizoo.cli import main


def _fail(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("INFO: ")]  # Lightning's own notes
    assert len(lines) == 1, lines
    return lines[0]


def test_models_with_no_match_is_an_error(capsys):
    assert "no vizoo model matches 'zz*'" in _fail(capsys, ["models", "zz*"])
    assert "Did you mean 'nat_tiny'?" in _fail(capsys, ["models", "nat_tny"])


def test_did_you_mean_names_only_close_names(capsys):
    line = _fail(capsys, ["fit", "--data.dataset", "nope", "--trainer.accelerator", "cpu"])
    assert "unknown dataset 'nope'" in line and "Did you mean" not in line
    assert "Did you mean 'digits'?" in _fail(capsys, ["fit", "--data.dataset", "digit", "--trainer.accelerator", "cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_without_cuda_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench"])
    assert info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_argparse_errors_are_one_line(capsys):
    line = _fail(capsys, ["hub", "export", "nat_mini", "out", "--model-kwargs", "{bad"])
    assert "argument --model-kwargs: not valid JSON" in line and "'{bad'" in line
    assert "must be a JSON object" in _fail(capsys, ["hub", "export", "nat_mini", "out", "--model-kwargs", "[1]"])


def test_offline_pretrained_says_where_weights_come_from(monkeypatch):
    import timm
    from huggingface_hub import constants

    import vizoo  # noqa: F401

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as info:
        timm.create_model("nat_mini", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "nat_mini.in1k: pretrained weights come from the Hugging Face Hub repository shi-labs/" in message
    assert "HF_HUB_OFFLINE=1 forbids downloads" in message and "pretrained_cfg_overlay=dict(file=" in message


def test_unreadable_image_names_the_file(tmp_path):
    from vizoo.data.folder import ImageFiles

    (tmp_path / "ok.png").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files = ImageFiles(str(tmp_path))
    for i, path in enumerate(files.paths):
        with pytest.raises(ValueError, match=f"cannot read image {path}"):
            files[i]

"""``vizoo bench``: what runs without a GPU (the tables it writes, its refusal on a CPU-only machine).

The benchmark itself runs on the H200 (docs/benchmarks.md); its kernels are checked by the ``gpu`` tests.
"""
import pytest
import torch

from vizoo.bench import CASES, main, markdown_table


def test_markdown_table_formats_and_aligns_columns():
    rows = [dict(case="a", t=1234.56, r=2.345, e=3.2e-6), dict(case="b", t=float("nan"), extra=7)]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| case | t | r | e | extra |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| a | 1234.6 | 2.35 | 3.2e-06 |  |"
    assert lines[3] == "| b | n/a |  |  | 7 |"


def test_cases_cover_the_issue_shapes():
    names = {c.name for c in CASES}
    for stage, size, heads in ((1, 56, 2), (2, 28, 4), (3, 14, 8), (4, 7, 16)):
        assert f"NAT-T s{stage} {size}x{size} h{heads}" in names
        assert f"NAT-T s{stage} {size}x{size} h{heads} +rpb" in names
    hires = next(c for c in CASES if c.name.startswith("hi-res"))
    assert (hires.size, hires.kernel, hires.dim, hires.heads, hires.batch) == ((128, 128), 13, 64, 8, 4)
    assert any(c.dilation == 8 and c.size == (56, 56) for c in CASES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_main_refuses_without_cuda(capsys):
    assert main(["--cases", "s4"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err

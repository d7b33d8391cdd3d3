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


# ----------------------------------------------------------------------------------------------------------
# the Flex peer's arithmetic mask
@pytest.mark.parametrize("size,kernel,dilation", [((9, 7), 3, 1), ((11, 10), 3, 3), ((14, 14), 7, 2),
                                                  ((8, 13), 4, 2), ((7, 7), 7, 1)])
def test_na_mask_mod_matches_the_reference_windows(size, kernel, dilation):
    from vizoo.bench import na_mask_mod
    from vizoo.kernels.neighborhood.reference import neighborhood_indices

    n = size[0] * size[1]
    key, valid, _ = neighborhood_indices(size, (kernel,) * 2, (dilation,) * 2, (1, 1), (False, False))
    expected = torch.zeros(n, n, dtype=torch.bool)
    expected[torch.arange(n)[:, None], key] = valid
    idx = torch.arange(n)
    got = na_mask_mod(*size, kernel, dilation)(0, 0, idx[:, None], idx[None, :])
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------------------------------------
# timm's benchmark.py wrapper
def test_timm_benchmark_command_is_what_a_timm_user_runs():
    from vizoo.bench import timm_benchmark_command

    eager = timm_benchmark_command("/t/benchmark.py", "/tmp/m.txt", "/tmp/r.json", "eager")
    compiled = timm_benchmark_command("/t/benchmark.py", "/tmp/m.txt", "/tmp/r.json", "compiled", batch=64)
    assert eager[1] == "-c" and "vizoo" in eager[2]  # the runner imports vizoo, then runs the script
    args = eager[3:]
    assert args[0] == "/t/benchmark.py"
    assert args[args.index("--model-list") + 1] == "/tmp/m.txt"
    assert args[args.index("--bench") + 1] == "both"
    assert "--amp" in args and args[args.index("--amp-dtype") + 1] == "bfloat16"
    assert args[args.index("-b") + 1] == "256" and compiled[compiled.index("-b") + 1] == "64"
    assert "--channels-last" not in args and "--torchcompile" not in args
    assert compiled[-1] == "--torchcompile"
    assert timm_benchmark_command("/t/benchmark.py", "m", "r", "channels-last")[-1] == "--channels-last"
    graphs = timm_benchmark_command("/t/benchmark.py", "m", "r", "cudagraphs")
    assert graphs[-3:] == ["--torchcompile", "--torchcompile-mode", "reduce-overhead"]
    with pytest.raises(ValueError, match="unknown mode 'jit'"):
        timm_benchmark_command("/t/benchmark.py", "m", "r", "jit")


def test_timm_table_ratios_and_missing_models():
    from vizoo.bench import timm_table

    results = {"eager": [dict(model="nat_tiny", infer_samples_per_sec=300.0, train_samples_per_sec=90.0),
                         dict(model="swin_tiny", infer_samples_per_sec=200.0, train_samples_per_sec=100.0)],
               "compiled": [dict(model="swin_tiny", infer_samples_per_sec=400.0, train_samples_per_sec=120.0),
                            dict(model="nat_tiny", error="CUDA out of memory")]}
    rows = timm_table(results, pairs=[("nat_tiny", "swin_tiny")])
    assert [r["mode"] for r in rows] == ["eager", "compiled"]
    assert rows[0]["infer ratio"] == pytest.approx(1.5) and rows[0]["train ratio"] == pytest.approx(0.9)
    assert "note" not in rows[0]
    assert rows[1]["infer img/s"] != rows[1]["infer img/s"]  # nan
    assert "CUDA out of memory" in rows[1]["note"]


FAKE_BENCHMARK = '''
import json, sys, timm
args = sys.argv[1:]
assert "vizoo" in sys.modules and timm.is_model("nat_tiny"), "vizoo was not imported first"
names = open(args[args.index("--model-list") + 1]).read().split()
rate = 2.0 if "--torchcompile" in args else 1.0
out = [dict(model=n, infer_samples_per_sec=rate * (i + 1), train_samples_per_sec=rate)
       for i, n in enumerate(names)]
json.dump(out, open(args[args.index("--results-file") + 1], "w"))
'''


def test_run_timm_benchmark_runs_the_script_after_importing_vizoo(tmp_path):
    from vizoo.bench import run_timm_benchmark

    (tmp_path / "benchmark.py").write_text(FAKE_BENCHMARK)
    rows = run_timm_benchmark(str(tmp_path), pairs=[("nat_tiny", "swin_tiny_patch4_window7_224")],
                              log=lambda s: None)
    assert [(r["mode"], r["infer img/s"], r["peer infer img/s"]) for r in rows] == [
        ("eager", 1.0, 2.0), ("compiled", 2.0, 4.0)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_timm_mode_checks_the_path_then_refuses_without_cuda(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no timm benchmark script"):
        main(["--timm", str(tmp_path)])
    (tmp_path / "benchmark.py").write_text("raise SystemExit('must not run')")
    assert main(["--timm", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_timm_modes_and_models_are_checked_before_anything_runs(tmp_path, capsys):
    (tmp_path / "benchmark.py").write_text("raise SystemExit('must not run')")
    with pytest.raises(SystemExit):
        main(["--timm", str(tmp_path), "--timm-modes", "eager,jit"])
    assert "unknown ['jit']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--timm", str(tmp_path), "--timm-models", "resnet50"])
    assert "none of ['resnet50'] is paired" in capsys.readouterr().err
    assert main(["--timm", str(tmp_path), "--timm-modes", "channels-last", "--timm-models", "nat_tiny"]) == 2


def test_rpb_chunk_passes_are_checked_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        main(["--rpb-chunk-passes", "fwd,dkvd"])
    assert "unknown dkvd; accepted: fwd, bwd, dkdv, dsum" in capsys.readouterr().err


def test_gpu_memory_models_are_checked_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        main(["--gpu-memory", "--timm-models", "nat_tinyy"])
    assert "none of ['nat_tinyy'] is paired; accepted: nat_tiny" in capsys.readouterr().err


def test_memory_table_compares_each_model_with_its_peer():
    from vizoo.bench import train_memory

    gib = 2**30
    fake = {"a": dict(input=[1, 3, 384, 384], built=1 * gib, peak=3 * gib),
            "peer": dict(input=[1, 3, 384, 384], built=1 * gib, peak=2 * gib)}
    calls = []
    rows = train_memory([("a", "peer"), ("a", "peer")], log=lambda s: None,
                      measure=lambda n: calls.append(n) or fake[n])
    assert calls == ["a", "peer"]  # each model measured once
    assert rows[0]["input"] == "1x3x384x384" and rows[0]["step GiB"] == pytest.approx(2.0)
    assert rows[0]["peak / peer"] == pytest.approx(1.5)


@pytest.mark.gpu
@pytest.mark.parametrize("size,kernel,dilation", [((56, 56), 7, 1), ((56, 56), 7, 8), ((28, 28), 7, 4)])
def test_flex_peer_computes_neighborhood_attention_gpu(size, kernel, dilation):
    """The bench's Flex peer (compiled flex_attention with the arithmetic mask) equals na2d's reference."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from vizoo.bench import na_mask_mod
    from vizoo.kernels import na2d

    q, k, v = (torch.randn(2, *size, 2, 32, device="cuda") for _ in range(3))
    n = size[0] * size[1]
    mask = create_block_mask(na_mask_mod(*size, kernel, dilation), None, None, n, n, device="cuda")
    flat = [t.flatten(1, 2).transpose(1, 2) for t in (q, k, v)]
    got = torch.compile(flex_attention, dynamic=False)(*flat, block_mask=mask)
    expected = na2d(q, k, v, kernel, dilation=dilation, backend="reference")
    torch.testing.assert_close(got.transpose(1, 2).reshape(q.shape), expected, atol=2e-5, rtol=1e-4)

"""tools/bench_vlm.py's timing loop: warm-ups first, then the repeats interleaved across cases; a case whose
warm-up fails is dropped with its error and the others are still timed."""
from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_vlm", ROOT / "tools" / "bench_vlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repeats_are_interleaved_and_a_failing_case_is_dropped():
    bench = _tool()
    log, calls = [], {"broken": 0}

    def case(name):
        return lambda: log.append(name)

    def broken():
        calls["broken"] += 1
        raise RuntimeError("no compiler")

    cases = {"a": (case("a"), lambda: log.append("setup a"), 2, False), "b": (case("b"), None, 1, False),
             "broken": (broken, None, 1, False)}
    results = bench.measure_all(cases, "cpu", repeats=3, model=None)
    timed = log[log.index("b") + 1:]  # after the warm-ups: a, a (two warm-ups, after its setup), b
    assert log[:4] == ["setup a", "a", "a", "b"]
    assert timed == ["setup a", "a", "b"] * 3
    assert len(results["a"]["all_seconds"]) == 3 and len(results["b"]["all_seconds"]) == 3
    assert results["a"]["seconds"] == sorted(results["a"]["all_seconds"])[1]
    assert "broken" not in results and "no compiler" in results["broken_error"] and calls["broken"] == 1

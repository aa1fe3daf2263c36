"""Benchmarks are not tests: this only checks that their smoke mode still runs (no timing asserts)."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_primitives_benchmark_smoke(capsys):
    results = runpy.run_path(str(ROOT / "benchmarks" / "primitives.py"), run_name="bench")["main"](["--smoke"])
    assert set(results) == {(m, i) for m in ("jit", "scan") for i in ("native", "im2col")}
    assert all(v > 0 for v in results.values())
    assert "vs native" in capsys.readouterr().out

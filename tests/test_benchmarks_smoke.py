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


def test_peers_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "peers.json"
    report = runpy.run_path(str(ROOT / "benchmarks" / "peers.py"), run_name="bench")["main"](
        ["--smoke", "--markdown", "--json", str(out)])
    rows = {(r["model"], r["runner"]) for r in report["results"]}
    jax_rows = {(m, r) for m in ("lab", "bn") for r in ("jax_defaults", "jax_best", "jax_bf16")}
    assert jax_rows | {("lab", "flax_example")} <= rows  # the torch rows only where torch is installed
    assert ("bn", "flax_example") not in rows
    assert all(r["images_per_s"] > 0 and r["gflops"] > 0 and r["low"] <= r["images_per_s"] <= r["high"]
               for r in report["results"])
    assert set(report["gemm_peak_gflops"]) == {"f32", "bf16"} and min(report["gemm_peak_gflops"].values()) > 0
    assert all(len(v) == 3 and max(v) == report["gemm_peak_gflops"][k] for k, v in report["gemm_peaks_seen"].items())
    assert 15 < report["train_mflop_per_image"]["lab"] < 17 < report["train_mflop_per_image"]["bn"]
    assert __import__("json").loads(out.read_text())["results"] == report["results"]
    assert list(report["breakdown_ms"]) == ["forward", "forward+backward", "full train step"]
    assert all(v > 0 for v in report["breakdown_ms"].values())
    assert [k.split()[0] for k in report["layers"]] == ["conv1", "conv2", "dense"]
    printed = capsys.readouterr().out
    assert "% of GEMM peak" in printed and "| model | batch | runner |" in printed


def test_time_to_accuracy_smoke(fashion_tfds_dir, tmp_path, capsys):
    out = tmp_path / "tta.json"
    report = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"](
        ["--smoke", "--json", str(out), "--", "--data-dir", str(fashion_tfds_dir), "--workdir", str(tmp_path)])
    assert set(report["reached"]) == {"0.92", "0.93", "0.94"}
    assert [e for e, _, _ in report["per_epoch"]] == [1, 2]
    elapsed = [t for _, t, _ in report["per_epoch"]]
    assert 0 < elapsed[0] < elapsed[1] == report["train_wall_seconds"]
    results = __import__("json").loads((tmp_path / "best" / "results.json").read_text())
    assert report["per_epoch"][-1][2] == results["test_accuracy"]  # per-epoch test eval == final eval
    assert "test accuracy >= 92%" in capsys.readouterr().out and out.is_file()

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
        ["--smoke", "--runners", "cnn_jax", "flax_example", "torch_eager", "--json", str(out)])
    runners = {r["runner"] for r in report["results"]}
    assert {"cnn_jax", "flax_example"} <= runners  # torch_eager only where torch is installed
    assert all(r["images_per_s"] > 0 and r["gflops"] > 0 for r in report["results"])
    assert report["gemm_peak_gflops"] > 0 and 15 < report["train_mflop_per_image"] < 17
    assert __import__("json").loads(out.read_text())["results"] == report["results"]
    assert list(report["breakdown_ms"]) == ["forward", "forward+backward", "full train step"]
    assert all(v > 0 for v in report["breakdown_ms"].values())
    assert [k.split()[0] for k in report["layers"]] == ["conv1", "conv2", "dense"]
    assert all(v["ms"] > 0 and v["gflops"] > 0 for v in report["layers"].values())
    assert len(report["gemm_peaks_seen"]) == 2 and report["gemm_peak_gflops"] == max(report["gemm_peaks_seen"])
    assert "% peak" in capsys.readouterr().out


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

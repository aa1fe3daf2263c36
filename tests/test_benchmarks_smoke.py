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
    """Two settings x two seeds, each in its own run folder, the order rotated per seed; the summary's
    means and ratios come from the runs' own per-epoch records."""
    out = tmp_path / "tta.json"
    report = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"](
        ["--smoke", "--seeds", "0", "1", "--json", str(out), "--", "--data-dir", str(fashion_tfds_dir),
         "--workdir", str(tmp_path)])
    assert [(r["seed"], r["setting"]) for r in report["runs"]] == [(0, "f32"), (0, "bf16"), (1, "bf16"), (1, "f32")]
    for r in report["runs"]:
        assert set(r["reached"]) == {"0.92", "0.93", "0.94"}
        assert [e for e, _, _ in r["per_epoch"]] == [1, 2]
        elapsed = [t for _, t, _ in r["per_epoch"]]
        assert 0 < elapsed[0] < elapsed[1] == r["train_wall_seconds"]
        run_dir = tmp_path / f"tta-{r['setting']}-seed{r['seed']}"
        results = __import__("json").loads((run_dir / "results.json").read_text())
        assert r["per_epoch"][-1][2] == results["test_accuracy"]  # per-epoch test eval == final eval
        assert __import__("json").loads((run_dir / "config.json").read_text())["train"]["precision"] == r["setting"]
    summary = report["summary"]
    for s in ("f32", "bf16"):
        accs = [r["final_test_accuracy"] for r in report["runs"] if r["setting"] == s]
        assert summary[s]["mean_final_test_accuracy"] == sum(accs) / 2
    assert all(v in (None, 1.0) for v in summary["f32"]["time_ratio"].values())
    printed = capsys.readouterr().out
    assert "f32 seed 0: test accuracy >= 92%" in printed and "bf16: mean over seeds [0, 1]" in printed
    assert __import__("json").loads(out.read_text())["summary"] == summary

"""Benchmarks are not tests: this only checks that their smoke mode still runs (no timing asserts)."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest

from cnn_jax.cli import parse
from cnn_jax.config import PRESETS, Config, DataConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_primitives_benchmark_smoke(capsys):
    results = runpy.run_path(str(ROOT / "benchmarks" / "primitives.py"), run_name="bench")["main"](["--smoke"])
    assert set(results) == {(m, i) for m in ("jit", "scan") for i in ("native", "im2col")}
    assert all(v > 0 for v in results.values())
    assert "vs native" in capsys.readouterr().out


def test_peers_benchmark_smoke(tmp_path, capsys):
    """LabCNN: every runner, the breakdown and the blocks (the BN-CNN's and the ResNet's runners are the same code
    with another network, measured in the A/B smoke below; their FLOP counts are checked here)."""
    out = tmp_path / "peers.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "peers.py"), run_name="bench")
    report = mod["main"](["--smoke", "--models", "lab", "--markdown", "--json", str(out)])
    rows = {(r["model"], r["runner"]) for r in report["results"]}
    jax_rows = {("lab", r) for r in ("jax_defaults", "jax_best", "jax_bf16", "flax_example")}
    assert jax_rows <= rows <= jax_rows | {("lab", "torch_f32"), ("lab", "torch_bf16")}  # torch where installed
    assert all(r["images_per_s"] > 0 and r["gflops"] > 0 and r["low"] <= r["images_per_s"] <= r["high"]
               for r in report["results"])
    assert set(report["gemm_peak_gflops"]) == {"f32", "bf16"} and min(report["gemm_peak_gflops"].values()) > 0
    assert all(len(v) == 2 and max(v) == report["gemm_peak_gflops"][k]  # before, and after the one model
               for k, v in report["gemm_peaks_seen"].items())
    assert 15 < report["train_mflop_per_image"]["lab"] < 17 < mod["train_flops"]("bn") / 1e6
    assert 100 < mod["train_flops"]("resnet") / 1e6 < 105  # 3x 34.4 forward MFLOP
    assert json.loads(out.read_text())["results"] == report["results"]
    assert list(report["breakdown_ms"]) == ["forward", "forward+backward", "full train step"]
    assert all(v > 0 for v in report["breakdown_ms"].values())
    assert [k.split()[0] for k in report["layers"]] == ["conv1", "conv2", "dense"]
    printed = capsys.readouterr().out
    assert "% of GEMM peak" in printed and "| model | batch | runner |" in printed


def test_ab_benchmark_smoke(tmp_path, capsys):
    """Two checkouts side by side (here this one twice): one worker process each, paired windows, ratios. The
    BN-CNN (LabCNN's runners are measured by the peers smoke above), and a runner that does not apply to it."""
    out = tmp_path / "ab.json"
    rows = runpy.run_path(str(ROOT / "benchmarks" / "ab.py"), run_name="bench")["main"](
        [str(ROOT), str(ROOT), "--smoke", "--runners", "jax_defaults", "flax_example", "--models", "bn",
         "--json", str(out)])
    assert [(r["model"], r["runner"]) for r in rows] == [("bn", "jax_defaults")]  # flax_example: LabCNN only
    for r in rows:
        assert len(r["before"]) == len(r["after"]) == len(r["ratios"]) == 2 and min(r["ratios"]) > 0
        assert r["ratio_low"] <= r["ratio_median"] <= r["ratio_high"]
    assert json.loads(out.read_text())["rows"] == rows
    assert "after/before" in capsys.readouterr().out


def test_step_profile_smoke(tmp_path, capsys):
    """Per layer and pass: every ResNet conv and batch norm has a forward and a backward row, kernels named."""
    out = tmp_path / "profile.json"
    report = runpy.run_path(str(ROOT / "benchmarks" / "step_profile.py"), run_name="bench")["main"](
        ["--smoke", "--models", "resnet", "--json", str(out)])
    ours = report["models"]["resnet"]["cnn_jax"]
    rows = {(r["layer"], r["pass"]): r for r in ours["by_layer"]}
    for i in range(8):  # the stem, three stage convs and two residual blocks' two convs
        assert rows[f"Conv_{i}", "forward"]["ms"] > 0 and rows[f"BatchNorm_{i}", "forward"]["ms"] > 0
        assert (f"Conv_{i}", "backward") in rows
    assert rows["Conv_1", "forward"]["kernel"] == "3x3x16x32"
    kinds = {k.split(" | ")[0] for k in ours["by_kind"]}
    assert {"conv", "batch norm", "pool, relu, adds"} <= kinds <= set(runpy.run_path(
        str(ROOT / "benchmarks" / "step_profile.py"), run_name="bench")["KINDS"])
    assert report["models"]["resnet"]["step_ms"]["cnn_jax"] > 0
    assert json.loads(out.read_text())["models"]["resnet"]["cnn_jax"] == ours
    assert "cnn_jax per layer" in capsys.readouterr().out


def test_eval_speed_smoke(tmp_path, capsys):
    """Both implementations evaluate the same network to the same accuracy; ratios are to the first variant."""
    report = runpy.run_path(str(ROOT / "benchmarks" / "eval_speed.py"), run_name="bench")["main"](
        ["--smoke", "--json", str(tmp_path / "eval.json")])
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"native:32", "im2col:32"} and rows["native:32"]["vs_first"] == 1.0
    assert rows["native:32"]["accuracy"] == pytest.approx(rows["im2col:32"]["accuracy"], abs=2 / 64)
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert "lab f32: native:32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / "benchmarks" / "eval_speed.py"), run_name="bench")["main"](
            ["--variants", "oneDNN:32"])


def test_time_to_accuracy_smoke(fashion_tfds_dir, tmp_path, capsys):
    """The default settings (the pinned 2026-11 baseline and the fast preset), one seed, each in its own run folder;
    the summary's means and ratios come from the runs' own per-epoch records. (The order rotated per seed: next.)"""
    out = tmp_path / "tta.json"
    report = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"](
        ["--smoke", "--seeds", "0", "--json", str(out), "--", "--data-dir", str(fashion_tfds_dir),
         "--workdir", str(tmp_path)])
    assert [(r["seed"], r["setting"]) for r in report["runs"]] == [(0, "f32"), (0, "fast")]
    for r in report["runs"]:
        assert set(r["reached"]) == {"0.92", "0.93", "0.94", "0.95"}
        assert [e for e, _, _ in r["per_epoch"]] == [1, 2]
        elapsed = [t for _, t, _ in r["per_epoch"]]
        assert 0 < elapsed[0] < elapsed[1] == r["train_wall_seconds"]
        run_dir = tmp_path / f"tta-{r['setting']}-seed{r['seed']}"
        results = json.loads((run_dir / "results.json").read_text())
        assert r["per_epoch"][-1][2] == results["test_accuracy"]  # per-epoch test eval == final eval
        model = json.loads((run_dir / "config.json").read_text())["model"]["name"]
        assert model == {"f32": "bn_cnn", "fast": PRESETS["fast"].model.name}[r["setting"]]
    summary = report["summary"]
    for s in ("f32", "fast"):
        [acc] = [r["final_test_accuracy"] for r in report["runs"] if r["setting"] == s]
        assert summary[s]["mean_final_test_accuracy"] == acc
    assert all(v in (None, 1.0) for v in summary["f32"]["time_ratio"].values())
    printed = capsys.readouterr().out
    assert "f32 seed 0: test accuracy >= 92%" in printed and "fast: mean over seeds [0]" in printed
    assert report["machine"]["gemm_peak_gflops"] > 0 and report["gemm_peak_gflops_after"] > 0  # the machine named
    assert report["machine"]["cpu_count"] == os.cpu_count() and "machine: " in printed
    assert json.loads(out.read_text())["summary"] == summary


def test_time_to_accuracy_rotates_the_order_per_seed_and_averages_over_seeds(tmp_path, capsys):
    """The settings alternate within each seed, the order rotated from seed to seed; each setting's means are over
    its seeds (each run stands in for one that trained: ``_one`` replaced)."""
    main = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"]
    times = {("f32", 0): 100.0, ("fast", 0): 50.0, ("f32", 1): 200.0, ("fast", 1): 60.0, ("f32", 2): 300.0,
             ("fast", 2): 90.0}
    main.__globals__["_one"] = lambda seed, setting, extra: _tta_run(setting, seed, times[setting, seed],
                                                                     0.9 + seed / 100)
    report = main(["--smoke", "--seeds", "0", "1", "2", "--json", str(tmp_path / "tta.json")])
    assert [(r["seed"], r["setting"]) for r in report["runs"]] == [
        (0, "f32"), (0, "fast"), (1, "fast"), (1, "f32"), (2, "f32"), (2, "fast")]
    fast = report["summary"]["fast"]
    assert fast["seeds"] == [0, 1, 2]
    assert fast["mean_seconds"]["0.94"] == pytest.approx(200 / 3)
    assert fast["seed_time_ratio"]["0.94"] == pytest.approx([0.5, 0.3, 0.3])
    assert fast["mean_final_test_accuracy"] == pytest.approx(0.91)
    assert "fast: mean over seeds" in capsys.readouterr().out


def test_time_to_accuracy_baseline_stays_the_2026_11_best(tmp_path):
    """The baseline settings are the `best` preset of 2026-11-24 flag by flag, whatever the presets are now;
    `fast` and `best` are today's presets."""
    settings = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["SETTINGS"]
    best_2026_11 = Config(
        data=DataConfig(augment=("translate", "flip"), tta=("flip",)),
        model=ModelConfig(name="bn_cnn", widths=(48, 96, 192), dropout=0.2, conv_dropout=0.0),
        train=TrainConfig(optimizer="adamw", lr=3e-3, schedule="onecycle", epochs=24, weight_decay=5e-4,
                          label_smoothing=0.05, clip=1.0, microbatch=32, precision="f32"))
    built = {k: parse("fashion_mnist", [*v, "--workdir", str(tmp_path)])[0] for k, v in settings.items()}
    assert built["f32"] == best_2026_11
    assert built["bf16"] == best_2026_11.replace(train=best_2026_11.train.replace(precision="bf16"))
    assert built["fast"] == PRESETS["fast"] and built["best"] == PRESETS["best"]


def _tta_run(setting: str, seed: int, seconds: float | None, acc: float) -> dict:
    hit = None if seconds is None else {"seconds": seconds, "epoch": 20}
    return {"setting": setting, "seed": seed, "reached": {"0.92": {"seconds": seconds or 500.0, "epoch": 9},
                                                         "0.93": hit, "0.94": hit}, "final_test_accuracy": acc}


def test_time_to_accuracy_merges_sittings(tmp_path, capsys):
    """--merge: the runs of several outputs summarized together; each seed's ratio is to its own sitting's first
    setting; a (setting, seed) measured twice is refused."""
    main = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"]
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    head = {"date": "2026-11-25 21:57", "device": "cpu"}
    a.write_text(json.dumps({**head, "runs": [_tta_run("f32", 0, 1000.0, 0.94), _tta_run("bf16", 0, 800.0, 0.95)]}))
    b.write_text(json.dumps({**head, "runs": [_tta_run("f32", 1, 2000.0, 0.93), _tta_run("bf16", 1, 1000.0, 0.94)]}))
    report = main(["--merge", str(a), str(b), "--json", str(tmp_path / "out.json")])
    bf16 = report["summary"]["bf16"]
    assert bf16["seeds"] == [0, 1] and bf16["seed_time_ratio"]["0.94"] == [0.8, 0.5]
    assert bf16["mean_seed_time_ratio"]["0.94"] == pytest.approx(0.65)
    assert bf16["time_ratio"]["0.94"] == pytest.approx(900 / 1500)  # ratio of the means, for comparison
    assert bf16["mean_final_test_accuracy"] == pytest.approx(0.945)
    assert "0.80x 0.50x (mean 0.65x)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["bf16"]["seed_time_ratio"]["0.94"] == [0.8, 0.5]
    c.write_text(json.dumps({**head, "runs": [_tta_run("f32", 0, None, 0.93)]}))
    with pytest.raises(SystemExit, match="repeat a"):
        main(["--merge", str(a), str(c)])


def test_time_to_accuracy_first_setting_short_of_a_threshold(tmp_path, capsys):
    """A threshold the first setting never reached, but another did: that setting's time is printed with no ratio
    (the 2026-12-02 seed-1 sitting, where ``fast`` ran first and missed 94%), and the JSON is written."""
    main = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")["main"]
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"date": "2026-12-02 14:04", "device": "cpu",
                             "runs": [_tta_run("fast", 1, None, 0.938), _tta_run("f32", 1, 3000.0, 0.942)]}))
    report = main(["--merge", str(a), "--json", str(tmp_path / "out.json")])
    assert report["summary"]["f32"]["time_ratio"]["0.94"] is None
    assert report["summary"]["f32"]["mean_seconds"]["0.94"] == 3000.0
    out = capsys.readouterr().out
    assert ">= 94%: 3000 s (no ratio)" in out and "fast: mean over seeds [1]" in out
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["f32"]["seed_time_ratio"]["0.94"] == [None]


def test_recipe_speed_benchmark_smoke(tmp_path, capsys):
    """`fast` and its network variants (issue 38's table), built from their flags, timed in turn."""
    out = tmp_path / "speed.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "recipe_speed.py"), run_name="bench")
    report = mod["main"](["--smoke", "--variants", "0", "3", "--json", str(out), "--markdown", str(tmp_path / "s.md")])
    assert [r["variant"] for r in report["rows"]] == [0, 3] and report["rows"][0]["ratio"] == 1.0
    assert all(r["low"] <= r["images_per_s"] <= r["high"] for r in report["rows"])
    assert json.loads(out.read_text())["rows"] == report["rows"]
    printed = capsys.readouterr().out
    assert "| 3. + 2x2 patch stem" in printed and printed.strip() == (tmp_path / "s.md").read_text().strip()
    with pytest.raises(SystemExit):
        mod["main"](["--variants", "99"])

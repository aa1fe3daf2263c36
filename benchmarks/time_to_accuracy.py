"""Wall seconds for Fashion-MNIST recipes to reach 92%, 93%, 94% and 95% test accuracy, per setting and seed,
side by side in one sitting.

    python benchmarks/time_to_accuracy.py [--settings f32 fast] [--seeds 0 1 2] [--json out.json] \\
        [-- extra experiment flags, e.g. --data-dir DIR]
    python benchmarks/time_to_accuracy.py --merge a.json b.json [--json out.json]

Each (seed, setting) trains ``experiments/fashion_mnist.py --track-test --seed S`` with the setting's flags
(:data:`SETTINGS`) into ``<workdir>/tta-<setting>-seed<S>`` (default workdir
``checkpoints/fashion_mnist``), so an interrupted measurement resumes where it stopped. The settings alternate
within each seed, their order rotated from seed to seed, so drift in the machine's speed spreads over both.
The test split is evaluated after every epoch for this measurement only (model selection still uses the
validation split). Wall time counts from the start of training (compilation and the per-epoch evaluations
included, data loading not). Prints one line per run and threshold, then each setting's mean over the seeds
and its ratio to the first setting, and each seed's ratio (its settings ran side by side) with their mean;
writes JSON with the machine (CPU, flags, float32 GEMM peak measured before and after). ``--merge``
summarizes the runs of earlier JSON files together (e.g. seeds measured in different sittings, where only the
per-seed ratios compare like with like) without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
from common import gemm_peak_gflops, machine  # benchmarks/ (the script's folder)

from cnn_jax.files import write_json

THRESHOLDS = (0.92, 0.93, 0.94, 0.95)
#: The ``best`` preset of 2026-11-24, the baseline of issues 22 and 38 (BN-CNN 48/96/192, shifts + flips, AdamW
#: one-cycle 24 epochs, label smoothing, flip TTA, 32-image micro-batches), kept under its own name since ``best``
#: moved on.
BEST_2026_11 = ["--preset", "best-2026-11"]
#: Each setting's experiment flags. ``f32``/``bf16``: the 2026-11 ``best`` in float32 / bfloat16 compute;
#: ``fast``/``best``: today's presets.
SETTINGS: dict[str, list[str]] = {
    "f32": [*BEST_2026_11, "--precision", "f32"],
    "bf16": [*BEST_2026_11, "--precision", "bf16"],
    "fast": ["--preset", "fast"],
    "best": ["--preset", "best"],
}


def _one(seed: int, setting: str, extra: list[str]) -> dict:
    from cnn_jax.cli import main as run

    name = f"tta-{setting}-seed{seed}"
    results = run("fashion_mnist", [*SETTINGS[setting], "--track-test", "--no-progress", "--seed", str(seed),
                                    "--run", name, *extra])
    history = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    if not all("test_accuracy" in h for h in history):
        sys.exit(f"error: {results['run_dir']} was trained without --track-test; move it away to measure afresh")
    reached = {}
    for t in THRESHOLDS:
        hit = next((h for h in history if h["test_accuracy"] >= t), None)
        reached[f"{t:.2f}"] = None if hit is None else {"seconds": hit["elapsed"], "epoch": hit["epoch"]}
        print(f"{setting} seed {seed}: test accuracy >= {t:.0%}: " + (
            f"{hit['elapsed']:.0f} s (epoch {hit['epoch']})" if hit else f"not reached in {len(history)} epochs"))
    print(f"{setting} seed {seed}: final test accuracy {results['test_accuracy']:.4f} after {len(history)} epochs, "
          f"{history[-1]['elapsed']:.0f} s of training", flush=True)
    return {"setting": setting, "seed": seed, "flags": SETTINGS[setting], "run_dir": results["run_dir"],
            "reached": reached, "final_test_accuracy": results["test_accuracy"], "epochs": len(history),
            "train_wall_seconds": history[-1]["elapsed"],
            "per_epoch": [(h["epoch"], h["elapsed"], h["test_accuracy"]) for h in history]}


def summarize(runs: list[dict], settings: list[str]) -> dict[str, dict]:
    """Per setting: mean seconds to each threshold (None unless every seed reached it), mean final accuracy,
    and the ratios of those times to the first setting's."""
    out: dict[str, dict] = {}
    for s in settings:
        mine = [r for r in runs if r["setting"] == s]
        times = {}
        for t, _ in mine[0]["reached"].items():
            hits = [r["reached"][t] for r in mine]
            times[t] = None if any(h is None for h in hits) else statistics.mean(h["seconds"] for h in hits)
        out[s] = {"seeds": [r["seed"] for r in mine], "mean_seconds": times,
                  "mean_final_test_accuracy": statistics.mean(r["final_test_accuracy"] for r in mine),
                  "final_test_accuracy": [r["final_test_accuracy"] for r in mine]}
    base = out[settings[0]]["mean_seconds"]
    first = {r["seed"]: r for r in runs if r["setting"] == settings[0]}
    for s in settings:
        out[s]["time_ratio"] = {t: (None if v is None or base[t] is None else v / base[t])
                                for t, v in out[s]["mean_seconds"].items()}
        per_seed = {t: [_ratio(r["reached"][t], first[r["seed"]]["reached"][t]) if r["seed"] in first else None
                        for r in runs if r["setting"] == s] for t in out[s]["mean_seconds"]}
        out[s]["seed_time_ratio"] = per_seed
        out[s]["mean_seed_time_ratio"] = {t: None if not v or None in v else statistics.mean(v)
                                          for t, v in per_seed.items()}
    return out


def _ratio(hit: dict | None, base: dict | None) -> float | None:
    return None if hit is None or base is None else hit["seconds"] / base["seconds"]


def _ratio_text(ratio: float | None) -> str:
    """A ratio as printed; "no ratio" where the first setting did not reach the threshold."""
    return "no ratio" if ratio is None else f"{ratio:.2f}x"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS),
                   help=f"settings to compare, of {list(SETTINGS)}; ratios are to the first (default: f32 fast; "
                        "with --merge, those the files measured)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--smoke", action="store_true", help="tiny runs (1,000 images, 2 epochs): checks the script runs")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="summarize the runs of these earlier outputs together instead of training")
    p.add_argument("experiment_args", nargs="*", help="flags passed to the experiment (after --)")
    a = p.parse_args(argv)
    extra = list(a.experiment_args)
    if a.smoke:
        extra = ["--epochs", "2", "--limit", "1000", "--val-size", "200", "--widths", "8", "16", "16", *extra]
    if a.merge:  # nothing to train
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        a.settings = a.settings or list(dict.fromkeys(r["setting"] for p in parts for r in p["runs"]))
        report = {"merged": [{"file": f, "date": p["date"], "device": p["device"], "machine": p.get("machine")}
                             for f, p in zip(a.merge, parts, strict=True)],
                  "settings": {s: SETTINGS[s] for s in a.settings}, "runs": [r for p in parts for r in p["runs"]]}
        keys = [(r["setting"], r["seed"]) for r in report["runs"]]
        if len(set(keys)) < len(keys):
            sys.exit(f"error: the merged files repeat a (setting, seed) pair ({sorted(keys)}); merge files that "
                     "measured different seeds")
    else:
        a.settings = a.settings or ["f32", "fast"]
        gemm_n = 256 if a.smoke else 2048
        report = {"date": time.strftime("%Y-%m-%d %H:%M"), "backend": jax.default_backend(),
                  "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
                  "machine": {**machine(), "gemm_peak_gflops": round(gemm_peak_gflops(gemm_n), 1)},
                  "extra_flags": extra,
                  "settings": {s: SETTINGS[s] for s in a.settings}, "runs": []}
        m = report["machine"]
        print(f"machine: {m['cpu']} ({m['cpu_count']} cores; {m['cpu_flags']}), float32 GEMM peak "
              f"{m['gemm_peak_gflops']:.0f} GFLOP/s; LD_PRELOAD={m['ld_preload'] or '(none)'}", flush=True)
        for i, seed in enumerate(a.seeds):
            order = a.settings[i % len(a.settings):] + a.settings[:i % len(a.settings)]
            for s in order:
                report["runs"].append(_one(seed, s, extra))
                if a.json:  # after every run: a measurement cut short keeps what it measured
                    write_json(a.json, report)
        report["gemm_peak_gflops_after"] = round(gemm_peak_gflops(gemm_n), 1)
        print(f"float32 GEMM peak after the sitting: {report['gemm_peak_gflops_after']:.0f} GFLOP/s", flush=True)
    runs = report["runs"]
    settings = [s for s in a.settings if any(r["setting"] == s for r in runs)]
    summary = summarize(runs, settings)
    report["summary"] = summary
    if a.json:
        write_json(a.json, report)  # atomically, before anything is printed from it
    for s, v in summary.items():
        times = ", ".join(f">= {float(t):.0%}: " + ("not reached by every seed" if secs is None else
                                                    f"{secs:.0f} s ({_ratio_text(v['time_ratio'][t])})")
                          for t, secs in v["mean_seconds"].items())
        accs = " ".join(f"{x:.4f}" for x in v["final_test_accuracy"])
        seed_ratios = "; ".join(
            f">= {float(t):.0%}: " + " ".join("-" if x is None else f"{x:.2f}x" for x in r) +
            ("" if v["mean_seed_time_ratio"][t] is None else f" (mean {v['mean_seed_time_ratio'][t]:.2f}x)")
            for t, r in v["seed_time_ratio"].items())
        print(f"{s}: mean over seeds {v['seeds']}: {times}; final test accuracy {v['mean_final_test_accuracy']:.4f} "
              f"({accs}); per seed, to {settings[0]} in the same sitting: {seed_ratios}")
    return report


if __name__ == "__main__":
    main()

"""Wall seconds for the ``best`` Fashion-MNIST preset to reach 92%, 93% and 94% test accuracy.

    python benchmarks/time_to_accuracy.py [--json out.json] [-- extra experiment flags, e.g. --epochs 20]

Trains with ``experiments/fashion_mnist.py --preset best --track-test`` (the test split is evaluated after every
epoch for this measurement only; model selection still uses the validation split) into
``checkpoints/fashion_mnist/best`` unless ``--workdir``/``--run`` say otherwise, so an interrupted measurement
resumes. Wall time counts from the start of training (compilation and per-epoch evaluations included, data
loading not). Prints one line per threshold and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

THRESHOLDS = (0.92, 0.93, 0.94)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--smoke", action="store_true", help="a tiny run (1,000 images, 2 epochs): checks the script runs")
    p.add_argument("experiment_args", nargs="*", help="flags passed to the experiment (after --)")
    a = p.parse_args(argv)
    from cnn_jax.cli import main as run

    extra = list(a.experiment_args)
    if a.smoke:
        extra = ["--epochs", "2", "--limit", "1000", "--val-size", "200", "--widths", "8", "16", "16", *extra]
    t0 = time.strftime("%Y-%m-%d %H:%M")
    results = run("fashion_mnist", ["--preset", "best", "--track-test", "--no-progress", *extra])
    history = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    if not all("test_accuracy" in h for h in history):
        sys.exit("error: this run folder was trained without --track-test; pass --new-run to measure afresh")
    reached = {}
    for t in THRESHOLDS:
        hit = next((h for h in history if h["test_accuracy"] >= t), None)
        reached[f"{t:.2f}"] = None if hit is None else {"seconds": hit["elapsed"], "epoch": hit["epoch"]}
        print(f"test accuracy >= {t:.0%}: " + (f"{hit['elapsed']:.0f} s (epoch {hit['epoch']})" if hit else
                                                  f"not reached in {len(history)} epochs"))
    report = {"date": t0, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "run_dir": results["run_dir"], "reached": reached,
              "final_test_accuracy": results["test_accuracy"], "epochs": len(history),
              "train_wall_seconds": history[-1]["elapsed"],
              "per_epoch": [(h["epoch"], h["elapsed"], h["test_accuracy"]) for h in history]}
    print(f"final test accuracy {results['test_accuracy']:.4f} after {len(history)} epochs, "
          f"{history[-1]['elapsed']:.0f} s of training")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

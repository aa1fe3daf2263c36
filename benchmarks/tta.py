"""Test-time views, ablated without training: each run's checkpoint evaluated on its validation split with every
set of views, and the differences paired by run.

    python benchmarks/tta.py RUN_DIR [RUN_DIR ...] [--which latest|best] [--views none flip flip,shift]
        [--repeats 3] [--json out.json] [--markdown out.md]

Each run folder's validation split is rebuilt from its own config (the same seeded hold-out it trained on); the
test split is never read. One row per view set: validation accuracy per run, mean, mean difference to the first
view set (paired by run), and the seconds one pass over the validation split takes (compiled, the median of
``--repeats``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from common import emit  # benchmarks/ (the script's folder)

from cnn_jax.config import TTA_NAMES
from cnn_jax.inference import load
from cnn_jax.trainer import load_data


def _views(text: str) -> tuple[str, ...]:
    views = () if text == "none" else tuple(text.split(","))
    unknown = [v for v in views if v not in TTA_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown view(s) {unknown}; choose from {TTA_NAMES} (or none)")
    return views


def evaluate_views(run_dir: str, view_sets: list[tuple[str, ...]], which: str = "latest",
                   repeats: int = 3) -> list[dict]:
    """``[{"views", "val_accuracy", "seconds"}]`` of one run folder's checkpoint, per view set."""
    lm = load(run_dir, which)
    splits, _, _ = load_data(lm.config.replace(run=lm.config.run.replace(progress=False)))
    images, labels = splits.val.images, splits.val.labels
    out = []
    for views in view_sets:
        lm.config = lm.config.replace(data=lm.config.data.replace(tta=views))
        lm.predict(images[:1])  # compile
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pred = lm.predict(images)
            seconds.append(time.perf_counter() - t0)
        out.append({"views": list(views), "val_accuracy": float(np.mean(pred == labels)),
                    "seconds": statistics.median(seconds)})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (checkpoints of finished runs)")
    p.add_argument("--which", default="latest", choices=("latest", "best"), help="checkpoint (default latest)")
    p.add_argument("--views", nargs="+", type=_views, default=[(), ("flip",), ("flip", "shift")],
                   help="view sets, comma-separated names or none (default: none flip flip,shift)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per view set (default 3)")
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--markdown", default=None, help="write the table here")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    per_run = {r: evaluate_views(r, a.views, a.which, a.repeats) for r in a.runs}
    rows = []
    for k, views in enumerate(a.views):
        accs = [per_run[r][k]["val_accuracy"] for r in a.runs]
        diffs = [per_run[r][k]["val_accuracy"] - per_run[r][0]["val_accuracy"] for r in a.runs]
        rows.append({"views": list(views), "val_accuracy": accs, "mean": statistics.mean(accs),
                     "mean_difference": statistics.mean(diffs),
                     "seconds": statistics.median(per_run[r][k]["seconds"] for r in a.runs)})
    date = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"Test-time views on the validation split, {date}, {jax.devices()[0].device_kind} "
             f"({jax.default_backend()}), checkpoint: {a.which}; runs: {', '.join(a.runs)}", "",
             "| views | val accuracy per run | mean | difference to the first row (paired) | seconds per pass |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {'+'.join(r['views']) or 'none'} | {' / '.join(f'{100 * v:.2f}' for v in r['val_accuracy'])}"
                     f" | {100 * r['mean']:.2f}% | {100 * r['mean_difference']:+.2f} | {r['seconds']:.2f} |")
    report = {"date": date, "backend": jax.default_backend(), "which": a.which, "runs": per_run, "table": rows}
    return emit("\n".join(lines) + "\n", report, a.json, a.markdown)


if __name__ == "__main__":
    main()

"""Recipe search on the validation split: named variants, each added to the previous (as airbench's ablation
table), trained over several seeds, side by side in one sitting.

    python benchmarks/ablation.py [--first I] [--upto J] [--seeds 0 1 2] [--target 0.94] [--workdir DIR] \\
        [--json out.json] [--markdown out.md] [--smoke] [-- extra experiment flags, e.g. --data-dir DIR]

Variants ``--first``..``--upto`` run (default: all); variant ``i`` trains ``experiments/fashion_mnist.py --no-test
--seed S`` with the flags of variants 0..i in order (a later flag overrides an earlier one), in
``<workdir>/ablation-<i>-seed<S>`` (default workdir ``checkpoints/fashion_mnist``; an interrupted search resumes
where it stopped). ``--no-test``: the test split is never evaluated, so nothing here is chosen on it; a kept
recipe's test accuracy is measured once, afterwards (``benchmarks/time_to_accuracy.py``). The variants alternate
within each seed. One row per variant: epochs, validation accuracy (mean, min-max over the seeds), epochs and
seconds of training to the validation ``--target`` (mean over the seeds that reached it, and how many did), and
images/s (median). Seconds count from the start of training (compilation and per-epoch evaluations included, data
loading not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

from cnn_jax.files import write_json, write_text

#: ``(name, flags added to the previous variants')``, in order. The first names the base preset.
VARIANTS: list[tuple[str, list[str]]] = [
    ("best preset, 12 epochs", ["--preset", "best", "--epochs", "12"]),
    ("+ ResNet 16-32-64-128 (DAWNBench shape)", ["--model", "resnet", "--widths", "16", "32", "64", "128"]),
    ("+ weight average (EMA 0.99)", ["--ema", "0.99"]),
    ("+ label smoothing 0.2", ["--label-smoothing", "0.2"]),
    ("+ bfloat16 compute", ["--precision", "bf16"]),
]
SMOKE = ["--epochs", "2", "--limit", "600", "--val-size", "200", "--widths", "4", "8", "8", "8"]


def flags_upto(i: int) -> list[str]:
    """The experiment flags of variant ``i``: those of variants 0..i, in order."""
    return [f for _, more in VARIANTS[:i + 1] for f in more]


def _one(i: int, seed: int, target: float, extra: list[str], workdir: str | None) -> dict:
    from cnn_jax.cli import main as run

    name = f"ablation-{i}-seed{seed}"
    args = [*flags_upto(i), "--no-test", "--no-progress", "--seed", str(seed), "--run", name, *extra]
    results = run("fashion_mnist", args + (["--workdir", workdir] if workdir else []))
    history = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    hit = next((h for h in history if h.get("val_accuracy", 0) >= target), None)
    row = {"variant": i, "name": VARIANTS[i][0], "seed": seed, "run_dir": results["run_dir"], "epochs": len(history),
           "val_accuracy": history[-1]["val_accuracy"], "best_val_accuracy": results["best_val_accuracy"],
           "target_epoch": hit and hit["epoch"], "target_seconds": hit and hit["elapsed"],
           "train_seconds": history[-1]["elapsed"], "images_per_s": results["images_per_s"]}
    print(f"[{i}] {row['name']}, seed {seed}: val {row['val_accuracy']:.4f} after {row['epochs']} epochs, "
          f"{row['train_seconds']:.0f} s; >= {target:.2%}: " +
          (f"epoch {hit['epoch']}, {hit['elapsed']:.0f} s" if hit else "not reached"), flush=True)
    return row


def table(runs: list[dict], target: float) -> list[dict]:
    """One summary row per variant (in order) from the runs' rows."""
    out = []
    for i in sorted({r["variant"] for r in runs}):
        mine = [r for r in runs if r["variant"] == i]
        accs = [r["val_accuracy"] for r in mine]
        hits = [r for r in mine if r["target_epoch"] is not None]
        out.append({
            "variant": i, "name": mine[0]["name"], "flags": VARIANTS[i][1], "seeds": [r["seed"] for r in mine],
            "epochs": mine[0]["epochs"], "val_accuracy_mean": statistics.mean(accs), "val_accuracy_min": min(accs),
            "val_accuracy_max": max(accs), "target": target, "reached": f"{len(hits)}/{len(mine)}",
            "target_epoch_mean": statistics.mean(r["target_epoch"] for r in hits) if hits else None,
            "target_seconds_mean": statistics.mean(r["target_seconds"] for r in hits) if hits else None,
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
            "images_per_s": statistics.median(r["images_per_s"] for r in mine if r["images_per_s"])})
    return out


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", f"| variant | epochs | val accuracy, mean (min-max) | to {rows[0]['target']:.1%} val: "
             "reached, epoch, seconds | training seconds | images/s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        to = (f"{r['reached']}, {r['target_epoch_mean']:.1f}, {r['target_seconds_mean']:.0f} s"
              if r["target_epoch_mean"] is not None else f"{r['reached']}")
        lines.append(f"| {r['variant']}. {r['name']} | {r['epochs']} | {100 * r['val_accuracy_mean']:.2f}% "
                     f"({100 * r['val_accuracy_min']:.2f}-{100 * r['val_accuracy_max']:.2f}) | {to} | "
                     f"{r['train_seconds_mean']:.0f} | {r['images_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    names = [n for n, _ in VARIANTS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first", type=int, default=0,
                   help="first variant to run (default 0); it keeps the flags of the variants before it")
    p.add_argument("--upto", type=int, default=len(VARIANTS) - 1,
                   help=f"last variant to run, 0..{len(VARIANTS) - 1} (default: all): " +
                        "; ".join(f"{i}: {n}" for i, n in enumerate(names)))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--target", type=float, default=0.94, help="validation accuracy to time (default 0.94)")
    p.add_argument("--workdir", default=None, help="parent folder of the runs (default checkpoints/fashion_mnist)")
    p.add_argument("--json", default=None, help="write every run and the table here")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--smoke", action="store_true", help="tiny runs (600 images, 2 epochs): checks the script runs")
    p.add_argument("experiment_args", nargs="*", help="flags passed to every run (after --)")
    a = p.parse_args(argv)
    if not 0 <= a.upto < len(VARIANTS):
        p.error(f"--upto must be in 0..{len(VARIANTS) - 1}, got {a.upto}")
    if not 0 <= a.first <= a.upto:
        p.error(f"--first must be in 0..--upto ({a.upto}), got {a.first}")
    if not 0 < a.target <= 1:
        p.error(f"--target must be in (0, 1], got {a.target}")
    extra = [*SMOKE, *a.experiment_args] if a.smoke else list(a.experiment_args)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "extra_flags": extra, "target": a.target,
              "variants": [{"index": i, "name": n, "flags": f} for i, (n, f) in enumerate(VARIANTS)
                           if a.first <= i <= a.upto], "runs": []}
    for k, seed in enumerate(a.seeds):
        order = list(range(a.first, a.upto + 1))
        order = order[k % len(order):] + order[:k % len(order)]  # rotated per seed: drift spreads over variants
        for i in order:
            report["runs"].append(_one(i, seed, a.target, extra, a.workdir))
            if a.json:  # after every run: a search cut short keeps what it measured
                write_json(a.json, report)
    report["table"] = table(report["runs"], a.target)
    text = markdown(report["table"], f"Ablation on the validation split, {report['date']}, {report['device']} "
                                     f"({report['backend']}), seeds {a.seeds}; extra flags: {' '.join(extra) or '-'}")
    print(text)
    if a.json:
        write_json(a.json, report)
    if a.markdown:
        write_text(a.markdown, text)
    return report


if __name__ == "__main__":
    main()

"""Recipe search on the validation split: named variants, each added to the previous (as airbench's ablation
table), trained over several seeds, side by side in one sitting.

    python benchmarks/ablation.py [--table NAME] [--first I] [--upto J] [--seeds 0 1 2] [--target 0.94] \\
        [--workdir DIR] [--json out.json] [--markdown out.md] [--smoke] [-- extra experiment flags]

``--table``: ``issue22`` (default, cumulative: variant ``i`` has the flags of variants 0..i in order, a later flag
overriding an earlier one) or ``issue38`` (one at a time: variant ``i`` has variant 0's flags and its own). Variants
``--first``..``--upto`` run (default: all); each trains ``experiments/fashion_mnist.py --no-test --seed S`` with its
flags, in ``<workdir>/ablation-<i>-seed<S>`` (``ablation-<table>-<i>-seed<S>`` for other tables; default workdir
``checkpoints/fashion_mnist``; an interrupted search resumes where it stopped). ``--no-test``: the test split is
never evaluated, so nothing here is chosen on it; a kept recipe's test accuracy is measured once, afterwards
(``benchmarks/time_to_accuracy.py``). The variants alternate within each seed. One row per variant: epochs,
validation accuracy (mean, min-max over the seeds), epochs and seconds of training to the validation ``--target``
(mean over the seeds that reached it, and how many did), and images/s (median). Seconds count from the start of
training (compilation and per-epoch evaluations included, data loading not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
from common import emit  # benchmarks/ (the script's folder)

from cnn_jax.files import write_json

#: Issue 22's table: ``(name, flags added to the previous variants')``, in order. The first names the base preset.
VARIANTS: list[tuple[str, list[str]]] = [
    ("2026-11 best preset (BN-CNN), 12 epochs", ["--preset", "best-2026-11", "--epochs", "12"]),
    ("+ ResNet 16-32-64-128 (DAWNBench shape)", ["--model", "resnet", "--widths", "16", "32", "64", "128"]),
    ("+ weight average (EMA 0.99)", ["--ema", "0.99"]),
    ("+ label smoothing 0.2", ["--label-smoothing", "0.2"]),
    ("+ bfloat16 compute", ["--precision", "bf16"]),
]
#: Issue 38's table: ``(name, flags added to variant 0's)``, each tried alone on top of `fast` at 8 epochs.
ON_FAST: list[tuple[str, list[str]]] = [
    ("fast preset, 8 epochs", ["--preset", "fast", "--epochs", "8"]),
    ("+ weight average (EMA 0.99)", ["--ema", "0.99"]),
    ("+ label smoothing 0.2 (fast: 0.05)", ["--label-smoothing", "0.2"]),
    ("+ 2x2 patch stem (no 28x28 layer)", ["--stem", "patch"]),
    ("+ 2x2 patch stem, widths 32-32-64-128", ["--stem", "patch", "--widths", "32", "32", "64", "128"]),
    ("+ alternating flips (fast: random)", ["--augment", "translate", "altflip"]),
    ("+ Dirac initialisation after the stem", ["--init", "dirac"]),
    ("+ one-cycle warm-up 10% of the steps (fast: 25%)", ["--warmup-steps", "343"]),
    ("+ stem pooled (stage 1 at 14x14)", ["--stem", "pool"]),
    ("+ batch 64, lr 2e-3 (fast: 128, 3e-3)", ["--batch-size", "64", "--lr", "2e-3"]),
    ("+ batch-norm biases at 8x the learning rate", ["--bn-bias-lr", "8"]),
    ("+ lookahead every 5 steps (slow step 0.5)", ["--lookahead", "5"]),
    ("+ whitening stem (frozen 3x3, no batch norm)", ["--stem", "whiten"]),
]
#: ``name: (variants, cumulative)``.
TABLES: dict[str, tuple[list[tuple[str, list[str]]], bool]] = {"issue22": (VARIANTS, True), "issue38": (ON_FAST, False)}
SMOKE = ["--epochs", "2", "--limit", "600", "--val-size", "200", "--widths", "4", "8", "8", "8"]


def flags_upto(i: int, table: str = "issue22") -> list[str]:
    """The experiment flags of variant ``i`` of ``table``: those of variants 0..i in order (cumulative), else
    variant 0's then its own."""
    variants, cumulative = TABLES[table]
    chosen = variants[:i + 1] if cumulative else variants[:1] + (variants[i:i + 1] if i else [])
    return [f for _, more in chosen for f in more]


def _one(i: int, seed: int, target: float, extra: list[str], workdir: str | None, table: str = "issue22") -> dict:
    from cnn_jax.cli import main as run

    name = f"ablation-{i}-seed{seed}" if table == "issue22" else f"ablation-{table}-{i}-seed{seed}"
    variants = TABLES[table][0]
    args = [*flags_upto(i, table), "--no-test", "--no-progress", "--seed", str(seed), "--run", name, *extra]
    results = run("fashion_mnist", args + (["--workdir", workdir] if workdir else []))
    history = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    hit = next((h for h in history if h.get("val_accuracy", 0) >= target), None)
    row = {"variant": i, "name": variants[i][0], "flags": flags_upto(i, table), "seed": seed,
           "run_dir": results["run_dir"], "epochs": len(history),
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
            "variant": i, "name": mine[0]["name"], "flags": mine[0]["flags"], "seeds": [r["seed"] for r in mine],
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), default="issue22",
                   help="which variants: issue22 (cumulative, default) or issue38 (each alone on top of fast)")
    p.add_argument("--first", type=int, default=0,
                   help="first variant to run (default 0); in a cumulative table it keeps the earlier variants' flags")
    p.add_argument("--upto", type=int, default=None,
                   help="last variant to run (default: all): " + "; ".join(
                       f"{t}: " + ", ".join(f"{i}: {n}" for i, (n, _) in enumerate(v)) for t, (v, _) in TABLES.items()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--target", type=float, default=0.94, help="validation accuracy to time (default 0.94)")
    p.add_argument("--workdir", default=None, help="parent folder of the runs (default checkpoints/fashion_mnist)")
    p.add_argument("--json", default=None, help="write every run and the table here")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--smoke", action="store_true", help="tiny runs (600 images, 2 epochs): checks the script runs")
    p.add_argument("experiment_args", nargs="*", help="flags passed to every run (after --)")
    a = p.parse_args(argv)
    variants = TABLES[a.table][0]
    a.upto = len(variants) - 1 if a.upto is None else a.upto
    if not 0 <= a.upto < len(variants):
        p.error(f"--upto must be in 0..{len(variants) - 1} for table {a.table}, got {a.upto}")
    if not 0 <= a.first <= a.upto:
        p.error(f"--first must be in 0..--upto ({a.upto}), got {a.first}")
    if not 0 < a.target <= 1:
        p.error(f"--target must be in (0, 1], got {a.target}")
    extra = [*SMOKE, *a.experiment_args] if a.smoke else list(a.experiment_args)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "extra_flags": extra, "target": a.target,
              "table": a.table, "variants": [{"index": i, "name": n, "flags": flags_upto(i, a.table)}
                                             for i, (n, _) in enumerate(variants) if a.first <= i <= a.upto],
              "runs": []}
    for k, seed in enumerate(a.seeds):
        order = list(range(a.first, a.upto + 1))
        order = order[k % len(order):] + order[:k % len(order)]  # rotated per seed: drift spreads over variants
        for i in order:
            report["runs"].append(_one(i, seed, a.target, extra, a.workdir, a.table))
            if a.json:  # after every run: a search cut short keeps what it measured
                write_json(a.json, report)
    report["table"] = table(report["runs"], a.target)
    text = markdown(report["table"], f"Ablation ({a.table}) on the validation split, {report['date']}, "
                                     f"{report['device']} ({report['backend']}), seeds {a.seeds}; "
                                     f"extra flags: {' '.join(extra) or '-'}")
    return emit(text, report, a.json, a.markdown)


if __name__ == "__main__":
    main()

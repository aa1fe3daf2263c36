"""Training speed of `fast` and its variants side by side: images/s of the compiled train chunk, the variants'
windows taken in turn (drift spreads over all), the median of each, and its ratio to the first.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 PYTHONPATH=. \\
        python benchmarks/recipe_speed.py [--variants 0 3 8] [--windows 5] [--steps 30] [--json out.json] \\
        [--markdown out.md] [--smoke]

``--variants``: indices of ``benchmarks/ablation.py``'s issue-38 table (default: every one that changes the
network); each is built from its flags as the experiment script builds it. Random uint8 images (the speed does
not depend on them); batch and micro-batch as the preset's. ``--smoke``: two tiny windows, no timing claims.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import emit, gemm_peak_gflops, machine  # benchmarks/ (the script's folder)

from cnn_jax.cli import parse
from cnn_jax.trainer import Trainer, build_model, preprocessing

ABLATION = runpy.run_path(str(Path(__file__).with_name("ablation.py")), run_name="recipe_speed")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ABLATION["ON_FAST"]
    network = [i for i, (_, flags) in enumerate(names) if i == 0 or {"--stem", "--widths"} & set(flags)]
    p.add_argument("--variants", nargs="+", type=int, default=network,
                   help="issue-38 table variants: " + ", ".join(f"{i}: {n}" for i, (n, _) in enumerate(names)))
    p.add_argument("--windows", type=int, default=5, help="timed windows per variant (default 5)")
    p.add_argument("--steps", type=int, default=30, help="train steps per window (default 30)")
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--smoke", action="store_true", help="two tiny windows: checks the script runs")
    a = p.parse_args(argv)
    bad = [i for i in a.variants if not 0 <= i < len(names)]
    if bad:
        p.error(f"--variants: {bad} not in 0..{len(names) - 1}")
    windows, steps = (2, 2) if a.smoke else (a.windows, a.steps)
    extra = ["--widths", "4", "8", "8", "8"] if a.smoke else []
    runs = {}
    for i in a.variants:
        config, _, _ = parse("fashion_mnist", [*ABLATION["flags_upto"](i, "issue38"), *extra])
        n = config.train.batch_size * steps
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int32)
        trainer = Trainer(build_model(config, 10, (28, 28, 1)), config, n, (28, 28, 1), *preprocessing(config))
        runs[i] = {"trainer": trainer, "state": trainer.init_state(), "data": trainer.put_data(images, labels),
                   "images": n, "seconds": []}

    def window(r: dict) -> float:
        t0 = time.perf_counter()
        r["state"], m = r["trainer"].train_chunk(r["state"], r["data"], steps)
        jax.block_until_ready(m)
        return time.perf_counter() - t0

    for r in runs.values():
        window(r)  # compile and warm up
    for _ in range(windows):
        for r in runs.values():
            r["seconds"].append(window(r))
    first = statistics.median(runs[a.variants[0]]["images"] / s for s in runs[a.variants[0]]["seconds"])
    rows = []
    for i, r in runs.items():
        speeds = [r["images"] / s for s in r["seconds"]]
        rows.append({"variant": i, "name": names[i][0], "images_per_s": statistics.median(speeds),
                     "low": min(speeds), "high": max(speeds), "ratio": statistics.median(speeds) / first})
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "gemm_peak_gflops": gemm_peak_gflops(),
              "windows": windows, "steps": steps, "rows": rows}
    cpu = report["machine"]
    lines = [f"{report['date']}, {cpu['cpu']} ({cpu['cpu_flags']}), f32 GEMM peak {report['gemm_peak_gflops']:.0f} "
             f"GFLOP/s; {windows} windows of {steps} steps each, in turn", "",
             "| variant | images/s (median) | range | vs the first |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']}. {r['name']} | {r['images_per_s']:,.0f} | {r['low']:,.0f}-{r['high']:,.0f} | "
              f"{r['ratio']:.2f}x |" for r in rows]
    return emit("\n".join(lines) + "\n", report, a.json, a.markdown)


if __name__ == "__main__":
    main()

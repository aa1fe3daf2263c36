"""Evaluation speed: images/s of ``Trainer.evaluate`` per preset network, by convolution implementation and
evaluation batch, side by side in one run.

    python benchmarks/eval_speed.py [--presets lab best fast] [--variants native:1000 im2col:1000 im2col:32] \\
        [--precisions f32 bf16] [--images 5000] [--rounds 5] [--json out.json] [--smoke]

A variant ``IMPL:BATCH`` evaluates with the network's convolution and pooling ``impl`` (``native``: XLA's own,
``im2col``: patches + matmul, what training uses on CPU) and ``run.eval_batch_size`` BATCH. ``native`` is what
evaluation and prediction use since 2026-12-02 (:data:`cnn_jax.backend.INFERENCE_IMPL`); ``im2col:1000`` is what
they used before. Each variant evaluates ``--images`` random images with the preset's test-time augmentation,
compiled once; the rounds alternate the variants (order rotated) so drift hits all alike; median and range over
rounds, and each variant's ratio to the first. The script names its machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from common import machine  # benchmarks/ (the script's folder)
from flax import nnx

from cnn_jax.config import PRESETS
from cnn_jax.files import write_json
from cnn_jax.trainer import Trainer, build_model, preprocessing


def evaluator(preset: str, impl: str, batch: int, precision: str, images: np.ndarray, labels: np.ndarray):
    """A zero-argument function that evaluates ``images`` once (compiled on the first call)."""
    config = PRESETS[preset].override({"run.eval_batch_size": batch, "train.precision": precision})
    model = nnx.with_attributes(build_model(config, 10, images.shape[1:]), impl=impl)  # set: kept by evaluation
    trainer = Trainer(model, config, 55_000, images.shape[1:], *preprocessing(config))
    state, data = trainer.init_state(), trainer.put_data(images, labels, for_eval=True)
    return lambda: trainer.evaluate(state, data)


def measure(preset: str, variants: list[str], precision: str, n: int, rounds: int) -> dict[str, dict]:
    """``{variant: {"images_per_s": median, "low", "high", "accuracy"}}`` for one preset and precision."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    runs, accuracy = {}, {}
    for v in variants:
        impl, batch = v.split(":")
        runs[v] = evaluator(preset, impl, int(batch), precision, images, labels)
        accuracy[v] = float(runs[v]()["accuracy"])  # compiles
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            t = time.perf_counter()
            runs[v]()  # returns host numpy: synchronised
            rates[v].append(n / (time.perf_counter() - t))
    return {v: {"images_per_s": statistics.median(x), "low": min(x), "high": max(x), "accuracy": accuracy[v]}
            for v, x in rates.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["lab", "best", "fast"], choices=list(PRESETS))
    p.add_argument("--variants", nargs="+", default=["native:1000", "im2col:1000", "im2col:32"],
                   help="IMPL:EVAL_BATCH (IMPL native or im2col); ratios are to the first")
    p.add_argument("--precisions", nargs="+", default=["f32", "bf16"], choices=["f32", "bf16"])
    p.add_argument("--images", type=int, default=5000, help="images per evaluation")
    p.add_argument("--rounds", type=int, default=5, help="timed evaluations per variant, alternating")
    p.add_argument("--json", default=None, help="write the results here (default: print only)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.images, a.rounds, a.presets, a.precisions = 64, 1, ["lab"], ["f32"]
        a.variants = ["native:32", "im2col:32"]
    for v in a.variants:
        impl, _, batch = v.partition(":")
        if impl not in ("native", "im2col") or not batch.isdigit() or int(batch) < 1:
            p.error(f"--variants: {v!r} is not IMPL:EVAL_BATCH; write e.g. native:1000 or im2col:32")
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine(),
              "backend": jax.default_backend(), "images": a.images, "rounds": a.rounds, "results": []}
    print(f"{report['date']}  {report['cpu']} ({report['cpu_flags']}), {report['cpu_count']} cpus, backend "
          f"{report['backend']}; {a.images} images per evaluation, {a.rounds} alternating rounds")
    for precision in a.precisions:
        for preset in a.presets:
            res = measure(preset, a.variants, precision, a.images, a.rounds)
            first = res[a.variants[0]]["images_per_s"]
            for v, r in res.items():
                report["results"].append({"preset": preset, "precision": precision, "variant": v, **r,
                                          "vs_first": r["images_per_s"] / first})
            print(f"{preset} {precision}: " + " | ".join(
                f"{v} {r['images_per_s']:,.0f} img/s ({r['low']:,.0f}-{r['high']:,.0f}, "
                f"{r['images_per_s'] / first:.2f}x)" for v, r in res.items()), flush=True)
    if a.json:
        write_json(a.json, report)
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()

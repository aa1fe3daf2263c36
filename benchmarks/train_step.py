"""LabCNN training throughput (images/s): plain jitted step in a Python loop vs a ``lax.scan``-fused chunk.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 PYTHONPATH=. \\
        python benchmarks/train_step.py --batch 128 512 --impl native im2col

Each row: median over ``--windows`` timed windows of ``--steps`` steps each, after a warm-up (compile + one
window). ``micro``: gradient accumulation over slices of that size inside the step
(``TrainConfig.microbatch``; keeps im2col buffers cache-sized). GFLOP/s counts the analytic LabCNN training
FLOPs (3x forward: conv/dense multiply-adds x 2); ``%peak`` is relative to the fastest of five 2048^3 f32
matmuls (``benchmarks/common.py``, as in ``peers.py``).
``--smoke``: a couple of tiny steps per variant to check the script runs; no timing claims.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import numpy as np
from common import gemm_peak_gflops, lab_cnn_train_flops  # benchmarks/ (the script's folder)
from flax import nnx

from cnn_jax.config import Config, RunConfig, TrainConfig
from cnn_jax.models import LabCNN
from cnn_jax.steps import default_preprocess, train_step
from cnn_jax.trainer import Trainer


def measure(fn, windows: int) -> list[float]:
    fn()  # warm-up window (after compile)
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench(impl: str, batch: int, mode: str, steps: int, windows: int, microbatch: int | None = None) -> float:
    model = LabCNN(impl=impl, rngs=nnx.Rngs(0))
    cfg = Config(train=TrainConfig(batch_size=batch, epochs=1, microbatch=microbatch),
                 run=RunConfig(steps_per_chunk=steps))
    n = batch * steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    trainer = Trainer(model, cfg, n, (28, 28, 1))
    holder = {"state": trainer.init_state()}
    if mode == "scan":
        data = trainer.put_data(images, labels)

        def run():
            holder["state"], m = trainer.train_chunk(holder["state"], data, steps)
            jax.block_until_ready(m)
    else:
        step_fn = functools.partial(train_step, model=model, tx=trainer.tx, preprocess=default_preprocess,
                                    microbatch=microbatch)
        step = jax.jit(step_fn, donate_argnums=0)
        xs = [jax.device_put(images[i * batch:(i + 1) * batch]) for i in range(steps)]
        ys = [jax.device_put(labels[i * batch:(i + 1) * batch]) for i in range(steps)]

        def run():
            for x, y in zip(xs, ys, strict=True):
                holder["state"], out = step(holder["state"], x, y)
            jax.block_until_ready(out)
    run()  # compile
    times = measure(run, windows)
    return batch * steps / statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--impl", nargs="+", default=["native", "im2col"])
    p.add_argument("--mode", nargs="+", default=["loop", "scan"], choices=["loop", "scan"])
    p.add_argument("--microbatch", type=int, nargs="+", default=[0, 32],
                   help="gradient-accumulation slice (0: whole batch); see TrainConfig.microbatch")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--smoke", action="store_true",
                   help="tiny run to check the script works (no timing claims)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.windows, args.microbatch = [8], 2, 1, [0, 4]
    flops = lab_cnn_train_flops()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
          f"LabCNN {flops / 1e6:.1f} MFLOP per trained image"
          + (" [SMOKE: not a measurement]" if args.smoke else ""))
    peak = gemm_peak_gflops(256 if args.smoke else 2048)
    print(f"f32 GEMM 2048^3 (fastest of 5): {peak:.0f} GFLOP/s (reference for % peak)")
    print(f"{'impl':8} {'batch':>5} {'micro':>5} {'mode':5} {'img/s':>9} {'GFLOP/s':>8} {'%peak':>6}")
    for impl in args.impl:
        for batch in args.batch:
            for micro in args.microbatch:
                if micro and (micro >= batch or batch % micro):
                    continue
                for mode in args.mode:
                    ips = bench(impl, batch, mode, args.steps, args.windows, micro or None)
                    gf = ips * flops / 1e9
                    print(f"{impl:8} {batch:5d} {micro or '-':>5} {mode:5} {ips:9,.0f} {gf:8.1f} "
                          f"{100 * gf / peak:5.0f}%", flush=True)


if __name__ == "__main__":
    main()

"""LabCNN training throughput: cnn_jax vs its peers, side by side in one process and one sitting.

    python benchmarks/peers.py [--batch-sizes 128 512] [--windows 5] [--steps 20] [--json out.json] [--smoke]

Same network (Conv32-Pool-Conv64-Pool-Dense128-Dropout-Dense10, 28x28x1 input), same batch, Adam, float32:

* ``cnn_jax``: the package's train step, ``steps`` steps fused with ``lax.scan`` over device-resident data,
  with ``microbatch=16`` (in-step gradient accumulation, cache-sized activations); ``cnn_jax_microbatch32``
  and ``cnn_jax_full_batch`` show what that choice buys;
* ``flax_example``: the Flax MNIST example's style: ``nnx.Conv``/``nnx.max_pool``, an ``nnx.jit`` step fed host
  numpy batches from a Python loop;
* ``torch_eager``: PyTorch eager on the CPU, threads = cores (skipped if torch is not installed:
  ``pip install torch==2.13.0``).

Each runs after warm-up; runners alternate window by window so drift hits all equally; the median window is
reported. A GEMM peak (float32 matmul, 2048^2, jit; the best of measurements before and after each batch size's
block) is measured in the same run; achieved GFLOP/s counts
3x the forward FLOPs of the network per trained image. Prints a table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import gemm_peak_gflops, lab_cnn_forward_flops, lab_cnn_train_flops  # benchmarks/ (the script's folder)
from jax import lax

H = W = 28
NUM_CLASSES = 10


def synthetic_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, 1), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int32)


# --------------------------------------------------------------------------------------------- runners
# A runner factory takes (batch, steps) and returns a function that trains `steps` batches and blocks.
Runner = Callable[[], None]


def _cnn_jax(batch: int, steps: int, microbatch: int | None) -> Runner:
    from cnn_jax import Config, RunConfig, TrainConfig, Trainer, get_model

    images, labels = synthetic_data(batch * steps)
    mb = microbatch if microbatch and batch % microbatch == 0 and batch > microbatch else None
    cfg = Config(train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=batch, epochs=1, microbatch=mb),
                 run=RunConfig(steps_per_chunk=steps))
    trainer = Trainer(get_model("lab_cnn"), cfg, len(images), (H, W, 1))
    data = trainer.put_data(images, labels)  # device-resident uint8; shuffle/batch/scale inside the scan
    box = [trainer.init_state()]

    def run() -> None:
        box[0], metrics = trainer.train_chunk(box[0], data, steps)  # one compiled lax.scan over `steps` steps
        jax.block_until_ready(metrics)

    return run


def cnn_jax_runner(batch: int, steps: int) -> Runner:
    """Gradient accumulation over 16-image slices inside the step (about level with 32 on this CPU)."""
    return _cnn_jax(batch, steps, microbatch=16)


def cnn_jax_microbatch32_runner(batch: int, steps: int) -> Runner:
    return _cnn_jax(batch, steps, microbatch=32)


def cnn_jax_full_batch_runner(batch: int, steps: int) -> Runner:
    return _cnn_jax(batch, steps, microbatch=None)


def flax_example_runner(batch: int, steps: int) -> Runner:
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), padding="VALID", rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), padding="VALID", rngs=rngs)
            self.dense1 = nnx.Linear(1600, 128, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)
            self.dense2 = nnx.Linear(128, NUM_CLASSES, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
            x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
            x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
            return self.dense2(x)

    model = CNN(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    images, labels = synthetic_data(batch * steps)

    def run() -> None:
        loss = None
        for i in range(steps):  # host numpy batches, as in the example
            x = images[i * batch:(i + 1) * batch].astype(np.float32) / 255.0
            loss = train_step(model, optimizer, x, labels[i * batch:(i + 1) * batch])
        jax.block_until_ready(loss)

    return run


def torch_eager_runner(batch: int, steps: int) -> Runner:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, NUM_CLASSES),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = synthetic_data(batch * steps)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # NCHW
    y_all = torch.from_numpy(labels).long()

    def run() -> None:
        model.train()
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_all[i * batch:(i + 1) * batch]), y_all[i * batch:(i + 1) * batch])
            loss.backward()
            opt.step()

    return run


RUNNERS: dict[str, Callable[[int, int], Runner]] = {
    "cnn_jax": cnn_jax_runner,
    "cnn_jax_microbatch32": cnn_jax_microbatch32_runner,
    "cnn_jax_full_batch": cnn_jax_full_batch_runner,
    "flax_example": flax_example_runner,
    "torch_eager": torch_eager_runner,
}


def breakdown(batch: int, steps: int, windows: int) -> dict[str, float]:
    """Where cnn_jax's step time goes: milliseconds per step of forward, forward + backward, and the full
    scanned train step (+ optimizer update, on-device batch gather and scaling)."""
    from cnn_jax import get_model

    model = get_model("lab_cnn")
    images, labels = synthetic_data(batch * steps)
    x = jnp.asarray(images[:batch], jnp.float32) / 255.0
    y = jnp.asarray(labels[:batch])
    variables = model.init(jax.random.key(0), x[:1])
    key = jax.random.key(1)

    def loss(v, x, y):
        logits = model.apply(v, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": key}))
    fwd_bwd = jax.jit(jax.grad(loss))
    full = _cnn_jax(batch, steps, microbatch=None)
    parts = {"forward": lambda: fwd(variables, x), "forward+backward": lambda: fwd_bwd(variables, x, y)}
    out = {}
    for name, fn in parts.items():
        jax.block_until_ready(fn())
        ts = []
        for _ in range(windows):
            t = time.perf_counter()
            for _ in range(steps):
                r = fn()
            jax.block_until_ready(r)
            ts.append((time.perf_counter() - t) / steps)
        out[name] = 1e3 * statistics.median(ts)
    full()
    ts = []
    for _ in range(windows):
        t = time.perf_counter()
        full()
        ts.append((time.perf_counter() - t) / steps)
    out["full train step"] = 1e3 * statistics.median(ts)
    return out


def layer_profile(batch: int, steps: int, windows: int, microbatch: int = 16) -> dict[str, dict[str, float]]:
    """Forward + backward time of each LabCNN block on its own (cnn_jax ops, ``microbatch``-image slices inside
    ``lax.scan``, as in the train step), per ``batch`` images, with its FLOPs: which blocks are compute-bound
    and which are memory-bound."""
    from cnn_jax.ops import conv2d, max_pool

    def conv_block(x, k, b):
        return max_pool(jax.nn.relu(conv2d(x, k, b)), 2)

    keys = jax.random.split(jax.random.key(0), 8)
    n = max(batch * steps // microbatch, 1)
    rand = jax.random.normal
    fwd = lab_cnn_forward_flops()
    blocks = {  # name: (function of (params, x), params, one input slice's shape, forward FLOPs per image)
        "conv1 3x3x1x32 + relu + pool": (lambda p, x: conv_block(x, *p),
                                         (rand(keys[0], (3, 3, 1, 32)) * 0.3, jnp.zeros(32)), (H, W, 1),
                                         fwd["conv1"]),
        "conv2 3x3x32x64 + relu + pool": (lambda p, x: conv_block(x, *p),
                                          (rand(keys[1], (3, 3, 32, 64)) * 0.06, jnp.zeros(64)), (13, 13, 32),
                                          fwd["conv2"]),
        "dense 1600x128 + relu + 128x10": (lambda p, x: jax.nn.relu(x @ p[0]) @ p[1],
                                           (rand(keys[2], (1600, 128)) * 0.02, rand(keys[3], (128, 10)) * 0.1),
                                           (1600,), fwd["dense"]),
    }
    out = {}
    for i, (name, (f, params, shape, fwd_flops)) in enumerate(blocks.items()):
        xs = rand(keys[4 + i], (n, microbatch, *shape))
        cts = rand(keys[7], (n, *jax.eval_shape(f, params, xs[0]).shape))

        first = name.startswith("conv1")  # the first layer needs no input gradient; the others do

        @jax.jit
        def run(params, xs, cts, f=f, first=first):
            def body(acc, xc):
                x, ct = xc
                if first:
                    grads = jax.vjp(lambda p: f(p, x), params)[1](ct)[0]
                else:
                    grads, dx = jax.vjp(f, params, x)[1](ct)
                    grads = jax.tree.map(lambda g: g + 0 * jnp.sum(dx), grads)  # keep dx alive
                return jax.tree.map(jnp.add, acc, grads), None
            return lax.scan(body, jax.tree.map(jnp.zeros_like, params), (xs, cts))[0]

        jax.block_until_ready(run(params, xs, cts))
        ts = []
        for _ in range(windows):
            t = time.perf_counter()
            jax.block_until_ready(run(params, xs, cts))
            ts.append(time.perf_counter() - t)
        ms = 1e3 * statistics.median(ts) * batch / (n * microbatch)
        train_flops = (2 if first else 3) * fwd_flops
        out[name] = {"ms": ms, "gflops": train_flops * batch / ms / 1e6}
    return out


def measure(batch: int, steps: int, windows: int, names: list[str]) -> dict[str, float]:
    runners = {}
    for name in names:
        try:
            runners[name] = RUNNERS[name](batch, steps)
        except ImportError as e:
            print(f"  skipping {name}: {e}")
    for run in runners.values():  # compile and warm up
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {name: batch * steps / statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    p.add_argument("--steps", type=int, default=20, help="batches per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows per runner (median reported)")
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    p.add_argument("--json", default=None, help="write the results here (default: print only)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one window: checks the script runs")
    p.add_argument("--no-breakdown", action="store_true", help="skip the step-time breakdown of cnn_jax")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch_sizes, a.steps, a.windows = [8], 2, 1
    gemm_n = 256 if a.smoke else 2048
    peaks = [gemm_peak_gflops(gemm_n)]
    flops = lab_cnn_train_flops()
    measured = {}
    for batch in a.batch_sizes:
        measured[batch] = measure(batch, a.steps, a.windows, a.runners)
        peaks.append(gemm_peak_gflops(gemm_n))  # again after each block: the peak is the best seen
    peak = max(peaks)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "ld_preload": os.environ.get("LD_PRELOAD", ""), "gemm_peak_gflops": peak, "gemm_peaks_seen": peaks,
        "train_mflop_per_image": flops / 1e6, "results": [],
    }
    print(f"backend={report['backend']} cpus={report['cpu_count']} GEMM peak={peak:.1f} GFLOP/s (best of "
          f"{', '.join(f'{v:.0f}' for v in peaks)}) LabCNN={flops / 1e6:.1f} MFLOP/trained image")
    print(f"{'batch':>5} {'runner':20} {'images/s':>10} {'vs torch':>9} {'GFLOP/s':>8} {'% peak':>7}")
    for batch, ips in measured.items():
        for name, v in ips.items():
            ratio = v / ips["torch_eager"] if "torch_eager" in ips else None
            gf = v * flops / 1e9
            row = {"batch": batch, "runner": name, "images_per_s": v, "vs_torch": ratio, "gflops": gf,
                   "share_of_peak": gf / peak}
            report["results"].append(row)
            vs = f"{ratio:8.2f}x" if ratio is not None else f"{'n/a':>9}"
            print(f"{batch:5d} {name:20} {v:10.0f} {vs} {gf:8.1f} {100 * gf / peak:6.1f}%")
    if not a.no_breakdown:
        batch = a.batch_sizes[0]
        parts = breakdown(batch, a.steps, a.windows)
        full = parts["full train step"]
        print(f"cnn_jax step breakdown at batch {batch} (full batch, ms per step; share of the full step):")
        prev = 0.0
        for name, ms in parts.items():
            print(f"  {name:18} {ms:7.2f} ms  (+{ms - prev:6.2f} ms, {100 * (ms - prev) / full:5.1f}%)")
            prev = ms
        report["breakdown_ms"] = parts
        layers = layer_profile(batch, a.steps, a.windows)
        print(f"cnn_jax blocks on their own, forward + backward per {batch} images (microbatch 16, in lax.scan):")
        for name, v in layers.items():
            print(f"  {name:32} {v['ms']:7.2f} ms  {v['gflops']:6.1f} GFLOP/s ({100 * v['gflops'] / peak:3.0f}% peak)")
        report["layers"] = layers
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()

"""Training throughput: cnn_jax against PyTorch eager and the Flax example's style, side by side in one run.

    python benchmarks/peers.py [--batch-sizes 128 512] [--rounds 7] [--window 1.0] [--models lab bn]
                               [--json out.json] [--smoke]

Every row trains the whole step (forward, backward, Adam update) of one network at one batch size:

* ``lab``: LabCNN (Conv32-Pool-Conv64-Pool-Dense128-Dropout-Dense10, 28x28x1);
* ``bn``: the ``best`` preset's BN-CNN (widths 48/96/192, SAME convs, batch norm, dense 256, dropout 0.2);
* ``resnet``: the ``fast`` preset's ResNet (16-32-64-128 channels, residual blocks at 14x14 and 3x3, batch norm).

Runners: ``jax_defaults`` (``TrainConfig(batch_size=B, optimizer="adam")``: what a user gets without flags;
``microbatch="auto"``),
``jax_best`` (the fastest flags measured: ``microbatch`` 16 for LabCNN, 32 for the BN-CNN as in the preset),
``jax_bf16`` (``precision="bf16"``: bfloat16 compute, float32 master weights, with the best flags),
``flax_example`` (LabCNN in the Flax MNIST example's style: an ``nnx.jit`` step fed host numpy batches),
``torch_f32`` and ``torch_bf16`` (PyTorch eager, 2 threads, float32 and ``torch.autocast`` bfloat16; skipped
when torch is not installed: ``pip install torch==2.13.0``). cnn_jax runs ``Trainer.train_chunk`` over
device-resident data, as training does.

Timing: after warm-up each runner gets the step count that fills ``--window`` seconds; each round runs every
runner once (the order rotated each round, so drift hits all alike); the median and the range over rounds are
reported. GEMM peaks (2048^3 under ``jit``; float32, and bfloat16 inputs with float32 accumulation) are
measured before and after each block in the same run; the best reading is the peak. GFLOP/s counts 3x the
forward FLOPs per trained image. Prints a table (also as Markdown with ``--markdown``) and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (  # benchmarks/ (the script's folder)
    cnn_forward_flops,
    gemm_peak_gflops,
    machine,
    resnet_forward_flops,
)
from jax import lax

from cnn_jax.files import write_json

H = W = 28
NUM_CLASSES = 10
#: The networks: cnn_jax model name and constructor arguments, FLOP-count arguments, best flags.
MODELS = {
    "lab": {"name": "lab_cnn", "kwargs": {}, "flops": {}, "best": {"microbatch": 16}},
    "bn": {"name": "bn_cnn", "kwargs": {"widths": (48, 96, 192), "dropout": 0.2, "conv_dropout": 0.0},
           "flops": {"widths": (48, 96, 192), "dense": 256, "padding": "SAME"}, "best": {"microbatch": 32}},
    "resnet": {"name": "resnet", "kwargs": {"widths": (16, 32, 64, 128)}, "flops": {"widths": (16, 32, 64, 128)},
               "best": {"microbatch": 16}},
}
LABELS = {"jax_defaults": "cnn_jax, defaults", "jax_best": "cnn_jax, best flags", "jax_bf16": "cnn_jax, bf16",
          "flax_example": "Flax example style", "torch_f32": "PyTorch eager f32",
          "torch_bf16": "PyTorch eager bf16 autocast"}


def synthetic_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, 1), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int32)


def train_flops(model: str) -> float:
    count = resnet_forward_flops if MODELS[model]["name"] == "resnet" else cnn_forward_flops
    return 3.0 * sum(count(**MODELS[model]["flops"]).values())


# --------------------------------------------------------------------------------------------- runners
# A runner factory takes (model, batch) and returns run(steps): train `steps` batches, then block.
Runner = Callable[[int], None]


def jax_trainer(model: str, batch: int, **train):
    """``(trainer, data)``: a :class:`cnn_jax.Trainer` of ``model``'s network (Adam 1e-3, ``train`` flags; a
    ``microbatch`` that does not divide ``batch`` is off) and its device-resident synthetic training data."""
    from cnn_jax import Config, TrainConfig, Trainer, get_model

    spec = MODELS[model]
    images, labels = synthetic_data(max(16 * batch, 8192))
    if "microbatch" in train:  # else TrainConfig's default, "auto"
        mb = train["microbatch"]
        train["microbatch"] = mb if mb and batch > mb and batch % mb == 0 else None
    cfg = Config(train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=batch, epochs=1, **train))
    trainer = Trainer(get_model(spec["name"], **spec["kwargs"]), cfg, len(images), (H, W, 1))
    return trainer, trainer.put_data(images, labels)  # uint8; shuffle, gather, scale inside the step


def _cnn_jax(model: str, batch: int, **train) -> Runner:
    trainer, data = jax_trainer(model, batch, **train)
    spe = trainer.steps_per_epoch
    box = {"state": trainer.init_state(), "step": 0}

    def run(steps: int) -> None:
        metrics = None
        while steps > 0:  # a chunk never crosses an epoch
            k = min(steps, spe - box["step"] % spe)
            box["state"], metrics = trainer.train_chunk(box["state"], data, k)
            box["step"], steps = box["step"] + k, steps - k
        jax.block_until_ready(metrics)

    return run


def jax_defaults_runner(model: str, batch: int) -> Runner:
    return _cnn_jax(model, batch)


def jax_best_runner(model: str, batch: int) -> Runner:
    return _cnn_jax(model, batch, **MODELS[model]["best"])


def jax_bf16_runner(model: str, batch: int) -> Runner:
    return _cnn_jax(model, batch, precision="bf16", **MODELS[model]["best"])


def flax_example_runner(model: str, batch: int) -> Runner:
    if model != "lab":
        raise NotImplementedError("the Flax example's network is LabCNN")
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

    net = CNN(nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(net, optimizer, x, y):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    images, labels = synthetic_data(max(16 * batch, 8192))
    n = len(images) // batch
    box = {"i": 0}

    def run(steps: int) -> None:
        loss = None
        for _ in range(steps):  # host numpy batches, as in the example
            i = box["i"] % n
            x = images[i * batch:(i + 1) * batch].astype(np.float32) / 255.0
            loss = train_step(net, optimizer, x, labels[i * batch:(i + 1) * batch])
            box["i"] += 1
        jax.block_until_ready(loss)

    return run


def torch_net(model: str):
    """The PyTorch twin of ``model``'s network (NCHW, the same layers and shapes as cnn_jax's)."""
    from torch import nn

    if model == "lab":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, NUM_CLASSES))
    if model == "bn":
        layers, c = [], 1
        for w in MODELS["bn"]["kwargs"]["widths"]:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(3 * 3 * c, 256, bias=False), nn.BatchNorm1d(256),
                             nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, NUM_CLASSES))

    def conv_bn(c: int, w: int, pool: bool = False) -> list:  # Conv -> (MaxPool 2) -> BN -> ReLU
        return [nn.Conv2d(c, w, 3, padding=1, bias=False), *([nn.MaxPool2d(2)] if pool else []),
                nn.BatchNorm2d(w), nn.ReLU()]

    class Residual(nn.Module):
        def __init__(self, w: int):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(w, w), *conv_bn(w, w))

        def forward(self, x):
            return x + self.body(x)

    class Scale(nn.Module):
        def forward(self, x):
            return x * 0.125  # ResNet's logit_scale

    widths = MODELS["resnet"]["kwargs"]["widths"]
    layers = conv_bn(1, widths[0])
    for i, w in enumerate(widths[1:], start=1):
        layers += [*conv_bn(widths[i - 1], w, pool=True), *([Residual(w)] if i in (1, 3) else [])]
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], NUM_CLASSES),
                         Scale())


def _torch(model: str, batch: int, bf16: bool, device: str = "cpu") -> Runner:
    """PyTorch eager on ``device`` (``"cpu"``, or ``"cuda"``: data on the GPU too, each run synchronized)."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = torch_net(model)
    if device != "cpu":
        net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = synthetic_data(max(16 * batch, 8192))
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # NCHW
    y_all = torch.from_numpy(labels).long()
    if device != "cpu":
        x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(images) // batch
    box = {"i": 0}

    def run(steps: int) -> None:
        net.train()
        for _ in range(steps):
            i = box["i"] % n
            x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            box["i"] += 1
        if device != "cpu":
            torch.cuda.synchronize()

    return run


def torch_f32_runner(model: str, batch: int) -> Runner:
    return _torch(model, batch, bf16=False)


def torch_bf16_runner(model: str, batch: int) -> Runner:
    return _torch(model, batch, bf16=True)


RUNNERS: dict[str, Callable[[str, int], Runner]] = {
    "jax_defaults": jax_defaults_runner, "jax_best": jax_best_runner, "jax_bf16": jax_bf16_runner,
    "flax_example": flax_example_runner, "torch_f32": torch_f32_runner, "torch_bf16": torch_bf16_runner,
}


# ------------------------------------------------------------------------------------------- measuring
def _steps_for(run: Runner, window: float) -> int:
    """Warm up (compile), then the step count whose run takes about ``window`` seconds."""
    run(1)
    run(1)
    k = 1
    while True:
        t = time.perf_counter()
        run(k)
        dt = time.perf_counter() - t
        if dt >= min(0.25, window) or k >= 4096:
            return max(1, math.ceil(k * window / max(dt, 1e-9)))
        k *= 2


def measure(model: str, batch: int, rounds: int, window: float, names: list[str],
            factories: dict[str, Callable[[str, int], Runner]] | None = None) -> dict[str, dict]:
    """``{runner: {"images_per_s": median, "low": min, "high": max, "steps": per window, "windows": [...]}}``;
    ``factories``: runners by name (default :data:`RUNNERS`)."""
    factories = RUNNERS if factories is None else factories
    runners, steps = {}, {}
    for name in names:
        try:
            runners[name] = factories[name](model, batch)
        except (ImportError, NotImplementedError) as e:
            if not isinstance(e, NotImplementedError):
                print(f"  skipping {name}: {e}")
            continue
        steps[name] = _steps_for(runners[name], window)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            t = time.perf_counter()
            runners[name](steps[name])
            rates[name].append(batch * steps[name] / (time.perf_counter() - t))
    return {name: {"images_per_s": statistics.median(v), "low": min(v), "high": max(v), "steps": steps[name],
                   "windows": v} for name, v in rates.items()}


def breakdown(batch: int, steps: int, windows: int) -> dict[str, float]:
    """Where cnn_jax's LabCNN step time goes: milliseconds per step of forward, forward + backward, and the full
    train step in ``Trainer.train_chunk`` (+ optimizer update, on-device batch gather and scaling)."""
    from cnn_jax import get_model
    from cnn_jax.train_state import bind, model_state

    model = get_model("lab_cnn")
    images, labels = synthetic_data(batch * steps)
    x = jnp.asarray(images[:batch], jnp.float32) / 255.0
    y = jnp.asarray(labels[:batch])
    variables, _ = model_state(model)
    key = jax.random.key(1)

    def train_logits(params, x):  # as the train step computes them (cnn_jax.steps)
        return bind(model, params, {})(x, rngs=key)

    def loss(v, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(train_logits(v, x), y).mean()

    fwd = jax.jit(train_logits)
    fwd_bwd = jax.jit(jax.grad(loss))
    full = _cnn_jax("lab", batch)
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
    full(steps)
    ts = []
    for _ in range(windows):
        t = time.perf_counter()
        full(steps)
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
    fwd = cnn_forward_flops()
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
        flops = (2 if first else 3) * fwd_flops
        out[name] = {"ms": ms, "gflops": flops * batch / ms / 1e6}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=7, help="timed windows per runner, alternating (median reported)")
    p.add_argument("--window", type=float, default=1.0, help="seconds per timed window (at least)")
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    p.add_argument("--json", default=None, help="write the results here (default: print only)")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one short window: checks the script runs")
    p.add_argument("--no-breakdown", action="store_true", help="skip the step-time breakdown of cnn_jax")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch_sizes, a.rounds, a.window = [8], 1, 0.01
    gemm_n = 256 if a.smoke else 2048
    dtypes = {"f32": jnp.float32, "bf16": jnp.bfloat16}
    peaks_seen = {k: [gemm_peak_gflops(gemm_n, dtype=d)] for k, d in dtypes.items()}
    measured: dict[tuple[str, int], dict[str, dict]] = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for model in a.models:
        for batch in a.batch_sizes:
            print(f"measuring {model} at batch {batch} ...", flush=True)
            measured[model, batch] = measure(model, batch, a.rounds, a.window, a.runners)
            for k, d in dtypes.items():  # again after each block: the peak is the best seen
                peaks_seen[k].append(gemm_peak_gflops(gemm_n, dtype=d))
    peaks = {k: max(v) for k, v in peaks_seen.items()}
    report = {
        "date": started, **machine(),
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "rounds": a.rounds, "window_s": a.window,
        "gemm_peak_gflops": peaks, "gemm_peaks_seen": peaks_seen,
        "train_mflop_per_image": {m: train_flops(m) / 1e6 for m in a.models}, "results": [],
    }
    print(f"{report['date']}  {report['cpu']} ({report['cpu_flags']}), {report['cpu_count']} cpus, "
          f"backend {report['backend']}; GEMM peak f32 {peaks['f32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} "
          f"(bf16 in, f32 accumulate; best of {len(peaks_seen['f32'])} readings each)")
    header = ["model", "batch", "runner", "images/s (median)", "range", "vs PyTorch f32", "vs PyTorch bf16",
              "GFLOP/s", "% of GEMM peak"]
    rows = []
    for (model, batch), res in measured.items():
        torch_f32 = res.get("torch_f32", {}).get("images_per_s")
        torch_bf16 = res.get("torch_bf16", {}).get("images_per_s")
        for name, r in res.items():
            v = r["images_per_s"]
            gf = v * train_flops(model) / 1e9
            peak = peaks["bf16" if "bf16" in name else "f32"]
            row = {"model": model, "batch": batch, "runner": name, **{k: r[k] for k in ("images_per_s", "low", "high",
                                                                                          "steps", "windows")},
                   "vs_torch_f32": v / torch_f32 if torch_f32 else None,
                   "vs_torch_bf16": v / torch_bf16 if torch_bf16 else None, "gflops": gf, "share_of_peak": gf / peak}
            report["results"].append(row)
            rows.append([model, str(batch), LABELS[name], f"{v:,.0f}", f"{r['low']:,.0f}-{r['high']:,.0f}",
                         f"{row['vs_torch_f32']:.2f}x" if torch_f32 else "n/a",
                         f"{row['vs_torch_bf16']:.2f}x" if torch_bf16 else "n/a", f"{gf:.0f}",
                         f"{100 * gf / peak:.0f}% ({'bf16' if 'bf16' in name else 'f32'})"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    if a.markdown:
        print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    if not a.no_breakdown and "lab" in a.models:
        batch = a.batch_sizes[0]
        steps, windows = (2, 1) if a.smoke else (20, 5)
        parts = breakdown(batch, steps, windows)
        full = parts["full train step"]
        print(f"\ncnn_jax LabCNN step breakdown at batch {batch} (full batch, ms per step; share of the full step):")
        prev = 0.0
        for name, ms in parts.items():
            print(f"  {name:18} {ms:7.2f} ms  (+{ms - prev:6.2f} ms, {100 * (ms - prev) / full:5.1f}%)")
            prev = ms
        report["breakdown_ms"] = parts
        layers = layer_profile(batch, steps, windows)
        print(f"cnn_jax blocks on their own, forward + backward per {batch} images (microbatch 16, in lax.scan):")
        for name, v in layers.items():
            print(f"  {name:32} {v['ms']:7.2f} ms  {v['gflops']:6.1f} GFLOP/s "
                  f"({100 * v['gflops'] / peaks['f32']:3.0f}% of the f32 peak)")
        report["layers"] = layers
    if a.json:
        write_json(a.json, report)  # atomically
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()

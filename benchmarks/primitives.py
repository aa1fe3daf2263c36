"""Forward+backward time of conv2d + max_pool per implementation, plain jit and inside ``lax.scan``.

    python benchmarks/primitives.py [--batch 128] [--repeats 5] [--smoke]

Shapes are the LabCNN's two conv layers (28x28x1 -> 32, 13x13x32 -> 64, 3x3 VALID, then 2x2 max pool).
Prints a table with each implementation's time and its speed-up over the native XLA path, measured side
by side in this one process (median of ``--repeats`` timed windows, alternating implementations).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from cnn_jax import IMPLS, conv2d, max_pool

LAYERS = ((28, 1, 32), (13, 32, 64))  # (input size, in channels, out channels)


def make_step(impl: str, scanned: bool):
    def loss(kernels, x):
        for k in kernels:
            x = max_pool(jax.nn.relu(conv2d(x, k, impl=impl)), 2, impl="im2col" if impl == "im2col" else "native")
        return jnp.mean(x**2)

    grad = jax.grad(loss)

    def one(kernels, xs):
        return jax.tree.map(lambda g: g.sum(), grad(kernels, xs[0]))

    def many(kernels, xs):
        def body(c, x):
            return c + sum(jax.tree.leaves(jax.tree.map(jnp.sum, grad(kernels, x)))), None
        return jax.lax.scan(body, jnp.zeros(()), xs)[0]

    return jax.jit(many if scanned else one)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one window: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.steps, a.repeats = 4, 2, 1
    key = jax.random.key(0)
    kernels = [jax.random.normal(key, (3, 3, ci, co)) * 0.1 for _, ci, co in LAYERS]
    xs = jax.random.normal(key, (a.steps, a.batch, 28, 28, 1))
    results = {}
    for scanned in (False, True):
        fns = {impl: make_step(impl, scanned) for impl in IMPLS}
        times = {impl: [] for impl in IMPLS}
        for fn in fns.values():
            jax.block_until_ready(fn(kernels, xs if scanned else xs[:1]))  # compile + warm up
        for _ in range(a.repeats):
            for impl, fn in fns.items():
                t = time.perf_counter()
                if scanned:
                    jax.block_until_ready(fn(kernels, xs))
                else:
                    for i in range(a.steps):
                        jax.block_until_ready(fn(kernels, xs[i: i + 1]))
                times[impl].append(time.perf_counter() - t)
        for impl in IMPLS:
            med = statistics.median(times[impl])
            results[("scan" if scanned else "jit", impl)] = a.steps * a.batch / med
    print(f"backend={jax.default_backend()} batch={a.batch} (images/s, forward+backward of 2 conv+pool layers)")
    print(f"{'mode':6} {'impl':8} {'images/s':>10} {'vs native':>10}")
    for (mode, impl), ips in results.items():
        print(f"{mode:6} {impl:8} {ips:10.0f} {ips / results[(mode, 'native')]:9.2f}x")
    return results


if __name__ == "__main__":
    main()

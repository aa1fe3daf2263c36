"""Helpers shared by the benchmark scripts: the LabCNN FLOP count and a measured GEMM peak."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def lab_cnn_train_flops(size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64), dense: int = 128,
                        classes: int = 10) -> float:
    """FLOPs per trained image: 3x the forward multiply-adds (x2) of LabCNN's VALID 3x3 convs and dense layers
    (~15.8 MFLOP for 28x28x1)."""
    fwd, h, c = 0, size, channels
    for w in widths:
        h -= 2
        fwd += 2 * h * h * 9 * c * w
        h, c = h // 2, w
    fwd += 2 * h * h * c * dense + 2 * dense * classes
    return 3.0 * fwd


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` jitted float32 ``n x n`` matmuls: the reference for "% of peak"."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9

"""Helpers shared by the benchmark scripts: the LabCNN FLOP count and a measured GEMM peak."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def lab_cnn_forward_flops(size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64), dense: int = 128,
                          classes: int = 10) -> dict[str, float]:
    """Forward FLOPs per image (multiply-adds x 2) of LabCNN's layers: ``conv1``, ``conv2``, ... (VALID 3x3)
    and ``dense`` (both dense layers)."""
    out, h, c = {}, size, channels
    for i, w in enumerate(widths):
        h -= 2
        out[f"conv{i + 1}"] = 2.0 * h * h * 9 * c * w
        h, c = h // 2, w
    out["dense"] = 2.0 * (h * h * c * dense + dense * classes)
    return out


def lab_cnn_train_flops(**kwargs) -> float:
    """FLOPs per trained image: 3x the forward FLOPs (~15.8 MFLOP for 28x28x1); kwargs as
    :func:`lab_cnn_forward_flops`."""
    return 3.0 * sum(lab_cnn_forward_flops(**kwargs).values())


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

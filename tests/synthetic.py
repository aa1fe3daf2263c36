"""Synthetic learnable image data for tests: class prototypes + noise, uint8 NHWC."""

import numpy as np


def make_data(n: int, seed: int = 0, size: int = 28, classes: int = 10, noise: float = 60.0):
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).uniform(0, 255, (classes, size, size, 1))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.clip(protos[y] * 0.6 + 50 + rng.normal(0, noise, (n, size, size, 1)), 0, 255).astype(np.uint8)
    return x, y

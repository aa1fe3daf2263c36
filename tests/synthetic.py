"""Synthetic data for tests: learnable images (class prototypes + noise, uint8 NHWC), gzipped IDX files."""

import gzip
import os
from pathlib import Path

import numpy as np


def idx_gz_bytes(array: np.ndarray) -> bytes:
    """Gzipped IDX bytes of a uint8 array."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def write_idx_gz(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file."""
    Path(path).write_bytes(idx_gz_bytes(array))


def make_data(n: int, seed: int = 0, size: int = 28, classes: int = 10, noise: float = 60.0):
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).uniform(0, 255, (classes, size, size, 1))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.clip(protos[y] * 0.6 + 50 + rng.normal(0, noise, (n, size, size, 1)), 0, 255).astype(np.uint8)
    return x, y


def train(trainer, data, epochs: int, state=None, chunk: int | None = None):
    """``epochs`` epochs of ``trainer.train_chunk`` from ``state`` (default: a fresh one); the placed state."""
    state = trainer.init_state() if state is None else state
    placed = trainer.put_data(*data)
    for _ in range(epochs):
        done = 0
        while done < trainer.steps_per_epoch:
            steps = min(chunk or trainer.steps_per_epoch, trainer.steps_per_epoch - done)
            state, m = trainer.train_chunk(state, placed, steps)
            trainer.check_finite(state, m)
            done += steps
    return state

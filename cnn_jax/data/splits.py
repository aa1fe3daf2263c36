"""A dataset split as arrays, and the seeded validation hold-out: NumPy only (no TFDS), so that code running
where ``tensorflow_datasets`` is absent (``benchmarks/device_check.py``) splits as a run does."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ArraySplit", "split_validation"]


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split: ``images`` uint8 ``(N, 28, 28, 1)`` NHWC, ``labels`` int32 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int,
                     seed: int) -> tuple[ArraySplit, ArraySplit, np.ndarray]:
    """Hold out ``val_size`` random examples (seeded) of a train split: ``(train, val, val_indices)``.

    Both parts keep the original order of the examples they contain.
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"--val-size {val_size} must be in [0, {n}): the train split has {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:val_size])
    keep = np.ones(n, bool)
    keep[val_idx] = False
    return (ArraySplit(images[keep], labels[keep]), ArraySplit(images[val_idx], labels[val_idx]), val_idx)

"""Datasets: raw IDX files, TFDS builders that need no TensorFlow, in-memory splits, augmentations.

Modules: :mod:`~cnn_jax.data.idx` (IDX files), :mod:`~cnn_jax.data.sources` (finding/validating raw
files), :mod:`~cnn_jax.data.builders` (TF-free TFDS builders, ``prepare``), :mod:`~cnn_jax.data.loading`
(``load``, decode cache, validation split), :mod:`~cnn_jax.data.augment` (normalize, augmentations).
CLI: ``python -m cnn_jax.data prepare fashion_mnist --from DIR [--data-dir D]``.
"""

from cnn_jax.data.augment import (
    AUGMENTATIONS,
    DEFAULT_AUGMENT,
    NORM_STATS,
    augment_for,
    flips_allowed,
    make_augment,
    normalize,
)
from cnn_jax.data.builders import prepare
from cnn_jax.data.idx import IdxError, parse_idx, read_idx
from cnn_jax.data.loading import ArraySplit, Splits, load, split_validation
from cnn_jax.data.sources import DataDirError, DatasetNotFoundError, DataSourceError, canonical_name

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENT",
    "NORM_STATS",
    "ArraySplit",
    "DataDirError",
    "DataSourceError",
    "DatasetNotFoundError",
    "IdxError",
    "Splits",
    "augment_for",
    "canonical_name",
    "flips_allowed",
    "load",
    "make_augment",
    "normalize",
    "parse_idx",
    "prepare",
    "read_idx",
    "split_validation",
]

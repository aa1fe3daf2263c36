"""Datasets: raw IDX files, TFDS builders that need no TensorFlow, in-memory splits, augmentations.

Modules: :mod:`~cnn_jax.data.idx` (IDX files), :mod:`~cnn_jax.data.sources` (finding/validating raw
files), :mod:`~cnn_jax.data.builders` (TF-free TFDS builders), :mod:`~cnn_jax.data.preparation` (``prepare``),
:mod:`~cnn_jax.data.network` (download mirror, reachability), :mod:`~cnn_jax.data.loading`
(``load``, decode cache), :mod:`~cnn_jax.data.splits` (arrays, the validation hold-out),
:mod:`~cnn_jax.data.augment` (normalize, augmentations).
CLI: ``python -m cnn_jax.data prepare fashion_mnist --from DIR [--data-dir D]``.

The names below are imported when first used, so that ``idx``, ``sources``, ``splits`` and ``augment`` (NumPy and
JAX only) work where ``tensorflow_datasets`` is not installed; ``load`` and ``prepare`` need it.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> the submodule that defines it.
_WHERE = {
    **dict.fromkeys(("AUGMENTATIONS", "DEFAULT_AUGMENT", "EPOCH_AUGMENTATIONS", "FLIPS", "NORM_STATS",
                     "augment_for", "flips_allowed",
                     "make_augment", "normalize"), "augment"),
    "prepare": "preparation",
    **dict.fromkeys(("IdxError", "parse_idx", "read_idx"), "idx"),
    **dict.fromkeys(("Splits", "load"), "loading"),
    **dict.fromkeys(("ArraySplit", "split_validation"), "splits"),
    **dict.fromkeys(("DataDirError", "DatasetNotFoundError", "DataSourceError", "canonical_name"), "sources"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))

"""cnn_jax: convolutional networks in JAX/Flax, from hand-made convolution to fast training.

Each public name is imported from its module when first used (PEP 562), so that ``import cnn_jax`` for the
primitives, or ``cnn-jax --help``, does not load training, Orbax or the data layer.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

#: Module -> the public names it gives ``cnn_jax``.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "cnn_jax.ops": ("IMPLS", "avg_pool", "conv2d", "conv_output_shape", "default_impl", "max_pool"),
    "cnn_jax.filters": ("FILTERS", "apply_filter_bank", "filter_bank"),
    "cnn_jax.models": ("BNCNN", "MODELS", "LabCNN", "ResNet", "get_model", "register_model"),
    "cnn_jax.config": ("PRESETS", "Config", "ConfigError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig"),
    "cnn_jax.steps": ("default_preprocess",),
    "cnn_jax.trainer": ("NonFiniteLossError", "Trainer"),
    "cnn_jax.train": ("StoppedError", "train_and_evaluate"),
    "cnn_jax.train_state": ("TrainState", "create_train_state", "make_optimizer"),
    "cnn_jax.checkpoint": ("CheckpointError", "IncompatibleCheckpointError"),
    "cnn_jax.inference": ("LoadedModel", "load"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

try:
    __version__ = metadata.version("cnn_jax")
except metadata.PackageNotFoundError:  # run from a checkout that is not installed (PYTHONPATH=.)
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'cnn_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


"""cnn_jax: convolutional networks in JAX/Flax, from hand-made convolution to fast training."""

from cnn_jax.config import PRESETS, Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from cnn_jax.filters import FILTERS, apply_filter_bank, filter_bank
from cnn_jax.models import BNCNN, MODELS, LabCNN, ResNet, get_model, register_model
from cnn_jax.ops import IMPLS, avg_pool, conv2d, conv_output_shape, default_impl, max_pool
from cnn_jax.steps import default_preprocess
from cnn_jax.train import NonFiniteLossError, Trainer, train_and_evaluate
from cnn_jax.train_state import TrainState, create_train_state, make_optimizer

__all__ = [
    "FILTERS",
    "IMPLS",
    "apply_filter_bank",
    "avg_pool",
    "conv2d",
    "conv_output_shape",
    "default_impl",
    "filter_bank",
    "max_pool",
    "BNCNN",
    "Config",
    "DataConfig",
    "LabCNN",
    "MODELS",
    "ModelConfig",
    "NonFiniteLossError",
    "PRESETS",
    "ResNet",
    "RunConfig",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "create_train_state",
    "default_preprocess",
    "get_model",
    "make_optimizer",
    "register_model",
    "train_and_evaluate",
]
__version__ = "0.1.0"


def load(path, which: str | int = "best"):
    """A trained model from a run folder: ``cnn_jax.load(run_dir).predict(images)``; see :mod:`cnn_jax.inference`."""
    from cnn_jax.inference import load as _load

    return _load(path, which)


__all__ += ["load"]

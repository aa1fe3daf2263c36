"""cnn_jax: convolutional networks in JAX/Flax, from hand-made convolution to fast training."""

from cnn_jax.filters import FILTERS, apply_filter_bank, filter_bank
from cnn_jax.ops import IMPLS, avg_pool, conv2d, conv_output_shape, default_impl, max_pool

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
]
__version__ = "0.1.0"

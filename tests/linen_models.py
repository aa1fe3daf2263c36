"""The Flax Linen models cnn_jax had before its NNX models (``cnn_jax/models.py`` at 63d6634), kept for the tests
only: every checkpoint saved before holds their variables, and the NNX models must read them and compute the same.

All models take NHWC float input ``(N, H, W, C)`` and return logits ``(N, num_classes)``; call them with
``train=True`` to enable dropout (rng stream ``"dropout"``) and batch-norm statistics updates
(collection ``"batch_stats"``, mutable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.ops import conv2d, dot_general, max_pool

__all__ = ["Conv", "LabCNN", "BNCNN", "ResNet", "MODELS", "get_model", "register_model"]


class Conv(nn.Module):
    """2D convolution layer over :func:`cnn_jax.ops.conv2d`; params ``kernel`` (HWIO) and ``bias`` (O,).

    ``impl``: ``"native"``, ``"im2col"`` or None (:func:`cnn_jax.ops.default_impl`).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    padding: str = "VALID"
    use_bias: bool = True
    impl: str | None = None
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        # Compute in the input dtype (bf16 under mixed precision: params arrive already cast).
        kernel = kernel.astype(x.dtype)
        bias = None if bias is None else bias.astype(x.dtype)
        return conv2d(x, kernel, bias, stride=self.strides, padding=self.padding, impl=self.impl)


class LabCNN(nn.Module):
    """Conv(32,3x3,ReLU) -> MaxPool 2 -> Conv(64,3x3,ReLU) -> MaxPool 2 -> Dense(128,ReLU) -> Dropout
    -> Dense(num_classes).

    VALID convs (Keras style): 28 -> 26 -> 13 -> 11 -> 5, flatten ``5*5*64 = 1600``.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    dense: int = 128
    dropout: float = 0.5
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for w in self.widths:
            x = nn.relu(Conv(w, impl=self.impl)(x))
            x = max_pool(x, 2, impl=self.impl)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.dense, dot_general=dot_general)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dot_general=dot_general)(x)


class BNCNN(nn.Module):
    """VGG-style CNN with batch norm and dropout, about 3x LabCNN's FLOPs (28x28 input).

    Stage ``i``: Conv(widths[i], 3x3, SAME, no bias) -> BatchNorm -> ReLU -> MaxPool 2
    -> Dropout(``conv_dropout``)
    (28 -> 14 -> 7 -> 3 for three stages), then Flatten -> Dense(``dense``) -> BN -> ReLU -> Dropout -> Dense.
    ``bn_axis_name`` syncs batch statistics across a ``pmap`` axis.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    dense: int = 256
    dropout: float = 0.3
    conv_dropout: float = 0.1
    impl: str | None = None
    bn_axis_name: str | None = None
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def bn(y):
            return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                                axis_name=self.bn_axis_name,
                                dtype=y.dtype)(y)

        for w in self.widths:
            x = nn.relu(bn(Conv(w, padding="SAME", use_bias=False, impl=self.impl)(x)))
            x = max_pool(x, 2, impl=self.impl)
            x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(bn(nn.Dense(self.dense, use_bias=False, dtype=x.dtype, dot_general=dot_general)(x)))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=x.dtype, dot_general=dot_general)(x)


class ResNet(nn.Module):
    """A small residual CNN in the shape of the DAWNBench ResNet-9 (Myrtle), sized for 28x28 inputs.

    Stem: Conv(``widths[0]``, 3x3, SAME) -> BN -> ReLU. Then for each later width ``w`` (stage ``i`` = 1, 2, ...):
    Conv(w) -> MaxPool 2 -> BN -> ReLU (28 -> 14 -> 7 -> 3), and on the stages in ``residual`` a block
    ``x + ReLU(BN(Conv(ReLU(BN(Conv(x))))))``. Then global max pool -> Dropout -> Dense(num_classes), the logits
    multiplied by ``logit_scale`` (small logits train faster with a high learning rate). Convs have no bias.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128, 256)
    residual: Sequence[int] = (1, 3)
    dropout: float = 0.0
    logit_scale: float = 0.125
    impl: str | None = None
    bn_axis_name: str | None = None
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv_bn(y, w, pool=False):  # Conv -> (MaxPool 2) -> BN
            y = Conv(w, padding="SAME", use_bias=False, impl=self.impl)(y)
            y = max_pool(y, 2, impl=self.impl) if pool else y
            return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, axis_name=self.bn_axis_name,
                                dtype=y.dtype)(y)

        x = nn.relu(conv_bn(x, self.widths[0]))
        for i, w in enumerate(self.widths[1:], start=1):
            x = nn.relu(conv_bn(x, w, pool=True))
            if i in self.residual:
                x = x + nn.relu(conv_bn(nn.relu(conv_bn(x, w)), w))
        x = jnp.max(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=x.dtype, dot_general=dot_general)(x) * self.logit_scale


MODELS: dict[str, Callable[..., nn.Module]] = {"lab_cnn": LabCNN, "bn_cnn": BNCNN, "resnet": ResNet}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add ``factory`` (a Module class or function returning one) under ``name``."""
    MODELS[name] = factory


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Model by registry name, e.g. ``get_model("bn_cnn", widths=(48, 96, 192), dropout=0.4)``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(**kwargs)

"""Flax NNX CNNs built on :mod:`cnn_jax.ops`, and a small name -> model registry.

All models take NHWC float input ``(N, H, W, C)`` and return logits ``(N, num_classes)``::

    model = LabCNN(rngs=nnx.Rngs(0))   # parameters initialised; training mode
    logits = model(x)                   # dropout on, batch norm on batch statistics (updated in place)
    model.eval(); logits = model(x)     # dropout off, batch norm on its running averages

``model(x, rngs=...)`` takes the dropout key (an ``nnx.Rngs`` or a key) for that call; without it each
dropout layer draws from the stream it was built with. Submodules are named as Flax Linen named them
(``Conv_0``, ``BatchNorm_0``, ``Dense_0``, ...), so the parameter and batch-statistics trees (``nnx.Param``,
``nnx.BatchStat`` as pure dicts) are the ones every cnn_jax checkpoint holds, before NNX and after. Each layer
runs under a ``jax.named_scope`` of its name (profiles charge time to layers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.ops import conv2d, dot_general, max_pool

__all__ = ["Conv", "LabCNN", "BNCNN", "ResNet", "MODELS", "get_model", "register_model", "lecun_normal", "dirac",
           "Frozen", "frozen_params", "batch_norm_biases", "whitening_kernel"]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _truncated_normal_draws(key: jax.Array, size: int, dtype: Any) -> jax.Array:
    """``(size,)`` draws of a standard normal truncated to (-2, 2), as ``jax.random.truncated_normal`` draws."""
    return jax.random.truncated_normal(key, -2, 2, (size,), dtype)


@functools.partial(jax.jit, static_argnums=2)
def _first_scaled(draws: jax.Array, stddev: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return draws[:math.prod(shape)].reshape(shape) * stddev


def lecun_normal(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Flax's ``lecun_normal()`` (a truncated normal of variance ``1 / fan_in``, ``fan_in`` the product of every
    axis but the last: HWIO kernels and ``(in, out)`` matrices), bit for bit, but compiled once per power-of-two
    size instead of once per shape: the draws are counter-based per flat index (threefry, partitionable), so the
    first ``n`` of a longer draw are the ``n`` draws (``tests/test_models.py`` checks both)."""
    shape = tuple(shape)
    if not jax.config.jax_threefry_partitionable:  # draws not indexed element by element
        return nnx.initializers.lecun_normal()(key, shape, dtype)
    n = math.prod(shape)
    stddev = jnp.sqrt(jnp.array(1.0 / (n // shape[-1]), dtype)) / jnp.array(.87962566103423978, dtype)
    return _first_scaled(_truncated_normal_draws(key, 1 << (n - 1).bit_length(), dtype), stddev, shape)


def dirac(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """An HWIO kernel whose first ``min(in, out)`` filters are the identity (``out[j] = in[j]`` at the centre tap:
    Dirac initialisation, as airbench's) and whose others are :func:`lecun_normal`."""
    kh, kw, cin, cout = shape
    m = min(cin, cout)
    identity = jnp.zeros((kh, kw, cin, m), dtype).at[kh // 2, kw // 2, :m, :m].set(jnp.eye(m, dtype=dtype))
    return lecun_normal(key, shape, dtype).at[..., :m].set(identity)


class Frozen(nnx.Param):
    """A parameter the optimizer leaves as it is (no gradient; :func:`frozen_params`); checkpointed like the
    others."""


def frozen_params(model: nnx.Module) -> dict[str, Any]:
    """``model``'s parameter tree (pure dict, as :func:`cnn_jax.train_state.model_state`) of booleans: True at
    its :class:`Frozen` parameters."""
    state = nnx.state(model, nnx.Param)
    marks = jax.tree.map(lambda v: isinstance(v, Frozen), state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return nnx.to_pure_dict(marks)


def batch_norm_biases(model: nnx.Module) -> dict[str, Any]:
    """``model``'s parameter tree (pure dict) of booleans: True at the ``bias`` of each ``nnx.BatchNorm``."""
    norms = {path for path, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)}
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key == "bias" and tuple(k.key for k in path[:-1]) in norms, params)


def whitening_kernel(images: np.ndarray, size: int, channels: int, eps: float = 5e-4) -> np.ndarray:
    """An HWIO kernel ``(size, size, C, channels)`` that whitens ``images``' ``size x size`` patches (airbench's
    first layer): filters ``2j`` and ``2j+1`` are the ``j``-th principal direction of the patches (their uncentred
    second moments, largest first) divided by ``sqrt(eigenvalue + eps)``, and its negative. ``images``
    ``(N, H, W, C)`` float, standardised as the model sees them; ``channels`` even, at most ``2 * size**2 * C``."""
    _check_whitening(size, images.shape[-1], channels)
    dims, moments, count = size * size * images.shape[-1], 0.0, 0
    for start in range(0, len(images), 500):  # 500 images' patches at a time (float64)
        x = np.asarray(images[start:start + 500], np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # (n, H', W', C, kh, kw)
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims)  # (kh, kw, C): the kernel's HWI order
        moments, count = moments + patches.T @ patches, count + len(patches)
    values, vectors = np.linalg.eigh(moments / count)  # ascending
    top = vectors[:, ::-1][:, :channels // 2] / np.sqrt(values[::-1][:channels // 2] + eps)
    pairs = np.stack([top, -top], axis=-1).reshape(dims, channels)
    return pairs.reshape(size, size, images.shape[-1], channels).astype(np.float32)


def _check_whitening(size: int, in_channels: int, channels: int) -> None:
    if channels % 2 or not 0 < channels <= 2 * size * size * in_channels:
        raise ValueError(f"a whitening layer of {size}x{size} patches of {in_channels} channel(s) has an even number "
                         f"of filters up to {2 * size * size * in_channels} (each direction and its negative), got "
                         f"{channels}")


class Conv(nnx.Module):
    """2D convolution layer over :func:`cnn_jax.ops.conv2d`; params ``kernel`` ``(kh, kw, in, out)`` (HWIO)
    and ``bias`` ``(out,)``, float32. Computes in the input's dtype (bf16 under mixed precision).

    ``impl``: ``"native"``, ``"im2col"`` or None (:func:`cnn_jax.ops.default_impl`). ``frozen``: the kernel is
    :class:`Frozen` (no gradient flows to it).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int] = (3, 3), *,
                 strides: int = 1, padding: str = "VALID", use_bias: bool = True, impl: str | None = None,
                 kernel_init: Callable[..., Any] = lecun_normal, frozen: bool = False, rngs: nnx.Rngs):
        shape = (*kernel_size, in_features, out_features)
        self.kernel = (Frozen if frozen else nnx.Param)(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.strides, self.padding, self.impl = strides, padding, impl

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(x.dtype)
        if isinstance(self.kernel, Frozen):
            kernel = jax.lax.stop_gradient(kernel)
        bias = None if self.bias is None else self.bias[...].astype(x.dtype)
        return conv2d(x, kernel, bias, stride=self.strides, padding=self.padding, impl=self.impl)


def _dense(in_features: int, out_features: int, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dot_general=dot_general, kernel_init=lecun_normal,
                      rngs=rngs)


def _batch_norm(features: int, momentum: float, axis_name: str | None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, axis_name=axis_name,
                         use_running_average=False, rngs=rngs)


class _Named(nnx.Module):
    """Layers kept under Linen's names: ``_add("Conv", layer)`` stores ``Conv_0``, ``Conv_1``, ... in order, and
    ``_run(name, x)`` calls one under ``jax.named_scope(name)``."""

    def _add(self, kind: str, layer: nnx.Module) -> str:
        n = sum(1 for k in vars(self) if k.startswith(kind + "_") and k[len(kind) + 1:].isdigit())
        name = f"{kind}_{n}"
        setattr(self, name, layer)
        return name

    def _run(self, name: str, x: jax.Array, **kw: Any) -> jax.Array:
        with jax.named_scope(name):
            y = getattr(self, name)(x, **kw)
        return y.astype(x.dtype) if name.startswith("BatchNorm") else y  # BN keeps bf16 activations bf16


class LabCNN(_Named):
    """Conv(32,3x3,ReLU) -> MaxPool 2 -> Conv(64,3x3,ReLU) -> MaxPool 2 -> Dense(128,ReLU) -> Dropout
    -> Dense(num_classes).

    VALID convs (Keras style): 28 -> 26 -> 13 -> 11 -> 5, flatten ``5*5*64 = 1600``. ``input_shape``: one
    example ``(H, W, C)``, which sizes the first dense layer.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64), dense: int = 128,
                 dropout: float = 0.5, impl: str | None = None, input_shape: Sequence[int] = (28, 28, 1), *,
                 rngs: nnx.Rngs):
        self.num_classes, self.widths, self.dense, self.dropout = num_classes, tuple(widths), dense, dropout
        self.impl = impl
        h, w, c = input_shape
        self.convs = tuple(self._add("Conv", Conv(cin, cout, impl=impl, rngs=rngs))
                           for cin, cout in zip((c, *self.widths), self.widths, strict=False))
        for _ in self.widths:
            h, w = (h - 2) // 2, (w - 2) // 2
        self._add("Dense", _dense(h * w * self.widths[-1], dense, rngs))
        self._add("Dropout", nnx.Dropout(dropout, deterministic=False, rngs=rngs))
        self._add("Dense", _dense(dense, num_classes, rngs))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        for name in self.convs:
            x = max_pool(jax.nn.relu(self._run(name, x)), 2, impl=self.impl)
        x = jax.nn.relu(self._run("Dense_0", x.reshape(x.shape[0], -1)))
        return self._run("Dense_1", self._run("Dropout_0", x, rngs=rngs))


class BNCNN(_Named):
    """VGG-style CNN with batch norm and dropout, about 3x LabCNN's FLOPs (28x28 input).

    Stage ``i``: Conv(widths[i], 3x3, SAME, no bias) -> BatchNorm -> ReLU -> MaxPool 2
    -> Dropout(``conv_dropout``)
    (28 -> 14 -> 7 -> 3 for three stages), then Flatten -> Dense(``dense``) -> BN -> ReLU -> Dropout -> Dense.
    ``bn_axis_name`` syncs batch statistics across a ``pmap`` axis.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), dense: int = 256,
                 dropout: float = 0.3, conv_dropout: float = 0.1, impl: str | None = None,
                 bn_axis_name: str | None = None, momentum: float = 0.9, input_shape: Sequence[int] = (28, 28, 1),
                 *, rngs: nnx.Rngs):
        self.num_classes, self.widths, self.dense = num_classes, tuple(widths), dense
        self.dropout, self.conv_dropout, self.impl = dropout, conv_dropout, impl
        h, w, c = input_shape
        stages = []
        for cin, cout in zip((c, *self.widths), self.widths, strict=False):
            stages.append((self._add("Conv", Conv(cin, cout, padding="SAME", use_bias=False, impl=impl, rngs=rngs)),
                           self._add("BatchNorm", _batch_norm(cout, momentum, bn_axis_name, rngs)),
                           self._add("Dropout", nnx.Dropout(conv_dropout, deterministic=False, rngs=rngs))))
            h, w = h // 2, w // 2
        self.stages = tuple(stages)
        self.head = (self._add("Dense", _dense(h * w * self.widths[-1], dense, rngs, use_bias=False)),
                     self._add("BatchNorm", _batch_norm(dense, momentum, bn_axis_name, rngs)),
                     self._add("Dropout", nnx.Dropout(dropout, deterministic=False, rngs=rngs)))
        self._add("Dense", _dense(dense, num_classes, rngs))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        for conv, bn, drop in self.stages:
            x = max_pool(jax.nn.relu(self._run(bn, self._run(conv, x))), 2, impl=self.impl)
            x = self._run(drop, x, rngs=rngs)
        dense, bn, drop = self.head
        x = jax.nn.relu(self._run(bn, self._run(dense, x.reshape(x.shape[0], -1))))
        return self._run("Dense_1", self._run(drop, x, rngs=rngs))


class ResNet(_Named):
    """A small residual CNN in the shape of the DAWNBench ResNet-9 (Myrtle), sized for 28x28 inputs.

    Stem: Conv(``widths[0]``, 3x3, SAME) -> BN -> ReLU. Then for each later width ``w`` (stage ``i`` = 1, 2, ...):
    Conv(w) -> MaxPool 2 -> BN -> ReLU (28 -> 14 -> 7 -> 3), and on the stages in ``residual`` a block
    ``x + ReLU(BN(Conv(ReLU(BN(Conv(x))))))``. ``stem="patch"``: the stem is a 2x2 stride-2 convolution (each
    2x2 patch to ``widths[0]`` channels: 28 -> 14 at once) and stage 1 does not pool, so no layer runs at 28x28;
    ``stem="pool"``: the stem as by default, then MaxPool 2, and stage 1 does not pool (only the stem at 28x28).
    ``stem="whiten"``: the stem a frozen 3x3 convolution that whitens the images' patches (airbench's first layer,
    :func:`whitening_kernel`, set by :meth:`init_from_data` from the training images before training), a
    trainable bias, ReLU, no batch norm.
    ``init="dirac"``: every convolution after the stem starts as the identity on its first channels (:func:`dirac`).
    Then global max pool -> Dropout -> Dense(num_classes), the logits multiplied by ``logit_scale`` (small logits
    train faster with a high learning rate). Convs have no bias.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128, 256),
                 residual: Sequence[int] = (1, 3), dropout: float = 0.0, logit_scale: float = 0.125,
                 impl: str | None = None, bn_axis_name: str | None = None, momentum: float = 0.9,
                 stem: str = "conv", init: str = "lecun", input_shape: Sequence[int] = (28, 28, 1), *,
                 rngs: nnx.Rngs):
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose from {STEMS}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {INITS}")
        self.num_classes, self.widths, self.residual = num_classes, tuple(widths), tuple(residual)
        self.dropout, self.logit_scale, self.impl, self.stem_kind = dropout, logit_scale, impl, stem

        def conv_bn(cin: int, cout: int, **kw: Any) -> tuple[str, str]:
            kw = {"padding": "SAME", "kernel_init": dirac if init == "dirac" else lecun_normal, **kw}
            conv = Conv(cin, cout, use_bias=False, impl=impl, rngs=rngs, **kw)
            return self._add("Conv", conv), self._add("BatchNorm", _batch_norm(cout, momentum, bn_axis_name, rngs))

        patch = dict(kernel_size=(2, 2), strides=2, padding="VALID") if stem == "patch" else {}
        if stem == "whiten":
            try:
                _check_whitening(3, input_shape[-1], self.widths[0])
            except ValueError as e:
                raise ValueError(f"stem 'whiten': {e}; pick another first --widths") from None
            conv = Conv(input_shape[-1], self.widths[0], padding="SAME", frozen=True, impl=impl, rngs=rngs)
            self.stem = (self._add("Conv", conv),)
        else:
            self.stem = conv_bn(input_shape[-1], self.widths[0], kernel_init=lecun_normal, **patch)
        stages = []
        for i, (cin, w) in enumerate(zip(self.widths, self.widths[1:], strict=False), start=1):
            first = conv_bn(cin, w)
            stages.append((first, (conv_bn(w, w), conv_bn(w, w)) if i in self.residual else ()))
        self.stages = tuple(stages)
        self._add("Dropout", nnx.Dropout(dropout, deterministic=False, rngs=rngs))
        self._add("Dense", _dense(self.widths[-1], num_classes, rngs))

    def init_from_data(self, images: np.ndarray) -> None:
        """Set what the model learns from data before training: the whitening stem's kernel (``stem="whiten"``)
        from ``images`` ``(N, H, W, C)``, standardised as the model sees them; otherwise nothing."""
        if self.stem_kind == "whiten":
            conv = getattr(self, self.stem[0])
            conv.kernel[...] = jnp.asarray(whitening_kernel(images, 3, self.widths[0]))

    def _conv_bn(self, names: tuple[str, ...], x: jax.Array, pool: bool = False) -> jax.Array:
        if len(names) == 1:  # the whitening stem: no batch norm
            return self._run(names[0], x)
        conv, bn = names
        y = self._run(conv, x)
        return self._run(bn, max_pool(y, 2, impl=self.impl) if pool else y)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        x = jax.nn.relu(self._conv_bn(self.stem, x))
        if self.stem_kind == "pool":
            x = max_pool(x, 2, impl=self.impl)
        for i, (first, block) in enumerate(self.stages):
            x = jax.nn.relu(self._conv_bn(first, x, pool=i > 0 or self.stem_kind in ("conv", "whiten")))
            if block:
                x = x + jax.nn.relu(self._conv_bn(block[1], jax.nn.relu(self._conv_bn(block[0], x))))
        x = self._run("Dropout_0", jnp.max(x, axis=(1, 2)), rngs=rngs)
        return self._run("Dense_0", x) * self.logit_scale


#: :class:`ResNet`'s stems: ``conv`` (3x3 at full resolution), ``patch`` (2x2 stride 2: half resolution at once),
#: ``pool`` (3x3 at full resolution, then pooled: stage 1 at half resolution), ``whiten`` (a frozen 3x3 whitening
#: layer, :func:`whitening_kernel`).
STEMS = ("conv", "patch", "pool", "whiten")
#: :class:`ResNet`'s initialisations of the convolutions after the stem.
INITS = ("lecun", "dirac")

MODELS: dict[str, Callable[..., nnx.Module]] = {"lab_cnn": LabCNN, "bn_cnn": BNCNN, "resnet": ResNet}


def register_model(name: str, factory: Callable[..., nnx.Module]) -> None:
    """Add ``factory`` under ``name``: an ``nnx.Module`` class, or a function returning one, that takes ``rngs=``,
    ``num_classes=``, ``input_shape=`` (one example, ``(H, W, C)``) and its own keyword arguments; the module is
    called as ``model(x, rngs=...)`` (dropout keys; ``None`` in evaluation). A model with an
    ``init_from_data(images)`` method is given the first 5,000 training images, standardised, before training."""
    MODELS[name] = factory


def get_model(name: str, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
    """Model by registry name, e.g. ``get_model("bn_cnn", widths=(48, 96, 192), rngs=nnx.Rngs(0))``;
    ``rngs`` defaults to ``nnx.Rngs(0)``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(rngs=nnx.Rngs(0) if rngs is None else rngs, **kwargs)

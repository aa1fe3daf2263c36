"""Normalization and data augmentation: pure JAX functions on float NHWC batches.

Every augmentation is ``fn(key, x) -> x`` with ``x`` float ``(N, H, W, C)``; the output has ``x``'s shape
and dtype, depends only on ``key`` and ``x`` (deterministic for a key), each example gets its own random
draw, and all shapes are static, so the functions work under ``jit``, ``vmap`` and inside ``lax.scan``.

Typical use in a training step (shuffling/batching are the engine's)::

    augment = augment_for("fashion_mnist")                 # DEFAULT_AUGMENT["fashion_mnist"]
    x = normalize(images_uint8_batch, "fashion_mnist")     # float32, standardized
    x = augment(step_key, x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.data.sources import canonical_name

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENT",
    "EPOCH_AUGMENTATIONS",
    "FLIPS",
    "alternating_flip",
    "make_epoch_augment",
    "NORM_STATS",
    "augment_for",
    "channel_stats",
    "flips_allowed",
    "make_augment",
    "normalize",
    "random_crop",
    "random_erasing",
    "random_flip",
    "random_translate",
]

Augment = Callable[[jax.Array, jax.Array], jax.Array]

# Per-dataset (mean, std) of the [0, 1]-scaled training pixels. Fashion-MNIST's is measured on its 60,000
# training images (checked by tests/test_data.py); EMNIST Digits': None (no real EMNIST was available
# to measure it), so normalize() only scales it to [0, 1]; compute it with channel_stats().
NORM_STATS: dict[str, tuple[float, float] | None] = {
    "fashion_mnist": (0.2860, 0.3530),
    "emnist/digits": None,
}


def normalize(images, dataset: str | None = None) -> jax.Array:
    """uint8 images (any shape, e.g. NHWC) -> float32: ``x / 255``, then ``(x - mean) / std`` when
    ``dataset`` has statistics in :data:`NORM_STATS` (``dataset=None``: only the [0, 1] scaling)."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    if dataset is not None:
        stats = NORM_STATS[canonical_name(dataset)]
        if stats is not None:
            x = (x - stats[0]) / stats[1]
    return x


def channel_stats(images: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of uint8 images scaled to [0, 1] (host NumPy, float64 accumulation)."""
    x = np.asarray(images, np.float64) / 255.0
    return float(x.mean()), float(x.std())


def _check(x: jax.Array, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a float (N, H, W, C) batch, got shape {x.shape}")


def random_translate(key: jax.Array, x: jax.Array, max_shift: int = 2) -> jax.Array:
    """Shift each image by a random integer offset in ``[-max_shift, max_shift]`` along H and W,
    filling with zeros (= zero-pad by ``max_shift`` then take a random ``H x W`` crop)."""
    _check(x, "random_translate")
    n, h, w, c = x.shape
    if max_shift == 0:
        return x
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)

    def crop(image, off):
        return lax.dynamic_slice(image, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_crop(key: jax.Array, x: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pad by ``padding`` on each side and take a random crop of the original size."""
    return random_translate(key, x, max_shift=padding)


def random_flip(key: jax.Array, x: jax.Array, p: float = 0.5) -> jax.Array:
    """Mirror each image left-right (along W) with probability ``p``. Never for digits."""
    _check(x, "random_flip")
    flip = jax.random.bernoulli(key, p, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_erasing(key: jax.Array, x: jax.Array, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.2),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> jax.Array:
    """Random erasing (Zhong et al. 2017): with probability ``p`` per image, set a random rectangle of
    area ``scale`` x image area and aspect ratio in ``ratio`` (log-uniform) to ``value`` (0 = the mean
    after standardization)."""
    _check(x, "random_erasing")
    n, h, w, _ = x.shape
    k_apply, k_area, k_ratio, k_y, k_x = jax.random.split(key, 5)
    area = jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1]) * (h * w)
    aspect = jnp.exp(jax.random.uniform(k_ratio, (n,), minval=np.log(ratio[0]), maxval=np.log(ratio[1])))
    eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
    ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
    y0 = jnp.floor(jax.random.uniform(k_y, (n,)) * (h - eh + 1)).astype(jnp.int32)
    x0 = jnp.floor(jax.random.uniform(k_x, (n,)) * (w - ew + 1)).astype(jnp.int32)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]))
    erase = inside & jax.random.bernoulli(k_apply, p, (n,))[:, None, None]
    return jnp.where(erase[..., None], jnp.asarray(value, x.dtype), x)


AUGMENTATIONS: dict[str, Augment] = {
    "translate": random_translate,  # +-2 px
    "crop": random_crop,  # pad 4 + random crop
    "flip": random_flip,
    "erase": random_erasing,
}


def alternating_flip(key: jax.Array, x: jax.Array, index: jax.Array, epoch: jax.Array) -> jax.Array:
    """Derandomised flips (airbench): example ``index[i]`` is mirrored in its first epoch by a coin drawn from
    ``key`` and its index, and in every later epoch exactly when it was not in the previous one, so each image
    is seen both ways in every two epochs. ``x`` ``(N, H, W, C)`` (any dtype), ``index`` ``(N,)`` int, ``epoch``
    an int scalar."""
    _check(x, "alternating_flip")
    coin = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(index)
    flip = coin ^ (epoch % 2 == 1)
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


#: Augmentations that need each example's index and epoch, applied by the train loop
#: (:func:`cnn_jax.steps.train_chunk`) before the others: name -> ``fn(key, x, index, epoch)``.
EPOCH_AUGMENTATIONS: dict[str, Callable[..., jax.Array]] = {"altflip": alternating_flip}
#: The names that mirror images (refused for digits).
FLIPS = ("flip", "altflip")

DEFAULT_AUGMENT: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("translate", "flip", "erase"),
    "emnist/digits": ("translate", "erase"),
}


def flips_allowed(dataset: str) -> bool:
    """Whether ``"flip"`` (or ``"altflip"``) may augment ``dataset``: not for digits (a mirrored digit is another
    glyph)."""
    return canonical_name(dataset) != "emnist/digits"


def make_augment(names: Sequence[str], dataset: str | None = None) -> Augment:
    """Compose :data:`AUGMENTATIONS` ``names`` in order into one ``fn(key, x)`` (each gets its own key).

    ``dataset`` given: ``"flip"`` is refused where :func:`flips_allowed` says no (digit datasets).
    An empty ``names`` gives the identity.
    """
    names = tuple(names)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {sorted(AUGMENTATIONS)}")
    if dataset is not None and "flip" in names and not flips_allowed(dataset):
        raise ValueError(f"'flip' is not allowed for {canonical_name(dataset)}: mirrored digits are not "
                         "digits of the same class; use e.g. ('translate', 'erase')")
    fns = [AUGMENTATIONS[n] for n in names]

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        if not fns:
            return x
        for fn, k in zip(fns, jax.random.split(key, len(fns)), strict=True):
            x = fn(k, x)
        return x

    return augment


def make_epoch_augment(names: Sequence[str]) -> Callable[..., jax.Array] | None:
    """The :data:`EPOCH_AUGMENTATIONS` among ``names``, composed in order as ``fn(key, x, index, epoch)`` (the
    ``i``-th gets ``fold_in(key, i)``); the train loop applies it (``steps.train_chunk(epoch_augment=)``).
    None when ``names`` has none; the other names are :func:`make_augment`'s."""
    fns = [EPOCH_AUGMENTATIONS[n] for n in names if n in EPOCH_AUGMENTATIONS]
    if not fns:
        return None

    def augment(key: jax.Array, x: jax.Array, index: jax.Array, epoch: jax.Array) -> jax.Array:
        for i, fn in enumerate(fns):
            x = fn(jax.random.fold_in(key, i), x, index, epoch)
        return x

    return augment


def augment_for(dataset: str, names: Sequence[str] | None = None) -> Augment:
    """The augmentation for ``dataset``: ``names`` or :data:`DEFAULT_AUGMENT` (flip refused for digits)."""
    dataset = canonical_name(dataset)
    return make_augment(DEFAULT_AUGMENT[dataset] if names is None else names, dataset=dataset)

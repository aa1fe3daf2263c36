"""Augmentations and normalization: shapes, ranges, determinism, jit/scan/vmap use, no flip for digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data import augment as aug
from cnn_jax.data.augment import (
    AUGMENTATIONS,
    DEFAULT_AUGMENT,
    augment_for,
    make_augment,
    normalize,
    random_erasing,
    random_flip,
    random_translate,
)


@pytest.fixture(scope="module")
def batch():
    return jax.random.uniform(jax.random.key(0), (16, 28, 28, 1), jnp.float32)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_dtype_range_determinism(batch, name):
    fn = jax.jit(AUGMENTATIONS[name])
    out = fn(jax.random.key(1), batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(out, fn(jax.random.key(1), batch))
    assert not np.array_equal(out, fn(jax.random.key(2), batch))


def test_make_augment_composes_in_jit_scan_and_vmap(batch):
    fn = make_augment(DEFAULT_AUGMENT["fashion_mnist"], dataset="fashion_mnist")

    @jax.jit
    def epoch(key, x):
        def step(carry, k):
            y = fn(k, x)
            return carry + y.sum(), y[0]
        return jax.lax.scan(step, 0.0, jax.random.split(key, 3))

    total, firsts = epoch(jax.random.key(0), batch)
    assert firsts.shape == (3, 28, 28, 1) and np.isfinite(float(total))
    assert not np.array_equal(firsts[0], firsts[1])  # each step draws anew
    batches = jnp.stack([batch, batch])
    out = jax.vmap(fn)(jax.random.split(jax.random.key(0), 2), batches)
    assert out.shape == batches.shape
    np.testing.assert_array_equal(make_augment([])(jax.random.key(0), batch), batch)


def test_flip_mirrors_width():
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4, 1)
    np.testing.assert_array_equal(random_flip(jax.random.key(0), x, p=1.0), x[:, :, ::-1])
    np.testing.assert_array_equal(random_flip(jax.random.key(0), x, p=0.0), x)


def test_translate_moves_content_within_range():
    x = jnp.zeros((64, 28, 28, 1)).at[:, 10:18, 12:16].set(1.0)  # a blob far from the border
    out = random_translate(jax.random.key(3), x, max_shift=2)
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)))  # content kept, shifted
    ys, xs = np.nonzero(np.asarray(out[..., 0]).any(axis=2))[1], np.nonzero(np.asarray(out[..., 0]).any(axis=1))[1]
    assert ys.min() >= 8 and ys.max() <= 19 and xs.min() >= 10 and xs.max() <= 17
    assert len({tuple(np.argwhere(np.asarray(o[..., 0]))[0]) for o in out}) > 5  # different shifts


def test_erasing_area():
    x = jnp.ones((256, 28, 28, 1))
    out = random_erasing(jax.random.key(4), x, p=1.0, scale=(0.02, 0.2))
    erased = 1.0 - np.asarray(out).mean(axis=(1, 2, 3))
    assert erased.min() > 0.0 and erased.max() <= 0.3
    none = random_erasing(jax.random.key(4), x, p=0.0)
    np.testing.assert_array_equal(none, x)


def test_flip_refused_and_never_applied_for_digits(batch, monkeypatch):
    assert "flip" not in DEFAULT_AUGMENT["emnist/digits"] and "flip" in DEFAULT_AUGMENT["fashion_mnist"]
    for name in ("emnist/digits", "emnist_digits"):
        with pytest.raises(ValueError, match="'flip' is not allowed for emnist/digits"):
            make_augment(["translate", "flip"], dataset=name)
        with pytest.raises(ValueError, match="not allowed"):
            augment_for(name, ["flip"])

    def boom(key, x):
        raise AssertionError("flip applied to digits")

    monkeypatch.setitem(aug.AUGMENTATIONS, "flip", boom)
    out = augment_for("emnist/digits")(jax.random.key(0), batch)  # the default never reaches flip
    assert out.shape == batch.shape


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augment(["rotate"])


def test_normalize():
    images = np.array([[0, 255], [51, 102]], np.uint8).reshape(1, 2, 2, 1)
    x = normalize(images)
    assert x.dtype == jnp.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    mean, std = aug.NORM_STATS["fashion_mnist"]
    np.testing.assert_allclose(normalize(images, "fashion_mnist"), (np.asarray(x) - mean) / std, rtol=1e-6)
    np.testing.assert_array_equal(normalize(images, "emnist_digits"), x)  # no stats measured: scale only
    assert jax.jit(normalize, static_argnums=1)(images, "fashion_mnist").shape == images.shape


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs():
    """Epoch 0 mirrors a seeded half of the examples; each later epoch mirrors exactly those the previous one did
    not. The choice follows the example's index, not its place in the batch."""
    n = 256
    x = jnp.broadcast_to(jnp.arange(3, dtype=jnp.uint8)[None, None, :, None], (n, 2, 3, 1))  # each row 0 1 2
    index, key = jnp.arange(n), jax.random.key(7)
    fn = jax.jit(aug.alternating_flip)
    flipped = [np.asarray(fn(key, x, index, e)[:, 0, 0, 0] == 2) for e in range(4)]
    assert 0.35 < flipped[0].mean() < 0.65
    np.testing.assert_array_equal(flipped[1], ~flipped[0])
    np.testing.assert_array_equal(flipped[2], flipped[0])
    np.testing.assert_array_equal(flipped[3], flipped[1])
    order = np.random.default_rng(0).permutation(n)  # the same examples in another order: the same choices
    np.testing.assert_array_equal(np.asarray(fn(key, x[order], index[order], 0)[:, 0, 0, 0] == 2), flipped[0][order])
    other = np.asarray(fn(jax.random.key(8), x, index, 0)[:, 0, 0, 0] == 2)
    assert (other != flipped[0]).any()  # another run key, other coins

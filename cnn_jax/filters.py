"""A bank of classic image kernels and a helper that turns an image into a stack of feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import Impl, Padding, conv2d

__all__ = ["FILTERS", "filter_bank", "apply_filter_bank"]


def _gaussian(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


_F = np.float32
#: Named 2D kernels (KH, KW), float32. 3x3 unless the name says 5x5.
FILTERS: dict[str, np.ndarray] = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], _F),
    "box_blur": np.full((3, 3), 1 / 9, _F),
    "gaussian_blur": _gaussian(3, 0.85).astype(_F),
    "gaussian_blur_5x5": _gaussian(5, 1.0).astype(_F),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], _F),
    "sobel_x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], _F),
    "sobel_y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], _F),
    "prewitt_x": np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], _F),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], _F),
    "laplacian_of_gaussian_5x5": np.array(
        [[0, 0, -1, 0, 0], [0, -1, -2, -1, 0], [-1, -2, 16, -2, -1], [0, -1, -2, -1, 0], [0, 0, -1, 0, 0]], _F
    ),
    "emboss": np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], _F),
    "outline": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], _F),
    "horizontal_lines": np.array([[-1, -1, -1], [2, 2, 2], [-1, -1, -1]], _F),
    "vertical_lines": np.array([[-1, 2, -1], [-1, 2, -1], [-1, 2, -1]], _F),
}
for _k in FILTERS.values():
    _k.setflags(write=False)


def filter_bank(names: Sequence[str] | None = None, in_channels: int = 1) -> jax.Array:
    """Stack named filters into one HWIO kernel ``(K, K, in_channels, len(names))``.

    Smaller filters are zero-padded (centred) to the largest size, which leaves their ``SAME``
    output unchanged. With ``in_channels > 1`` each filter sees the mean of the channels.
    """
    names = list(FILTERS) if names is None else list(names)
    if not names:
        raise ValueError("filter_bank: names is empty; pass None for the whole bank or some of " f"{sorted(FILTERS)}")
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"filter_bank: unknown filter(s) {unknown}; known: {sorted(FILTERS)}")
    size = max(FILTERS[n].shape[0] for n in names)
    stack = []
    for name in names:
        k = FILTERS[name]
        p = (size - k.shape[0]) // 2
        stack.append(np.pad(k, p))
    kernel = np.stack(stack, axis=-1)[:, :, None, :] / in_channels  # (K, K, 1, F)
    return jnp.asarray(np.repeat(kernel, in_channels, axis=2))


def apply_filter_bank(
    image: jax.Array,
    names: Sequence[str] | None = None,
    padding: Padding = "SAME",
    impl: Impl | None = None,
) -> jax.Array:
    """Feature maps of ``image`` under each named filter.

    Args:
      image: ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``; integers are converted to float32.
      names: filter names from :data:`FILTERS` (default: all of them, in order).
    Returns:
      ``(..., H', W', len(names))``: one channel per filter.
    """
    image = jnp.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim not in (3, 4):
        raise ValueError(f"apply_filter_bank: image must be (H, W), (H, W, C) or (N, H, W, C), got {image.shape}")
    if not jnp.issubdtype(image.dtype, jnp.floating):
        image = image.astype(jnp.float32)
    kernel = filter_bank(names, in_channels=image.shape[-1]).astype(image.dtype)
    return conv2d(image, kernel, padding=padding, impl=impl)

"""The convolution walkthrough: filters turn pixels into feature maps, ReLU keeps the positive
responses, max pooling halves them.

    python experiments/convolution_demo.py [--out DIR] [--num-images 3] [--filters sobel_x sharpen ...]

Uses a few real Fashion-MNIST test images when the IDX files are on the machine (Debian's
``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist), otherwise a generated
image of simple shapes; it says which. Writes PNG figures and prints where.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import FILTERS, apply_filter_bank, max_pool  # noqa: E402
from cnn_jax.cli import ArgumentParser  # noqa: E402
from cnn_jax.data.idx import read_idx  # noqa: E402
from cnn_jax.data.sources import DATASETS  # noqa: E402
from cnn_jax.files import NotOursError, atomic_path, claim_folder, unwritable  # noqa: E402

FASHION_DIRS = DATASETS["fashion_mnist"].default_dirs  # where Debian's dataset-fashion-mnist puts the files
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DEFAULT_FILTERS = ("identity", "gaussian_blur", "sharpen", "sobel_x", "sobel_y", "laplacian", "emboss", "outline")


def synthetic_image(size: int = 28) -> np.ndarray:
    """A uint8 ``(size, size)`` image with a disc, a bar and a diagonal: edges in every direction."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    img[(yy - size * 0.35) ** 2 + (xx - size * 0.35) ** 2 < (size * 0.2) ** 2] = 1.0
    img[int(size * 0.65): int(size * 0.8), int(size * 0.15): int(size * 0.85)] = 0.6
    img[np.abs(yy - (size - 1 - xx)) < 1.5] = np.maximum(img[np.abs(yy - (size - 1 - xx)) < 1.5], 0.8)
    return (img * 255).astype(np.uint8)


def load_images(num: int, data_dir: str | None) -> tuple[np.ndarray, list[str], str]:
    """``(num, 28, 28)`` uint8 images, their captions, and a sentence saying where they came from."""
    for d in [data_dir] if data_dir else FASHION_DIRS:
        images = Path(d) / "t10k-images-idx3-ubyte.gz"
        labels = Path(d) / "t10k-labels-idx1-ubyte.gz"
        if images.exists() and labels.exists():
            x, y = read_idx(images)[:num], read_idx(labels)[:num]
            captions = [f"test #{i}: {FASHION_CLASSES[c]}" for i, c in enumerate(y)]
            return x, captions, f"Fashion-MNIST test images from {d}"
    if data_dir:
        sys.exit(f"error: no t10k-images-idx3-ubyte.gz / t10k-labels-idx1-ubyte.gz in --data-dir {data_dir}")
    return synthetic_image()[None], ["generated shapes"], (
        "a generated image (Fashion-MNIST not found; `apt-get install dataset-fashion-mnist` for real images)"
    )


def plot_kernels(names: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(names), figsize=(1.9 * len(names), 2.3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        k = FILTERS[name]
        lim = float(np.abs(k).max())
        ax.imshow(k, cmap="coolwarm", vmin=-lim, vmax=lim)
        if k.shape[0] <= 3:
            for (r, c), v in np.ndenumerate(k):
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{name}\n{k.shape[0]}x{k.shape[1]}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Filter bank (kernels, cross-correlation)")
    _save(fig, path, dpi=110)


def _save(fig, path: Path, dpi: int) -> None:
    """Write the figure as a PNG atomically (a temporary file beside ``path``, then a rename) and close it."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def plot_walkthrough(image: np.ndarray, caption: str, names: list[str], maps: np.ndarray, relu: np.ndarray,
                     pooled: np.ndarray, path: Path) -> None:
    """One row per filter: kernel | feature map | ReLU | max-pooled, with shapes."""
    rows = len(names)
    fig, axes = plt.subplots(rows + 1, 4, figsize=(9, 2.1 * (rows + 1)))
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title(f"input {image.shape[0]}x{image.shape[1]}\n{caption}", fontsize=8)
    for ax in axes[0, 1:]:
        ax.remove()
    for r, name in enumerate(names, start=1):
        k = FILTERS[name]
        lim = float(np.abs(k).max())
        panels = [
            (k, "coolwarm", f"{name} kernel {k.shape[0]}x{k.shape[1]}", (-lim, lim)),
            (maps[..., r - 1], "gray", f"feature map {maps.shape[0]}x{maps.shape[1]}", None),
            (relu[..., r - 1], "gray", "ReLU", None),
            (pooled[..., r - 1], "gray", f"max pool 2x2 -> {pooled.shape[0]}x{pooled.shape[1]}", None),
        ]
        for ax, (arr, cmap, title, lims) in zip(axes[r], panels, strict=True):
            ax.imshow(arr, cmap=cmap, **({"vmin": lims[0], "vmax": lims[1]} if lims else {}))
            ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    _save(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> list[Path]:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="outputs/convolution_demo",
                   help="folder for the PNG figures: a new or empty one, or one this demo wrote before")
    p.add_argument("--num-images", type=int, default=3, help="how many test images to walk through (>= 1)")
    p.add_argument("--filters", nargs="+", default=list(DEFAULT_FILTERS), choices=sorted(FILTERS),
                   metavar="NAME", help=f"filters to apply, from: {', '.join(sorted(FILTERS))}")
    p.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's t10k-*-ubyte.gz files")
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f"--num-images must be >= 1, got {args.num_images}")
    out = Path(args.out)
    problem = unwritable(out)
    if problem:
        p.error(f"--out {out}: {problem}; pick another folder")
    try:  # a new or empty folder, or one this demo wrote before: never a user's files
        claim_folder(out, "convolution_demo", check_only=True)
    except NotOursError as e:
        p.error(f"--out {e}")

    images, captions, source = load_images(args.num_images, args.data_dir)
    print(f"images: {source}")
    x = images[..., None].astype(np.float32) / 255.0  # (N, 28, 28, 1) NHWC
    maps = apply_filter_bank(x, args.filters)  # (N, 28, 28, F), SAME padding
    relu = jax.nn.relu(maps)
    pooled = max_pool(relu, window=2)  # (N, 14, 14, F)
    print(f"input {x.shape} -> feature maps {maps.shape} -> ReLU -> max pool 2x2 {pooled.shape}")

    try:
        claim_folder(out, "convolution_demo")
    except NotOursError as e:
        p.error(f"--out {e}")
    except OSError as e:
        p.error(f"--out {out}: cannot create folder ({e.strerror}); pick another folder")
    written = [out / "kernels.png"]
    plot_kernels(args.filters, written[0])
    for i, caption in enumerate(captions):
        path = out / f"walkthrough_{i}.png"
        plot_walkthrough(images[i], caption, args.filters, np.asarray(maps[i]), np.asarray(relu[i]),
                         np.asarray(pooled[i]), path)
        written.append(path)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()

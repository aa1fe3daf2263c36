"""Figures (PNG, matplotlib Agg) for training runs: curves, confusion matrix, predictions, filters.

Every function takes plain arrays / lists, writes one PNG to ``path`` and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_history", "plot_confusion", "plot_predictions", "plot_filters", "plot_feature_maps",
           "plot_comparison"]


def _save(fig, path: str | os.PathLike, dpi: int = 110, metadata: Mapping[str, str] | None = None,
          tight: bool = True) -> Path:
    """Write ``fig`` as a PNG atomically (a reader sees the old file or the new one, never a part) and close it.
    ``metadata``: PNG text chunks to add (e.g. a key that marks the file as ours); ``tight``: ``tight_layout`` first."""
    from cnn_jax.files import atomic_path

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tight:
            fig.tight_layout()
        with atomic_path(path) as tmp:  # the temporary name does not end in .png: say the format
            fig.savefig(tmp, dpi=dpi, format="png", metadata=dict(metadata or {}))
    finally:
        plt.close(fig)
    return path


def _rgb(image: np.ndarray, cmap: str, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """An ``(H, W)`` array as ``(H, W, 3)`` RGB in [0, 1] through ``cmap``; the limits default to its min and max."""
    a = np.asarray(image, np.float32)
    lo = float(a.min()) if vmin is None else vmin
    hi = float(a.max()) if vmax is None else vmax
    return matplotlib.colormaps[cmap](np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1))[..., :3]


def _tile_grid(tiles: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike, cols: int,
               suptitle: str, tile_width: float, title_lines: int = 1,
               title_colors: Sequence[str] | None = None) -> Path:
    """``(H, W, 3)`` RGB tiles in rows of ``cols``, each under its title, drawn as one image on one axes
    (``tile_width`` inches a tile; a smaller tile centred in its cell). A grid of 32 subplots took ~1 s to lay out and
    save on a 2-core CPU; this ~0.1 s."""
    n = len(tiles)  # none: an empty row under the title
    h, w = max((t.shape[0] for t in tiles), default=28), max((t.shape[1] for t in tiles), default=28)
    if (scale := max(1, 24 // max(h, w))) > 1:  # small tiles (3x3 kernels) magnified, each pixel a square
        tiles = [t.repeat(scale, axis=0).repeat(scale, axis=1) for t in tiles]
        h, w = h * scale, w * scale
    rows = max(1, -(-n // cols))
    gap = max(2, w // 8)
    per_inch = (w + gap) / tile_width  # image pixels per inch
    title_px = int(np.ceil((0.13 * title_lines + 0.04) * per_inch))  # 7-point lines
    cell_h, cell_w = h + gap + title_px, w + gap
    canvas = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = r * cell_h + title_px + (h - tile.shape[0]) // 2, c * cell_w + (w - tile.shape[1]) // 2
        canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    head = 0.3  # inches above the grid for the figure's title
    width, height = canvas.shape[1] / per_inch, canvas.shape[0] / per_inch
    fig = plt.figure(figsize=(width, height + head))
    ax = fig.add_axes((0, 0, 1, height / (height + head)))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, text in enumerate(titles):
        r, c = divmod(i, cols)
        ax.text(c * cell_w + w / 2, r * cell_h + title_px - 0.5, text, ha="center", va="bottom", fontsize=7,
                color=title_colors[i] if title_colors else "black")
    fig.suptitle(suptitle, fontsize=9, y=1 - 0.08 / (height + head))
    return _save(fig, path, tight=False)


def plot_history(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Train vs validation loss and accuracy per epoch; the gap between them is the overfitting.

    ``history``: one mapping per epoch with ``epoch``, ``train_loss``, ``train_accuracy`` (running means),
    ``train_eval_loss``, ``train_eval_accuracy`` and, when there is a validation split, ``val_loss``, ``val_accuracy``.
    """
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style, label in (("train", ":o", "train (running mean, dropout/augmentation on)"),
                                    ("train_eval", "-^", "train-eval (training subset, evaluated)"),
                                    ("val", "-s", "val")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if history and history[-1].get("val_accuracy") is not None and history[-1].get("train_eval_accuracy") is not None:
        last = history[-1]
        gap = last["train_eval_accuracy"] - last["val_accuracy"]
        axes[1].set_title(f"last epoch: train-eval - val accuracy = {gap:+.3f}", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                   title: str = "Confusion matrix (rows: true, columns: predicted)") -> Path:
    """Row-normalised confusion matrix ``(K, K)`` with counts annotated."""
    cm = np.asarray(confusion)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, f"{v}", ha="center", va="center", fontsize=7, color="white" if rates[r, c] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_predictions(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                     path: str | os.PathLike, cols: int = 8) -> Path:
    """A grid of ``(N, H, W, 1)`` images titled ``pred (true)``; mistakes in red."""
    n = len(images)
    ok = [int(predictions[i]) == int(labels[i]) for i in range(n)]
    wrong = n - sum(ok)
    return _tile_grid([_rgb(np.asarray(images[i])[..., 0], "gray") for i in range(n)],
                      [f"{class_names[int(predictions[i])]}\n({class_names[int(labels[i])]})" for i in range(n)],
                      path, min(cols, max(n, 1)), f"predicted (true); {wrong} of {n} wrong, in red", 1.5,
                      title_lines=2, title_colors=["black" if good else "red" for good in ok])


def plot_filters(kernel: np.ndarray, path: str | os.PathLike, title: str = "First conv layer filters") -> Path:
    """The filters of an HWIO kernel ``(KH, KW, C, O)`` (channel-mean), one panel per output channel, on one
    colour scale (blue negative, red positive)."""
    k = np.asarray(kernel, np.float32).mean(axis=2)  # (KH, KW, O)
    o = k.shape[-1]
    lim = float(np.abs(k).max()) or 1.0
    return _tile_grid([_rgb(k[..., i], "coolwarm", -lim, lim) for i in range(o)], [str(i) for i in range(o)],
                      path, min(o, 8), title, 1.2)


def plot_feature_maps(image: np.ndarray, maps: np.ndarray, path: str | os.PathLike,
                      title: str = "First conv layer feature maps", max_maps: int = 32) -> Path:
    """An ``(H, W, 1)`` input and its feature maps ``(H', W', O)`` (at most ``max_maps``), each on its own scale."""
    maps = np.asarray(maps)[..., :max_maps]
    o = maps.shape[-1]
    tiles = [_rgb(np.asarray(image)[..., 0], "gray")] + [_rgb(maps[..., i], "viridis") for i in range(o)]
    return _tile_grid(tiles, ["input"] + [str(i) for i in range(o)], path, min(o + 1, 9),
                      f"{title} {maps.shape[0]}x{maps.shape[1]}", 1.2)


def plot_comparison(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike,
                    title: str = "", metadata: Mapping[str, str] | None = None) -> Path:
    """Several runs on shared axes: validation accuracy, validation loss, and the train-eval - val accuracy gap
    (the overfitting) per epoch. ``histories``: run name -> its per-epoch metrics (``metrics.jsonl`` lines).
    ``metadata``: PNG text chunks to add to the file."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    panels = (("validation accuracy", lambda h: h.get("val_accuracy")),
              ("validation loss", lambda h: h.get("val_loss")),
              ("train-eval - val accuracy (gap)",
               lambda h: None if h.get("val_accuracy") is None or h.get("train_eval_accuracy") is None
               else h["train_eval_accuracy"] - h["val_accuracy"]))
    for ax, (label, value) in zip(axes, panels, strict=True):
        for i, (name, history) in enumerate(histories.items()):
            epochs = [h["epoch"] for h in history]
            values = [value(h) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], "-o", ms=3, color=f"C{i}", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[2].axhline(0, color="gray", lw=0.8)
    fig.suptitle(title)
    return _save(fig, path, metadata=metadata)


def _first_conv_kernel(params) -> tuple[np.ndarray, np.ndarray | None]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        if np.ndim(leaf) == 4:
            bias_path = jax.tree_util.keystr(path).replace("kernel", "bias")
            bias = next((b for p, b in leaves if jax.tree_util.keystr(p) == bias_path), None)
            return np.asarray(leaf), None if bias is None else np.asarray(bias)
    raise ValueError("model has no 4D conv kernel")


def write_run_figures(out: Path, history, confusion, class_names, test, predictions, params, dataset: str
                      ) -> list[Path]:
    """A finished run's figures in ``out``: curves, confusion matrix, predictions on the first test images,
    first-layer filters and their feature maps on the first test image."""
    import jax

    from cnn_jax.data import normalize
    from cnn_jax.ops import conv2d

    kernel, bias = _first_conv_kernel(params)
    x0 = np.asarray(normalize(test.images[:1], dataset))
    maps = np.asarray(jax.nn.relu(conv2d(x0, kernel, bias, padding="SAME")))[0]
    n = min(32, len(test), len(predictions))
    return [
        plot_history(history, out / "curves.png", f"{dataset}: train vs validation"),
        plot_confusion(np.asarray(confusion), class_names, out / "confusion.png"),
        plot_predictions(test.images[:n], test.labels[:n], predictions[:n], class_names, out / "predictions.png"),
        plot_filters(kernel, out / "filters.png"),
        plot_feature_maps(test.images[0], maps, out / "feature_maps.png"),
    ]

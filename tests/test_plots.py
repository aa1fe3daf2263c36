"""Run figures: each writes a valid, non-trivial PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnn_jax import plots


def _png_ok(path, min_size=(200, 100)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10  # not a blank canvas


def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    history = [dict(epoch=e, train_loss=1 / e, train_accuracy=1 - 0.5 / e, val_loss=0.5 + 0.05 * e,
                    val_accuracy=0.8) for e in range(1, 6)]
    names = [f"class {i}" for i in range(10)]
    images = rng.integers(0, 255, (12, 28, 28, 1)).astype(np.uint8)
    paths = [
        plots.plot_history(history, tmp_path / "curves.png", "lab"),
        plots.plot_history([{k: v for k, v in h.items() if not k.startswith("val")} for h in history],
                           tmp_path / "no_val.png"),
        plots.plot_confusion(rng.integers(0, 50, (10, 10)), names, tmp_path / "cm.png"),
        plots.plot_predictions(images, np.arange(12) % 10, (np.arange(12) * 7) % 10, names, tmp_path / "p.png"),
        plots.plot_filters(rng.standard_normal((3, 3, 1, 32)), tmp_path / "sub" / "filters.png"),
        plots.plot_feature_maps(images[0], rng.random((26, 26, 32)), tmp_path / "maps.png"),
    ]
    empty = plots.plot_predictions(images[:0], np.arange(0), np.arange(0), names, tmp_path / "none.png")
    with Image.open(empty) as im:  # no test images: a figure that says so, not a crash at the end of a run
        assert im.format == "PNG"
    for p in paths:
        _png_ok(p)
    with Image.open(tmp_path / "p.png") as im:  # the wrong predictions' titles in red, the right ones' in black
        rgb = np.asarray(im.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert red.sum() > 50 and (rgb.sum(-1) < 60).sum() > 50

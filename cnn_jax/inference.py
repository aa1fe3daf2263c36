"""A trained model from a run folder, for notebooks: ``cnn_jax.load(path).predict(images)``; your own pictures.

    python -m cnn_jax.inference RUN_DIR [--which best|latest] [--data-dir D]   # test accuracy of a checkpoint
    python -m cnn_jax.inference RUN_DIR --image shoe.jpg digit.png [--top 3]   # top classes of each picture
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.checkpoint import CheckpointError, RunCheckpointer
from cnn_jax.config import Config
from cnn_jax.steps import COMPUTE_DTYPES, eval_logits
from cnn_jax.train import CKPT_SUBDIR, build_model
from cnn_jax.train_state import model_variables

__all__ = ["LoadedModel", "load", "read_image", "LIGHT_ON_DARK"]


@dataclass
class LoadedModel:
    """A model and its trained variables. ``predict``/``logits`` take uint8 (0..255) or float (0..1) images
    ``(H, W, C)`` or batched ``(N, H, W, C)``; for one-channel models also ``(H, W)`` and ``(N, H, W)``."""

    model: nn.Module
    variables: dict[str, Any]
    config: Config
    meta: dict[str, Any]
    step: int
    class_names: tuple[str, ...]

    def _prepare(self, images) -> tuple[jax.Array, bool]:
        from cnn_jax.data.augment import normalize

        x = np.asarray(images)
        h, w, c = self.meta["dataset"]["input_shape"]
        if c == 1 and x.ndim in (2, 3) and x.shape[-2:] == (h, w):  # (H, W) or (N, H, W): add the channel
            x = x[..., None]
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            one = "(H, W), (N, H, W), " if c == 1 else ""
            raise ValueError(f"images must be {one}(H, W, C) or (N, H, W, C) with H, W, C = {h}, {w}, {c}; "
                             f"got shape {np.shape(images)}")
        if np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all():
                raise ValueError("images contain NaN or infinite values; pass finite pixels (uint8 0..255 or 0..1)")
            if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ValueError("float images must be in [0, 1] (or pass uint8 0..255)")
            x = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        elif x.dtype != np.uint8:
            raise TypeError(f"images must be uint8 or float, got {x.dtype}")
        return normalize(jnp.asarray(x), self.config.data.dataset), single

    def logits(self, images, batch_size: int = 1000) -> np.ndarray:
        """Logits ``(N, num_classes)`` (or ``(num_classes,)`` for a single image), averaged over the run's
        test-time augmentation views (``config.data.tta``) and in its precision (``config.train.precision``), as
        in its evaluation."""
        x, single = self._prepare(images)
        fn = _apply_fn(self.model, self.config.data.tta, self.config.train.precision)
        out = np.concatenate([np.asarray(fn(self.variables, x[i:i + batch_size]))
                              for i in range(0, len(x), batch_size)]) if len(x) else \
            np.zeros((0, self.meta["dataset"]["num_classes"]), np.float32)
        return out[0] if single else out

    def predict(self, images, batch_size: int = 1000) -> np.ndarray:
        """Predicted class indices ``(N,)`` (a scalar array for a single image)."""
        return np.argmax(self.logits(images, batch_size), axis=-1)


_APPLY_CACHE: dict[tuple[int, tuple[str, ...], str], Any] = {}


def _apply_fn(model: nn.Module, tta: tuple[str, ...] = (), precision: str = "f32"):
    key = (id(model), tta, precision)
    if key not in _APPLY_CACHE:
        _APPLY_CACHE[key] = jax.jit(lambda v, x: eval_logits(model, v["params"], v.get("batch_stats", {}), x, tta,
                                                             COMPUTE_DTYPES[precision]))
    return _APPLY_CACHE[key]


def load(path: str | os.PathLike, which: str | int = "best") -> LoadedModel:
    """Load a run folder's checkpoint, read-only: ``which`` = ``"best"`` (by val accuracy; latest if none has
    it), ``"latest"``, or a step number."""
    run_dir = Path(path)
    if not (run_dir / CKPT_SUBDIR).is_dir():
        raise FileNotFoundError(f"{run_dir / CKPT_SUBDIR} not found: {run_dir} is not a cnn_jax run folder "
                                "(expected ckpt/ written by an experiment script)")
    ckpt = RunCheckpointer(run_dir / CKPT_SUBDIR, read_only=True)
    try:
        step = ckpt.best_step() if which == "best" else None if which == "latest" else int(which)
        restored = ckpt.restore(None, step, exact=which not in ("best", "latest"))  # else: the newest good one
    finally:
        ckpt.close()
    config = Config.from_dict(restored.meta["config"])
    dataset = restored.meta["dataset"]
    state = restored.state
    variables = model_variables(state["params"], state.get("batch_stats"))
    return LoadedModel(build_model(config, dataset["num_classes"]), jax.device_put(variables), config,
                       restored.meta, restored.step, tuple(dataset["class_names"]))


#: Datasets whose images are light strokes on a dark background (a dark-on-light picture is inverted to match).
LIGHT_ON_DARK = ("fashion_mnist", "emnist")


def read_image(path: str | os.PathLike, shape: Sequence[int] = (28, 28, 1),
               light_on_dark: bool = True) -> tuple[np.ndarray, list[str]]:
    """A picture file (PNG, JPEG, ...; any size, colour or grey) as one model input: uint8 ``(H, W, C)`` of
    ``shape``, and notes on what was done to it.

    Steps: EXIF rotation applied; transparency composited on white; grey (or RGB for ``C = 3``); when
    ``light_on_dark`` and the border is mostly light (a dark-on-light picture), inverted; padded to a square
    with the background; resized to ``H x W`` (Lanczos).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w, c = shape
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: not a picture Pillow can read ({type(e).__name__}); pass a PNG or JPEG "
                         "file") from None
    notes = [f"{img.width}x{img.height} {img.mode}"]
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    if img.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit or float grey: scale to 0..255
        a = np.asarray(img, np.float64)
        img = Image.fromarray(np.uint8(np.clip(a / max(a.max(), 1e-12) * 255, 0, 255).round()))
    a = np.asarray(img.convert("L" if c == 1 else "RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if light_on_dark and np.median(border) > 127:
        a = 255 - a
        notes.append("inverted (dark on light -> light on dark, as the dataset)")
    side = max(a.shape[:2])
    if a.shape[0] != a.shape[1]:  # centre on a square of the (now dark or original) background
        fill = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0).astype(np.uint8)
        square = np.empty((side, side, *a.shape[2:]), np.uint8)
        square[...] = fill
        top, left = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
        square[top:top + a.shape[0], left:left + a.shape[1]] = a
        a = square
        notes.append(f"padded to {side}x{side}")
    if a.shape[:2] != (h, w):
        a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.LANCZOS))
        notes.append(f"resized to {h}x{w}")
    return a.reshape(h, w, c), notes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m cnn_jax.inference",
                                description="Test accuracy of a run's checkpoint, or its top classes for your "
                                            "own pictures (--image).")
    p.add_argument("run_dir")
    p.add_argument("--which", default="best", help="best, latest, or a step number")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR)")
    p.add_argument("--image", nargs="+", metavar="PATH", help="PNG/JPEG files (any size, colour or grey) to classify")
    p.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    from cnn_jax.data import load as load_data

    try:
        lm = load(args.run_dir, args.which)
        if args.image:
            return _classify(lm, args.run_dir, args.image, args.top)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    test = load_data(lm.config.data.dataset, data_dir=args.data_dir, val_size=0).test
    pred = lm.predict(test.images)
    acc = float(np.mean(pred == test.labels))
    out = {"run_dir": str(args.run_dir), "step": lm.step, "which": args.which, "test_accuracy": acc,
           "num_test": len(test)}
    print(json.dumps(out))
    return out


def _classify(lm: LoadedModel, run_dir: str, paths: Sequence[str], top: int) -> dict[str, Any]:
    """Print and return each picture's ``top`` classes with probabilities (after :func:`read_image`)."""
    dataset = lm.config.data.dataset
    invert = dataset.startswith(LIGHT_ON_DARK)
    read = [read_image(path, lm.meta["dataset"]["input_shape"], invert) for path in paths]
    probs = np.asarray(jax.nn.softmax(lm.logits(np.stack([image for image, _ in read])), axis=-1))
    out = {"run_dir": str(run_dir), "step": lm.step, "images": []}
    for path, (_, notes), p in zip(paths, read, probs, strict=True):
        order = np.argsort(-p)[:top]
        classes = [{"class": lm.class_names[i], "index": int(i), "probability": float(p[i])} for i in order]
        out["images"].append({"path": str(path), "preprocessing": notes, "top": classes})
        print(f"{path}: " + ", ".join(f"{c['class']} {c['probability']:.1%}" for c in classes)
              + f"   ({'; '.join(notes)})")
    if invert:
        print(f"{dataset} images are light on dark: dark-on-light pictures were inverted to match (noted above)")
    return out


if __name__ == "__main__":
    main()

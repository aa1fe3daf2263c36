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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.checkpoint import CheckpointError, RunCheckpointer
from cnn_jax.cli import ArgumentParser
from cnn_jax.config import Config
from cnn_jax.run_folder import CKPT_SUBDIR
from cnn_jax.steps import COMPUTE_DTYPES, eval_logits
from cnn_jax.train_state import bind, eval_params, model_variables
from cnn_jax.trainer import build_model

__all__ = ["LoadedModel", "load", "read_image", "LIGHT_ON_DARK", "SHRINK_FACTOR"]


@dataclass
class LoadedModel:
    """A trained model: ``model``, the NNX module holding the weights evaluated with (in evaluation mode:
    ``model(x)`` gives logits of standardised float NHWC ``x``, as :meth:`logits` computes them without its
    preprocessing, test-time views and precision), and the same weights as pure dicts in ``variables``
    (``{"params", "batch_stats"}``). ``predict``/``logits`` take uint8 (0..255) or float (0..1) images
    ``(H, W, C)`` or batched ``(N, H, W, C)``; for one-channel models also ``(H, W)`` and ``(N, H, W)``."""

    model: nnx.Module
    variables: dict[str, Any]
    config: Config
    meta: dict[str, Any]
    step: int
    class_names: tuple[str, ...]
    #: The compiled logits function, per (test-time views, precision): owned, so it goes with this object.
    _compiled: dict[tuple[tuple[str, ...], str], Any] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)

    def _logits_fn(self):
        key = tta, precision = self.config.data.tta, self.config.train.precision
        if key not in self._compiled:
            model, dtype = self.model, COMPUTE_DTYPES[precision]
            self._compiled[key] = jax.jit(
                lambda v, x: eval_logits(model, v["params"], v.get("batch_stats", {}), x, tta, dtype))
        return self._compiled[key]

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

    def logits(self, images, batch_size: int | None = None) -> np.ndarray:
        """Logits ``(N, num_classes)`` (or ``(num_classes,)`` for a single image), averaged over the run's
        test-time augmentation views (``config.data.tta``) and in its precision (``config.train.precision``), as
        in its evaluation. Computed in batches of ``batch_size`` (default: the run's ``run.eval_batch_size``),
        the last one padded with copies of its last image: one compiled shape, so an image's logits depend on
        it and ``batch_size`` only, not on the images beside it (bf16 rounding differs between batch shapes)."""
        x, single = self._prepare(images)
        batch = self.config.run.eval_batch_size if batch_size is None else batch_size
        if batch < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        fn = self._logits_fn()
        out = [np.zeros((0, self.meta["dataset"]["num_classes"]), np.float32)]
        for i in range(0, len(x), batch):
            part = x[i:i + batch]
            padded = jnp.concatenate([part, jnp.repeat(part[-1:], batch - len(part), axis=0)])
            out.append(np.asarray(fn(self.variables, padded))[:len(part)])
        out = np.concatenate(out)
        return out[0] if single else out

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        """Predicted class indices ``(N,)`` (a scalar array for a single image); ``batch_size`` as in
        :meth:`logits`."""
        return np.argmax(self.logits(images, batch_size), axis=-1)


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
    state = restored.state  # as saved, in today's layout (RunCheckpointer.restore)
    variables = jax.device_put(model_variables(eval_params(state), state.get("batch_stats")))
    model = bind(build_model(config, dataset["num_classes"], dataset["input_shape"]), variables["params"],
                 variables.get("batch_stats", {}))
    model.eval()
    return LoadedModel(model, variables, config, restored.meta, restored.step, tuple(dataset["class_names"]))


#: Datasets whose images are light strokes on a dark background (a dark-on-light picture is inverted to match).
LIGHT_ON_DARK = ("fashion_mnist", "emnist")


#: Pictures are shrunk to at most this many times the model's input size (long side) before anything else, so
#: that memory is bounded by the input size whatever the picture (a 40000x1 strip is not padded to 40000x40000).
SHRINK_FACTOR = 4


def _open_picture(path: str | os.PathLike, bound: int):
    """The picture, decoded (a JPEG at a reduced scale when it is much larger than ``bound``), EXIF rotation
    applied, and its size and mode as found. One-line :class:`ValueError` for a file that is not a picture, or
    a picture too large to decode (Pillow's decompression-bomb limit)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            found = f"{opened.width}x{opened.height} {opened.mode}"
            if (frames := getattr(opened, "n_frames", 1)) > 1:  # an animated GIF/PNG/WebP, a multi-page TIFF
                found += f", the first of its {frames} frames"
            big = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
            if opened.format == "JPEG" and max(opened.size) > 2 * bound:  # decode at 1/2, 1/4 or 1/8 scale
                s = bound / max(opened.size)
                opened.draft(None, (max(1, int(opened.width * s)), max(1, int(opened.height * s))))
                big = False
            if big:
                raise Image.DecompressionBombError(f"{opened.width * opened.height} pixels")
            img = ImageOps.exif_transpose(opened)
            img.load()
    except Image.DecompressionBombError:
        limit = f"{Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels" if Image.MAX_IMAGE_PIXELS else "its limit"
        raise ValueError(f"{path}: too large a picture to read safely (over {limit}, Pillow's guard against "
                         "decompression bombs); pass a smaller picture (a few megapixels is plenty)") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{path}: not a picture Pillow can read ({type(e).__name__}); pass a PNG or JPEG "
                         "file") from None
    return img, found


def read_image(path: str | os.PathLike, shape: Sequence[int] = (28, 28, 1),
               light_on_dark: bool = True) -> tuple[np.ndarray, list[str]]:
    """A picture file (PNG, JPEG, ...; any size, colour or grey) as one model input: uint8 ``(H, W, C)`` of
    ``shape``, and notes on what was done to it.

    Steps: EXIF rotation applied; shrunk (Lanczos) when its long side exceeds :data:`SHRINK_FACTOR` times the
    input's, so memory stays bounded whatever the picture; grey (or RGB for ``C = 3``). With ``light_on_dark``
    (the dataset's pictures are light on black): a transparent background is the background, made black, and the
    object (the opaque pixels) is kept if light or inverted if dark; an opaque picture whose border is mostly
    light (dark on light) is inverted. Without it, transparency is composited on white. Then padded to a square
    with the background, and resized to ``H x W`` (Lanczos).
    """
    from PIL import Image

    h, w, c = shape
    bound = SHRINK_FACTOR * max(h, w)
    img, found = _open_picture(path, bound)
    notes = [found]
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):  # 16-bit or float grey: scaled to 0..255 below
        img = img.convert("F")
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = img.convert("RGBA")
        if img.getextrema()[3][0] == 255:  # an alpha channel, but nothing transparent
            img = img.convert("L" if c == 1 else "RGB")
    else:
        img = img.convert("L" if c == 1 else "RGB")
    if max(img.size) > bound:  # premultiplied alpha: transparent pixels' colours do not bleed in
        scale = bound / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
        notes.append(f"shrunk to {img.width}x{img.height}")
    background = None  # the known background value, when the picture said it (transparency)
    if img.mode == "F":
        a = np.asarray(img, np.float32)
        a = np.uint8(np.clip(a / max(float(a.max()), 1e-12) * 255, 0, 255).round())
        a = a if c == 1 else np.repeat(a[..., None], 3, axis=-1)
    elif img.mode == "RGBA":
        a, background = _transparent(np.asarray(img), c, light_on_dark, notes)
    else:
        a = np.asarray(img)
    if background is None:
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        if light_on_dark and np.median(border) > 127:
            a = 255 - a
            notes.append("inverted (dark on light -> light on dark, as the dataset)")
    if a.shape[0] != a.shape[1]:  # centre on a square of the (now dark or original) background
        side = max(a.shape[:2])
        fill = (np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0) if background is None
                else background)
        square = np.empty((side, side, *a.shape[2:]), np.uint8)
        square[...] = np.asarray(fill).astype(np.uint8)
        top, left = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
        square[top:top + a.shape[0], left:left + a.shape[1]] = a
        a = square
        notes.append(f"padded to {side}x{side}")
    if a.shape[:2] != (h, w):
        a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.LANCZOS))
        notes.append(f"resized to {h}x{w}")
    return a.reshape(h, w, c), notes


def _transparent(rgba: np.ndarray, c: int, light_on_dark: bool, notes: list[str]) -> tuple[np.ndarray, int]:
    """A picture with transparent pixels, composited: for ``light_on_dark`` datasets on black (transparency is
    background), the object inverted if its opaque pixels are mostly dark; else on white. Returns the grey
    (``c = 1``) or RGB pixels and the background value."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    colour = rgba[..., :3].astype(np.float32)
    if c == 1:
        colour = colour @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]  # ITU-R 601 luma, as Pillow's L
    if not light_on_dark:
        notes.append("transparent background composited on white")
        return np.uint8(np.clip(colour * alpha + 255 * (1 - alpha), 0, 255).round()), 255
    weight = float(alpha.sum())
    if weight == 0:
        notes.append("fully transparent: an empty (black) picture")
        return np.zeros(rgba.shape[:2] if c == 1 else (*rgba.shape[:2], 3), np.uint8), 0
    brightness = float((colour.mean(axis=-1, keepdims=True) * alpha).sum()) / weight
    if brightness <= 127:
        colour = 255 - colour
        notes.append(f"transparent background -> black, as the dataset; the object is dark (mean "
                     f"{brightness:.0f} of 255), inverted to light on black")
    else:
        notes.append(f"transparent background -> black, as the dataset; the object is light (mean "
                     f"{brightness:.0f} of 255), kept")
    out = np.uint8(np.clip(colour * alpha, 0, 255).round())
    return (out[..., 0] if c == 1 else out), 0


def _which(text: str) -> str:
    """``--which``: ``best``, ``latest`` or a step number (as :func:`load` takes it)."""
    if text in ("best", "latest") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected best, latest or a step number, got {text!r}")


def main(argv: list[str] | None = None, prog: str = "python -m cnn_jax.inference",
         mode: str | None = None) -> dict[str, Any]:
    """Print (and return) a run's test accuracy, or its top classes for pictures (``--image``). ``mode``:
    ``"evaluate"`` (no ``--image``), ``"predict"`` (``--image`` required) or None (either)."""
    what = {"evaluate": "Test accuracy of a run's checkpoint.",
            "predict": "A run's top classes for your own pictures."}.get(
        mode, "Test accuracy of a run's checkpoint, or its top classes for your own pictures (--image).")
    p = ArgumentParser(prog=prog, description=what)
    p.add_argument("run_dir", metavar="RUN", help="a run folder (with ckpt/), e.g. checkpoints/fashion_mnist/lab")
    p.add_argument("--which", default="best", type=_which, help="best, latest, or a step number")
    if mode != "predict":
        p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR)")
    if mode != "evaluate":
        p.add_argument("--image", nargs="+", metavar="PATH", required=mode == "predict",
                       help="PNG/JPEG files (any size, colour or grey) to classify")
        p.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    args = p.parse_args(argv)
    args.image, args.top = getattr(args, "image", None), getattr(args, "top", 3)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    from cnn_jax.data import DatasetNotFoundError, DataSourceError, IdxError
    from cnn_jax.data import load as load_data

    try:
        lm = load(args.run_dir, args.which)
        if args.image:
            return _classify(lm, args.run_dir, args.image, args.top)
        test = load_data(lm.config.data.dataset, data_dir=args.data_dir, val_size=0).test
    except (FileNotFoundError, CheckpointError, DatasetNotFoundError, DataSourceError, IdxError, ValueError) as e:
        sys.exit(f"error: {e}")
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

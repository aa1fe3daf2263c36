"""A trained model from a run folder, for notebooks: ``cnn_jax.load(path).predict(images)``.

    python -m cnn_jax.inference RUN_DIR [--which best|latest] [--data-dir D]   # test accuracy of a checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.checkpoint import CheckpointError, RunCheckpointer
from cnn_jax.config import Config
from cnn_jax.steps import tta_logits
from cnn_jax.train import CKPT_SUBDIR, build_model
from cnn_jax.train_state import model_variables

__all__ = ["LoadedModel", "load"]


@dataclass
class LoadedModel:
    """A model and its trained variables. ``predict``/``logits`` take uint8 (0..255) or float (0..1) images
    ``(H, W)``, ``(H, W, C)`` or batched ``(N, H, W, C)``."""

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
        single = x.ndim == 2 or (x.ndim == 3 and x.shape == (h, w, c))
        if x.ndim == 2:
            x = x[..., None]
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ValueError(f"images must be (H, W), (H, W, C) or (N, H, W, C) with H, W, C = {h}, {w}, {c}; "
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
        test-time augmentation views (``config.data.tta``) as in its evaluation."""
        x, single = self._prepare(images)
        fn = _apply_fn(self.model, self.config.data.tta)
        out = np.concatenate([np.asarray(fn(self.variables, x[i:i + batch_size]))
                              for i in range(0, len(x), batch_size)]) if len(x) else \
            np.zeros((0, self.meta["dataset"]["num_classes"]), np.float32)
        return out[0] if single else out

    def predict(self, images, batch_size: int = 1000) -> np.ndarray:
        """Predicted class indices ``(N,)`` (a scalar array for a single image)."""
        return np.argmax(self.logits(images, batch_size), axis=-1)


_APPLY_CACHE: dict[tuple[int, tuple[str, ...]], Any] = {}


def _apply_fn(model: nn.Module, tta: tuple[str, ...] = ()):
    key = (id(model), tta)
    if key not in _APPLY_CACHE:
        _APPLY_CACHE[key] = jax.jit(lambda v, x: tta_logits(lambda y: model.apply(v, y, train=False), x, tta))
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m cnn_jax.inference",
                                description="Test accuracy of a run's checkpoint.")
    p.add_argument("run_dir")
    p.add_argument("--which", default="best", help="best, latest, or a step number")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR)")
    args = p.parse_args(argv)
    from cnn_jax.data import load as load_data

    try:
        lm = load(args.run_dir, args.which)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    test = load_data(lm.config.data.dataset, data_dir=args.data_dir, val_size=0).test
    pred = lm.predict(test.images)
    acc = float(np.mean(pred == test.labels))
    out = {"run_dir": str(args.run_dir), "step": lm.step, "which": args.which, "test_accuracy": acc,
           "num_test": len(test)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

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
from cnn_jax.config import TrainConfig
from cnn_jax.models import get_model
from cnn_jax.steps import tta_logits
from cnn_jax.train_state import create_train_state, make_optimizer

__all__ = ["LoadedModel", "load", "abstract_train_state", "build_model"]

CKPT_SUBDIR = "ckpt"
CONFIG_FILE = "config.json"


def build_model(run_config: dict[str, Any]) -> nn.Module:
    """The run's model from its config (``model`` name and ``model_kwargs``)."""
    return get_model(run_config["model"], num_classes=run_config["num_classes"], **run_config["model_kwargs"])


def abstract_train_state(model: nn.Module, cfg: TrainConfig, input_shape: tuple[int, ...], steps_per_epoch: int):
    """Shapes/dtypes of the run's TrainState (no compute), the target structure for a restore."""
    tx = make_optimizer(cfg, steps_per_epoch * max(cfg.epochs, 1))
    return jax.eval_shape(lambda: create_train_state(model, tx, input_shape, cfg.seed))


@dataclass
class LoadedModel:
    """A model and its trained variables. ``predict``/``logits`` take uint8 (0..255) or float (0..1) images
    ``(H, W)``, ``(H, W, C)`` or batched ``(N, H, W, C)``."""

    model: nn.Module
    variables: dict[str, Any]
    run_config: dict[str, Any]
    meta: dict[str, Any]
    step: int
    class_names: tuple[str, ...]

    def _prepare(self, images) -> tuple[jax.Array, bool]:
        from cnn_jax.data.augment import normalize

        x = np.asarray(images)
        h, w, c = self.run_config["input_shape"]
        single = x.ndim == 2 or (x.ndim == 3 and x.shape == (h, w, c))
        if x.ndim == 2:
            x = x[..., None]
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ValueError(f"images must be (H, W), (H, W, C) or (N, H, W, C) with H, W, C = {h}, {w}, {c}; "
                             f"got shape {np.shape(images)}")
        if np.issubdtype(x.dtype, np.floating):
            if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ValueError("float images must be in [0, 1] (or pass uint8 0..255)")
            x = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        elif x.dtype != np.uint8:
            raise TypeError(f"images must be uint8 or float, got {x.dtype}")
        return normalize(jnp.asarray(x), self.run_config["dataset"]), single

    def logits(self, images, batch_size: int = 1000) -> np.ndarray:
        """Logits ``(N, num_classes)`` (or ``(num_classes,)`` for a single image), averaged over the run's
        test-time augmentation views (config ``"tta"``) as in its evaluation."""
        x, single = self._prepare(images)
        fn = _apply_fn(self.model, tuple(self.run_config.get("tta", ())))
        out = np.concatenate([np.asarray(fn(self.variables, x[i:i + batch_size]))
                              for i in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 0))
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


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a cnn_jax run folder "
                                "(expected config.json and ckpt/ written by an experiment script)")
    return json.loads(path.read_text())


def load(path: str | os.PathLike, which: str | int = "best") -> LoadedModel:
    """Load a run folder's checkpoint: ``which`` = ``"best"`` (by val accuracy; latest if none has it),
    ``"latest"``, or a step number."""
    run_dir = Path(path)
    rc = read_run_config(run_dir)
    ckpt = RunCheckpointer(run_dir / CKPT_SUBDIR)
    try:
        step = None
        if which == "best":
            step = ckpt.best_step()
        elif which != "latest":
            step = int(which)
        model = build_model(rc)
        cfg = TrainConfig(**rc["train"])
        abstract = abstract_train_state(model, cfg, tuple(rc["input_shape"]), rc["steps_per_epoch"])
        restored = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    variables = {"params": restored.state.params}
    if restored.state.batch_stats:
        variables["batch_stats"] = restored.state.batch_stats
    return LoadedModel(model, jax.device_put(variables), rc, restored.meta, restored.step,
                       tuple(rc.get("class_names", ())))


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
    rc = lm.run_config
    test = load_data(rc["dataset"], data_dir=args.data_dir, val_size=0).test
    pred = lm.predict(test.images)
    acc = float(np.mean(pred == test.labels))
    out = {"run_dir": str(args.run_dir), "step": lm.step, "which": args.which, "test_accuracy": acc,
           "num_test": len(test)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""Orbax checkpoints of a whole run, and the preemption signal guard.

A checkpoint (Orbax step = global train step) holds two items:

* ``state``: the :class:`~cnn_jax.train_state.TrainState` as host arrays (params, optimizer state with its
  step count, batch-norm statistics, PRNG key as ``uint32[2]``, global step), so it restores onto any
  device count and is placed afterwards (:meth:`cnn_jax.trainer.Trainer.place_state`);
* ``meta`` (JSON): the run config, the dataset identity, epoch/step, the metrics history, and the partial
  epoch's running sums when saved mid-epoch.

Retention: the last ``keep`` checkpoints plus the best by ``val_accuracy``. Saves are asynchronous; Orbax
writes into a temporary folder and renames it when complete, so a save that did not finish never counts.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "CheckpointError", "IncompatibleCheckpointError", "Restored", "RunCheckpointer", "StopSignal",
    "config_differences", "RUNTIME_KEYS",
]

#: Config keys that may change between a run and its resumption (they change how, not what, is computed).
RUNTIME_KEYS = frozenset({
    "train.parallelism", "train.distributed", "train.steps_per_chunk", "train.eval_batch_size", "workdir",
    "run", "resume", "progress",
})


class CheckpointError(RuntimeError):
    """No usable checkpoint (all damaged, or none)."""


class IncompatibleCheckpointError(CheckpointError):
    """The run folder's checkpoints were made with another config; ``differences`` lists each key."""

    def __init__(self, directory: str | os.PathLike, differences: list[str]):
        self.differences = differences
        lines = "\n  ".join(differences)
        super().__init__(
            f"{directory} holds checkpoints of a run with another config; nothing was changed there.\n"
            f"  {lines}\nResume with the saved config (drop the flags that differ), pick another run folder "
            "(--run NAME / --workdir), or pass --new-run to start a fresh run beside it."
        )


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """``"key: saved X, now Y"`` for every (flattened) config key that differs, except ``ignore``."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            diffs.append(f"{key}: saved {va!r}, now {vb!r}")
    return diffs


@dataclass
class Restored:
    """A restored checkpoint: host ``state``, its ``meta`` dict and Orbax ``step``."""

    state: Any
    meta: dict[str, Any]
    step: int


def _to_host(tree: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


class RunCheckpointer:
    """An Orbax ``CheckpointManager`` for one run folder.

    Args:
      directory: the run's checkpoint folder (created if missing).
      keep: how many of the latest checkpoints to keep (besides the best).
      best_metric: metric kept at its best (max); checkpoints saved without it count only as latest.
      async_save: write in a background thread (call :meth:`wait` or :meth:`close` before reading).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str = "val_accuracy",
                 async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.keep = keep
        # Retention is ours (:meth:`_prune`): Orbax's BestN forgets metrics when a manager is reopened.
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------------------------------ read
    def steps(self) -> list[int]:
        """Steps of the checkpoints, oldest first. (No ``reload``: it would forget the kept metrics that
        best-retention needs.)"""
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the highest ``best_metric`` (from each checkpoint's ``meta["metrics"]``)."""
        best, best_value = None, -np.inf
        for s in self.steps():
            try:
                value = self.read_meta(s).get("metrics", {}).get(self.best_metric)
            except Exception:  # noqa: BLE001 - a damaged checkpoint is not the best one
                continue
            if value is not None and value > best_value:
                best, best_value = s, value
        return best

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, abstract_state: Any, step: int | None = None) -> Restored:
        """Restore ``step`` (default: the latest good one) onto the structure of ``abstract_state``.

        A damaged checkpoint (unreadable or partly deleted files) is reported with a warning and the next
        older one is tried; :class:`CheckpointError` when none is usable.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; have {steps}")
            candidates = [step]
        else:
            candidates = steps[::-1]
        if not candidates:
            raise CheckpointError(f"{self.directory}: no checkpoints")
        target = jax.tree.map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype)
                              if not isinstance(a, jax.ShapeDtypeStruct) else np.zeros(a.shape, a.dtype),
                              abstract_state)
        errors = []
        for s in candidates:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(target), meta=ocp.args.JsonRestore()))
                state = out["state"]
                _check_structure(target, state, s, self.directory)
                return Restored(state, dict(out["meta"]), s)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means damaged; try the previous one
                errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                warnings.warn(f"checkpoint {self.directory / str(s)} is damaged ({errors[-1]}); "
                              "falling back to the previous one", stacklevel=2)
        raise CheckpointError(f"{self.directory}: no usable checkpoint:\n  " + "\n  ".join(errors))

    # ----------------------------------------------------------------------------------------- write
    def save(self, step: int, state: Any, meta: Mapping[str, Any], metrics: Mapping[str, float] | None = None
             ) -> bool:
        """Save host copies of ``state`` and ``meta`` (plus ``metrics``, stored in the meta) at ``step``,
        asynchronously; first waits for the previous save and prunes beyond the retention policy."""
        self._prune()
        if step in self.steps():
            return False
        metrics = {k: float(v) for k, v in (metrics or {}).items() if np.isscalar(v) and np.isfinite(v)}
        meta = {**meta, "metrics": metrics}
        return bool(self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(_to_host(state)), meta=ocp.args.JsonSave(meta)), force=True))

    def _prune(self) -> None:
        """Keep the latest ``keep`` checkpoints and the best by ``best_metric``; delete the rest."""
        self.manager.wait_until_finished()
        steps = self.steps()
        keep = set(steps[-self.keep:])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for s in steps:
            if s not in keep:
                self.manager.delete(s)

    def wait(self) -> None:
        """Block until pending saves are written, then apply retention."""
        self._prune()

    def close(self) -> None:
        self._prune()
        self.manager.close()


def _check_structure(target: Any, restored: Any, step: int, directory: Path) -> None:
    t_leaves, t_def = jax.tree.flatten_with_path(target)
    r_leaves, r_def = jax.tree.flatten_with_path(restored)
    diffs = []
    if t_def != r_def:
        diffs.append(f"state structure: saved {len(r_leaves)} arrays, now {len(t_leaves)}")
    for (path, a), (_, b) in zip(t_leaves, r_leaves, strict=False):
        if np.shape(a) != np.shape(b):
            diffs.append(f"{jax.tree_util.keystr(path)}: saved shape {np.shape(b)}, now {np.shape(a)}")
    if diffs:
        raise IncompatibleCheckpointError(directory / str(step), diffs)


class StopSignal:
    """Context manager: SIGTERM/SIGINT set :attr:`requested` instead of killing the process, so the training
    loop can finish its current chunk, save and exit. A second SIGINT raises ``KeyboardInterrupt``."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested is not None

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

"""Orbax checkpoints of a whole run.

A checkpoint (Orbax step = global train step) holds two items:

* ``state``: the :class:`~cnn_jax.train_state.TrainState` as host arrays (params, optimizer state with its
  step count, batch-norm statistics, PRNG key as ``uint32[2]``, global step, the weights' average), so it
  restores onto any device count and is placed afterwards (:meth:`cnn_jax.trainer.Trainer.place_state`);
* ``meta`` (JSON): the run config, the dataset identity, epoch/step, the metrics history, the partial
  epoch's running sums when saved mid-epoch, and the state's layout (``state_layout``: older checkpoints,
  which have none, are read in theirs, :data:`~cnn_jax.train_state.STATE_LAYOUT`).

Retention: the last ``keep`` checkpoints plus the best by ``val_accuracy``. Saves are asynchronous; Orbax
writes into a temporary folder and renames it when complete, so a save that did not finish never counts.

Verification: every save's ``meta`` carries the SHA-256 of its state arrays and of the meta itself
(``meta["digest"]``), computed before the write, so a checkpoint is verifiable from the moment it exists
(a process killed right after a save leaves nothing unverified). A restore recomputes both and refuses a
checkpoint whose content differs. Checkpoints saved before content digests are verified by their file
digest (:data:`DIGEST`); one with neither is refused.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnn_jax.parallel import to_host
from cnn_jax.train_state import STATE_LAYOUT, TrainState, from_legacy, legacy_layout, upgrade_saved

__all__ = ["CheckpointError", "DiskFullError", "IncompatibleCheckpointError", "Restored", "RunCheckpointer",
           "DIGEST", "content_digest", "is_disk_full", "quiet_disk_full"]

DIGEST = "cnn_jax_digest.json"  # checkpoints of older versions: the SHA-256 of their files, written after the save


class CheckpointError(RuntimeError):
    """No usable checkpoint (all damaged, or none)."""


class DiskFullError(CheckpointError):
    """Not enough free space for the next checkpoint."""


class IncompatibleCheckpointError(CheckpointError):
    """The run folder's checkpoints were made with another config; ``differences`` lists each key."""

    def __init__(self, directory: str | os.PathLike, differences: list[str], holds: str = "checkpoints of a run"):
        self.differences = differences
        lines = "\n  ".join(differences)
        super().__init__(
            f"{directory} holds {holds} with another config; nothing was changed there.\n"
            f"  {lines}\nResume with the saved config (drop the flags that differ), pick another run folder "
            "(--run NAME / --workdir), or pass --new-run to start a fresh run beside it."
        )


@dataclass
class Restored:
    """A restored checkpoint: host ``state``, its ``meta`` dict and Orbax ``step``."""

    state: Any
    meta: dict[str, Any]
    step: int


class RunCheckpointer:
    """An Orbax ``CheckpointManager`` for one run folder.

    Args:
      directory: the run's checkpoint folder (created if missing).
      keep: how many of the latest checkpoints to keep (besides the best).
      best_metric: metric kept at its best (max); checkpoints saved without it count only as latest.
      async_save: write in a background thread (call :meth:`wait` or :meth:`close` before reading).
      read_only: open for reading only (loading a model): nothing is created, saved or pruned.

    Multi-process: every process calls every method with the same arguments; Orbax writes the (replicated,
    host) arrays and the meta once, from process 0.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str = "val_accuracy",
                 async_save: bool = True, read_only: bool = False):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.keep = keep
        self.read_only = read_only
        # Retention is ours (:meth:`_prune`): Orbax's BestN forgets metrics when a manager is reopened
        # (tests/test_checkpoint.py::test_orbax_best_n_forgets_metrics_on_reopen).
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        if read_only:  # Orbax warns that a read-only manager is read-only
            absl_log.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                                   enable_async_checkpointing=async_save and not read_only,
                                                   cleanup_tmp_directories=not read_only)  # a killed save's tmp
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_log.setLevel(level)

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

    def restore(self, abstract_state: Any = None, step: int | None = None, *, exact: bool = False) -> Restored:
        """Restore ``step`` (default: the latest) onto the structure of ``abstract_state`` (None: as saved,
        nested dicts of numpy arrays). A state saved in an older layout (:data:`~cnn_jax.train_state.STATE_LAYOUT`)
        comes back in today's.

        A damaged checkpoint (unreadable, missing files, bytes that differ from the digest recorded when it
        was saved, non-finite parameters) is reported in a one-line warning and the newest other good one
        is used instead (``exact``: no fallback); a writable checkpointer deletes the damaged ones, so that
        training replaces them. :class:`CheckpointError` when none is usable.
        """
        steps = self.steps()
        if step is not None and step not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; have {steps}")
        candidates = [step] * (step is not None) + ([] if exact else [s for s in steps[::-1] if s != step])
        if not candidates:
            raise CheckpointError(f"{self.directory}: no checkpoints")
        target = None if abstract_state is None else jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                                                                    abstract_state)
        errors, damaged = [], []
        _quiet_aborted_io()
        for s in candidates:
            # its reads' errors are dropped from the moment they may surface (the garbage collector may log an
            # unawaited one while the failing restore is still unwinding), and shown again once it has restored
            _REPORTED_IO.paths.add(reads := f"{self.directory / str(s)}/")
            try:
                meta = self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                legacy = isinstance(target, TrainState) and meta.get("state_layout", 1) < STATE_LAYOUT
                saved_as = legacy_layout(target) if legacy else target
                state = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(saved_as)))["state"]
                self._verify(s, state, meta)
                if target is not None:
                    _check_structure(saved_as, state, s, self.directory)
                if not all(np.isfinite(a).all() for a in jax.tree.leaves(state)
                           if np.issubdtype(np.asarray(a).dtype, np.floating)):
                    raise CheckpointError("non-finite parameters")
                state = from_legacy(state) if legacy else upgrade_saved(state) if target is None else state
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means damaged; try the previous one
                gc.collect()  # its unawaited reads' errors, logged now (and dropped), not at a random later time
                errors.append(f"step {s}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
                damaged.append(s)
                warnings.warn(f"checkpoint {self.directory / str(s)} is damaged ({errors[-1]}); "
                              "using the newest good one instead", stacklevel=2)
                continue
            _REPORTED_IO.paths.discard(reads)
            if not self.read_only:
                for d in damaged:
                    self.manager.delete(d)
            return Restored(state, dict(meta), s)
        raise CheckpointError(f"{self.directory}: no usable checkpoint: " + "; ".join(errors))

    def _verify(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Check a restored step's state and meta against the digests recorded when it was saved."""
        if (recorded := meta.get("digest")) is not None:
            now = content_digest(state, meta)
            changed = sorted(k for k in ("state", "meta") if recorded.get(k) != now[k])
            if changed:
                verb = "differ" if len(changed) > 1 else "differs"
                raise CheckpointError(f"its {' and '.join(changed)} {verb} from when it was saved")
            return
        path = self.directory / str(step) / DIGEST  # saved by an older version: its file digest
        if not path.is_file():
            raise CheckpointError("it has no digest to verify it by (saved by an older cnn_jax and not finished)")
        recorded = json.loads(path.read_text())
        now = _file_digest(self.directory / str(step))
        changed = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
        if changed:
            raise CheckpointError(f"{len(changed)} file(s) differ from when it was saved, e.g. {changed[0]}")

    # ----------------------------------------------------------------------------------------- write
    def save(self, step: int, state: Any, meta: Mapping[str, Any], metrics: Mapping[str, float] | None = None
             ) -> bool:
        """Save host copies of ``state`` and ``meta`` (plus ``metrics``, stored in the meta) at ``step``,
        asynchronously; first waits for the previous save and prunes beyond the retention policy."""
        self._prune()
        if step in self.steps():
            return False
        state = to_host(state)
        need, free = sum(a.nbytes for a in jax.tree.leaves(state)) + 2**20, _free_bytes(self.directory)
        if free < need:  # refuse before Orbax's writer threads fail half-way
            raise DiskFullError(f"no space left on the device of {self.directory}: a checkpoint needs up to "
                                f"{need / 2**20:.1f} MB, {free / 2**20:.1f} MB are free; the checkpoints saved "
                                "before are intact: free some space and run the same command to resume")
        metrics = {k: float(v) for k, v in (metrics or {}).items() if np.isscalar(v) and np.isfinite(v)}
        meta = {k: v for k, v in meta.items() if k != "digest"} | {"metrics": metrics}
        if isinstance(state, TrainState):
            meta["state_layout"] = STATE_LAYOUT  # how to read it back (older checkpoints have none)
        meta["digest"] = content_digest(state, meta)
        return bool(self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=True))

    def _prune(self) -> None:
        """Wait for pending saves; keep the latest ``keep`` checkpoints and the best by ``best_metric``; delete
        the rest."""
        self.manager.wait_until_finished()
        if self.read_only:
            return
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
        try:
            self._prune()
        finally:
            self.manager.close()
            if not self.read_only and jax.process_index() == 0:  # a save that failed (disk full) leaves these
                for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def content_digest(state: Any, meta: Mapping[str, Any]) -> dict[str, str]:
    """``{"state": sha256, "meta": sha256}``: the state's arrays (each leaf's path, dtype, shape and bytes, in
    path order, so a restore as plain dicts digests the same) and the meta as canonical JSON, its own
    ``digest`` excepted."""
    h = hashlib.sha256()
    leaves = [("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path),
               np.asarray(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]
    for name, a in sorted(leaves, key=lambda item: item[0]):
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    rest = {k: v for k, v in meta.items() if k != "digest"}
    meta_hex = hashlib.sha256(json.dumps(rest, sort_keys=True, allow_nan=True).encode()).hexdigest()
    return {"state": h.hexdigest(), "meta": meta_hex}


def _file_digest(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint (relative path -> hex), the digest file itself excepted."""
    return {str(p.relative_to(step_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != DIGEST}


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


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it came from) is the disk filling up: ``ENOSPC``, or TensorStore's
    ``RESOURCE_EXHAUSTED ... No space left on device`` (a ``ValueError``) from Orbax's background write."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or _DISK_FULL in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


_DISK_FULL = "No space left on device"


def _closed_loop_callback(unraisable: Any) -> bool:
    """Whether an unraisable exception is TensorStore calling back into the closed event loop of an aborted
    read or write (printed once per leftover callback, after the error itself was reported)."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


class _DropReportedIO(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" tracebacks of TensorStore reads and writes whose
    error was already reported in one line: reads of a checkpoint reported as damaged (the other reads of the
    same restore, dropped unawaited), and writes that met a full disk (Orbax's other writer tasks)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        return not any(p in text for p in (*self.paths, _DISK_FULL))


_REPORTED_IO = _DropReportedIO()


def _quiet_aborted_io() -> None:
    """Before a restore or training: the leftovers of aborted reads and writes, whose error was reported in one
    line (a damaged checkpoint by :meth:`RunCheckpointer.restore`, a full disk by the trainer), are dropped
    whenever they surface in this process: asyncio's logged tracebacks of the checkpoints in
    ``_REPORTED_IO.paths`` and of disk-full writes, and TensorStore's callbacks into a closed event loop
    (which may come while the failing call is still unwinding). Installed once."""
    log = logging.getLogger("asyncio")
    if _REPORTED_IO in log.filters:
        return
    log.addFilter(_REPORTED_IO)
    old_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _closed_loop_callback(unraisable):
            old_hook(unraisable)

    sys.unraisablehook = hook


class _DropDiskFullRecords(logging.Filter):
    """Drops Orbax's logged tracebacks of a disk-full save (the run reports it in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        return _DISK_FULL not in text


@contextlib.contextmanager
def quiet_disk_full() -> Iterator[None]:
    """While training: a disk that fills during Orbax's background write is reported once, by the caller
    (:func:`is_disk_full`), not as Orbax's logged tracebacks nor the asyncio "Event loop is closed" ones that
    its aborted writer threads print."""
    absl_log, drop = logging.getLogger("absl"), _DropDiskFullRecords()
    _quiet_aborted_io()
    absl_log.addFilter(drop)
    try:
        yield
    finally:
        absl_log.removeFilter(drop)

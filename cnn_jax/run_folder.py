"""The run folder: its files, whether it holds a run and what that run was trained with and on, and who may write
into it. A run folder (written by :func:`cnn_jax.train.train_and_evaluate`) holds::

    config.json      the Config (data, model, train, run)    metrics.jsonl   one line per epoch
    ckpt/<step>/     Orbax checkpoints (latest N + best)     results.json    final metrics
    figures/*.png    curves, confusion matrix, predictions, first-layer filters and feature maps

Process 0 decides what happens to the folder for every process (:func:`agree`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnn_jax.checkpoint import DIGEST, CheckpointError, RunCheckpointer
from cnn_jax.files import MARKER, NotOursError, RunLock, RunLockedError, claim_folder, owner, read_json, write_json

__all__ = ["CKPT_SUBDIR", "CONFIG_FILE", "RESULTS_FILE", "has_checkpoints", "has_run", "saved_record",
           "finished_without_checkpoints", "data_differences", "agree", "claim", "lock"]

CKPT_SUBDIR = "ckpt"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def has_checkpoints(run_dir: str | Path) -> bool:
    """The folder holds at least one checkpoint (``ckpt/<step>/``)."""
    ckpt_dir = Path(run_dir) / CKPT_SUBDIR
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def has_run(run_dir: str | Path) -> bool:
    """Checkpoints, or the results of a finished run whose checkpoints were deleted (to save space)."""
    return has_checkpoints(run_dir) or (Path(run_dir) / RESULTS_FILE).is_file()


def finished_without_checkpoints(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(config, results)`` of a finished run whose ``ckpt/`` was deleted (``results.json`` and ``config.json``
    kept); None when the folder has no results. A run's results without a readable config are refused."""
    if has_checkpoints(run_dir) or not (run_dir / RESULTS_FILE).is_file():
        return None
    results, config = read_json(run_dir / RESULTS_FILE, None), read_json(run_dir / CONFIG_FILE, None)
    if not isinstance(results, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{run_dir} holds the results of a finished run whose checkpoints are gone, and its "
                              f"{RESULTS_FILE if not isinstance(results, dict) else CONFIG_FILE} cannot be read; "
                              "nothing was changed there: pick another --run, or pass --new-run to start a fresh run "
                              "beside it")
    return config, results


def saved_record(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """``(config, dataset record)`` of a run folder's checkpoints (the latest readable one's; else ``config.json``
    and no dataset record); None if the folder has no checkpoints."""
    if not has_checkpoints(run_dir):
        return None
    ckpt = RunCheckpointer(run_dir / CKPT_SUBDIR, read_only=True)
    try:
        for step in ckpt.steps()[::-1]:
            try:
                meta = ckpt.read_meta(step)
                return meta["config"], meta.get("dataset")
            except Exception:  # noqa: BLE001 - damaged: the restore will say so and fall back
                continue
    finally:
        ckpt.close()
    if isinstance(saved := read_json(run_dir / CONFIG_FILE, None), dict):
        return saved, None
    raise CheckpointError(f"{run_dir}: the config of its checkpoints cannot be read (every checkpoint's record "
                          f"is damaged and {CONFIG_FILE} is missing or damaged); nothing was changed there: pick "
                          "another --run, or pass --new-run to start a fresh run beside it")


def data_differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """A resumed run's data must be the data its checkpoints were trained on: a stand-in's fingerprint (or the
    dataset's own files, ``source`` None) as recorded. Runs saved before sources were recorded are not checked."""
    if not saved or "source" not in saved:
        return []
    then, now_source = saved["source"], now["source"]
    if (then or {}).get("fingerprint") == (now_source or {}).get("fingerprint"):
        return []
    def label(source: dict[str, Any] | None) -> str:
        return source["label"] if source else f"{now['name']}'s own files"

    return [f"data: saved {label(then)}, now {label(now_source)}"]


def agree(action: Callable[[], Any]) -> Any:
    """``action()`` on process 0; its error, if any, raised on every process (one file-system decision)."""
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = action()
        except (NotOursError, RunLockedError) as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
            raise error or NotOursError("process 0 refused the run folder (see its message)")
    if error is not None:
        raise error
    return result


def claim(run_dir: Path, check_only: bool = False) -> None:
    """The run folder is ours (:func:`cnn_jax.files.claim_folder`): new, empty or marked as a run; a run of an
    older version (no marker, checkpoints with their file digest) is marked now."""
    legacy = owner(run_dir) is None and any(
        (p / DIGEST).is_file() for p in (run_dir / CKPT_SUBDIR).glob("[0-9]*") if run_dir.is_dir())
    if legacy and not check_only:
        write_json(run_dir / MARKER, {"cnn_jax": "run"})
    elif not legacy:
        claim_folder(run_dir, "run", check_only=check_only)


def lock(run_dir: Path, is_main: bool, say: Callable) -> RunLock:
    """The run folder's one-writer lock, taken by process 0 for all processes."""
    lock = RunLock(run_dir)
    if note := agree(lock.acquire):
        say(f"{run_dir}: {note}")
    return lock



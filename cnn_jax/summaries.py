"""A run's per-epoch metrics as TensorBoard event files (``<run>/tensorboard/``), written by tensorboardX's
pure-Python writer (no TensorFlow), so ``tensorboard --logdir checkpoints`` shows runs while they train.

Scalars, at the global train step that ends each epoch: ``loss/{train,train_eval,val,test}``,
``accuracy/{train,train_eval,val,test}`` (those the run logs), ``lr`` and ``images_per_s``. The event file is a
copy of ``metrics.jsonl``: when a run (re)starts, its history so far goes into a new event file and the older
ones are removed, so a resumed run shows each epoch once. Event files are append-only records with checksums
(a record cut short by a kill is skipped by readers), the one kind of file here not written by rename.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TB_SUBDIR", "SCALARS", "Summaries"]

TB_SUBDIR = "tensorboard"
#: TensorBoard tag -> key of a ``metrics.jsonl`` line.
SCALARS = {f"{what}/{split}": f"{split}_{what}" for what in ("loss", "accuracy")
           for split in ("train", "train_eval", "val", "test")} | {"lr": "lr", "images_per_s": "images_per_s"}


class Summaries:
    """Event files under ``run_dir/tensorboard``, starting from ``history`` (the run's epochs so far)."""

    def __init__(self, run_dir: str | os.PathLike, history: Sequence[dict[str, Any]] = ()):
        from tensorboardX import SummaryWriter

        self.dir = Path(run_dir) / TB_SUBDIR
        older = sorted(self.dir.glob("events.out.tfevents.*")) if self.dir.is_dir() else []
        self._writer = SummaryWriter(str(self.dir), filename_suffix=f".{os.getpid()}")
        for metrics in history:
            self.write(metrics)
        for path in older:  # their epochs are in the new file now
            path.unlink(missing_ok=True)

    def write(self, metrics: dict[str, Any]) -> None:
        """One epoch's scalars (those present and not None), flushed to disk."""
        for tag, key in SCALARS.items():
            if metrics.get(key) is not None:
                self._writer.add_scalar(tag, float(metrics[key]), int(metrics["step"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

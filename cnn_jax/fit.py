"""The training loop: epochs of compiled chunks, progress bar, JSONL log, early stopping, epoch hooks."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from cnn_jax import parallel
from cnn_jax.config import TrainConfig
from cnn_jax.steps import Preprocess
from cnn_jax.train_state import TrainState
from cnn_jax.trainer import NonFiniteLossError, Trainer

__all__ = ["fit", "FitResult", "Callback"]

Callback = Callable[[int, TrainState, dict[str, Any]], Any]
"""Called after each epoch with ``(epoch, state, metrics)``; returning True stops training."""


@dataclass
class EpochProgress:
    """Running sums of the epoch in progress (saved with a mid-epoch checkpoint, passed back on resume)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class FitResult:
    """``history``: every epoch's metrics, those passed in included. ``interrupted``: ``should_stop`` ended
    training mid-run; ``progress`` then holds the partial epoch's sums (None at an epoch boundary)."""

    state: TrainState  # as placed by the trainer (replicated for pmap/sharded)
    history: list[dict[str, Any]] = field(default_factory=list)
    trainer: Trainer | None = None
    stopped_early: bool = False
    interrupted: bool = False
    progress: EpochProgress | None = None


def _chunks(total: int, size: int) -> list[int]:
    sizes = [size] * (total // size)
    return sizes + [total % size] if total % size else sizes


def fit(
    model: nn.Module, cfg: TrainConfig, train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None, *, preprocess: Preprocess | None = None,
    eval_preprocess: Preprocess | None = None, log_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (), state: TrainState | None = None, progress: bool = True,
    trainer: Trainer | None = None, history: Sequence[dict[str, Any]] = (),
    epoch_progress: EpochProgress | None = None, should_stop: Callable[[], bool] | None = None,
    monitor: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Train ``model`` on ``train = (uint8 (N,H,W,C), int (N,))`` for ``cfg.epochs`` epochs.

    Each epoch runs as compiled chunks of ``cfg.steps_per_chunk`` steps (default: the whole epoch); the
    host syncs once per chunk (progress bar: img/s, loss, accuracy, ETA) and checks for non-finite steps
    (:class:`NonFiniteLossError` carries the last good state). After each epoch: validation metrics, a
    line appended to ``log_path`` (JSONL), ``callbacks(epoch, state, metrics)``, and early stopping on val
    accuracy after ``cfg.early_stopping_patience`` epochs without improvement. ``state`` resumes a run
    (placed as :meth:`Trainer.place_state` does; training continues from its step, mid-epoch too), with
    the earlier epochs' ``history`` and, when it stopped mid-epoch, that epoch's ``epoch_progress``, so the
    resumed run's history equals an uninterrupted one. ``should_stop()`` is polled after every chunk: when
    it returns True, training stops there (``result.interrupted``), callbacks are not called.
    ``monitor``: another split (e.g. test, for time-to-accuracy) evaluated after every epoch into
    ``test_loss``/``test_accuracy``; it never drives early stopping. Each epoch's ``elapsed`` is the wall time
    since training started (evaluations included, earlier runs of a resumed training added).
    """
    parallel.maybe_initialize_distributed(cfg.distributed)
    images, labels = train
    trainer = trainer or Trainer(model, cfg, len(images), images.shape[1:], preprocess, eval_preprocess)
    state = trainer.init_state() if state is None else state
    train_data = trainer.put_data(images, labels)
    val_data = trainer.put_data(*val, for_eval=True) if val is not None else None
    monitor_data = trainer.put_data(*monitor, for_eval=True) if monitor is not None else None
    fit_start = time.perf_counter() - (history[-1].get("elapsed", 0.0) if history else 0.0)
    spe = trainer.steps_per_epoch
    chunk = min(cfg.steps_per_chunk or spe, spe)
    start_step = int(np.ravel(trainer.host_state(state).step)[0])
    first_epoch = start_step // spe
    is_main = jax.process_index() == 0
    log = Path(log_path) if log_path is not None and is_main else None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    result = FitResult(state, [dict(h) for h in history], trainer)
    best, since_best = -math.inf, 0
    for h in result.history:  # early-stopping state of the epochs already done
        if h.get("val_accuracy") is not None:
            best, since_best = (h["val_accuracy"], 0) if h["val_accuracy"] > best else (best, since_best + 1)
    if cfg.early_stopping_patience is not None and since_best >= cfg.early_stopping_patience:
        result.stopped_early = True
        return result
    for epoch in range(first_epoch, cfg.epochs):
        skip = start_step - epoch * spe if epoch == first_epoch else 0
        resumed = epoch_progress if skip and epoch_progress is not None else EpochProgress()
        t0 = time.perf_counter() - resumed.seconds
        loss_sum, correct, seen = resumed.loss_sum, resumed.correct, resumed.seen
        bar = tqdm(total=spe * cfg.batch_size, initial=skip * cfg.batch_size, unit="img",
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and is_main), leave=False,
                   dynamic_ncols=True)
        for steps in _chunks(spe - skip, chunk):
            state, m = trainer.train_chunk(state, train_data, steps)
            trainer.check_finite(state, m)  # the one host sync per chunk
            m = parallel.to_host(m)
            loss_sum += float(m["loss_sum"])
            correct += int(m["correct"])
            seen += steps * cfg.batch_size
            bar.update(steps * cfg.batch_size)
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_sum / max(seen // cfg.batch_size, 1):.4f}",
                            acc=f"{correct / max(seen, 1):.4f}", img_s=f"{rate:,.0f}")
            # Stopped mid-epoch: keep the epoch's running sums for the resumed run.
            if should_stop is not None and should_stop() and seen // cfg.batch_size < spe:
                bar.close()
                result.state, result.interrupted = state, True
                result.progress = EpochProgress(loss_sum, correct, seen, time.perf_counter() - t0)
                return result
        bar.close()
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch + 1, "step": (epoch + 1) * spe,
            "train_loss": loss_sum / max(seen // cfg.batch_size, 1),
            "train_accuracy": correct / max(seen, 1), "seconds": seconds, "images_per_s": seen / seconds,
        }
        if val_data is not None:
            ev = trainer.evaluate(state, val_data)
            metrics.update(val_loss=float(ev["loss"]), val_accuracy=float(ev["accuracy"]),
                           val_confusion=np.asarray(ev["confusion"]).tolist())
        if monitor_data is not None:
            ev = trainer.evaluate(state, monitor_data)
            metrics.update(test_loss=float(ev["loss"]), test_accuracy=float(ev["accuracy"]))
        metrics["elapsed"] = time.perf_counter() - fit_start
        result.history.append(metrics)
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if progress and is_main:
            val_txt = f" val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f}" \
                if val_data is not None else ""
            tqdm.write(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f} "
                       f"acc {metrics['train_accuracy']:.4f}"
                       f"{val_txt} ({metrics['images_per_s']:,.0f} img/s)")
        result.state = state
        stop = any([cb(epoch + 1, state, metrics) is True for cb in callbacks])
        if should_stop is not None and should_stop():  # at an epoch boundary, after the epoch's callbacks
            result.interrupted = True
            break
        if cfg.early_stopping_patience is not None and val_data is not None:
            if metrics["val_accuracy"] > best:
                best, since_best = metrics["val_accuracy"], 0
            else:
                since_best += 1
                stop = stop or since_best >= cfg.early_stopping_patience
        if stop:
            result.stopped_early = True
            break
    result.state = state
    return result


__all__ += ["NonFiniteLossError"]

"""The epoch loop of a run: compiled chunks of steps (:meth:`~cnn_jax.trainer.Trainer.train_chunk`), a progress
bar, per-epoch evaluations, the metrics line, TensorBoard, a checkpoint per epoch and a stop at a chunk boundary.

Data comes in on the host (:class:`~cnn_jax.data.Split`: uint8 images ``(N, H, W, C)``, int labels ``(N,)``);
the state goes out as the compiled steps left it, with the epochs' metrics (``metrics.jsonl``'s lines).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from cnn_jax import parallel
from cnn_jax.checkpoint import RunCheckpointer
from cnn_jax.config import Config
from cnn_jax.files import write_text
from cnn_jax.signals import StopSignal
from cnn_jax.train_state import TrainState
from cnn_jax.trainer import Trainer

__all__ = ["EpochLoop", "StoppedError", "train_eval_size", "chunk_steps", "CHUNK_SECONDS"]

#: Automatic chunks (``run.steps_per_chunk`` None) take about this long: the progress bar moves, and a stop
#: request is seen, once per chunk.
CHUNK_SECONDS = 1.0


class StoppedError(Exception):
    """SIGTERM/SIGINT (or a preemption notice on a multi-host run) stopped training after a checkpoint was
    saved; ``signal`` names it, ``step`` is the saved step."""

    def __init__(self, signal: str, step: int):
        super().__init__(f"{signal}: saved checkpoint at step {step}")
        self.signal, self.step = signal, step


def train_eval_size(num_train: int, num_val: int) -> int:
    """Size of the fixed training subset evaluated like validation each epoch (the generalisation gap's train
    side): the validation set's size, 5,000 without one, at most the training set."""
    return min(num_train, num_val or 5000)


def chunk_steps(fixed: int | None, per_step: float | None, remaining: int) -> int:
    """Steps of the next compiled call: ``fixed`` (``run.steps_per_chunk``), else as many as take about
    :data:`CHUNK_SECONDS` at the last measured ``per_step`` seconds (one step while nothing is measured),
    never past the epoch's ``remaining`` steps."""
    if fixed:
        return min(fixed, remaining)
    return 1 if per_step is None else max(1, min(remaining, int(CHUNK_SECONDS / max(per_step, 1e-9))))


def stalled(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs since the best validation accuracy."""
    accs = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
    return patience is not None and bool(accs) and len(accs) - 1 - int(np.argmax(accs)) >= patience


@dataclasses.dataclass
class EpochLoop:
    """What the loop works with: the run's compiled steps, config and folder, its checkpointer (every save
    records ``dataset`` and the history), the stop request, and whether this process writes the files."""

    trainer: Trainer
    config: Config
    dataset: dict[str, Any]
    run_dir: Path
    ckpt: RunCheckpointer
    stop: StopSignal
    is_main: bool

    def save(self, state: TrainState, history: list[dict], partial: dict | None = None,
             metrics: dict | None = None) -> int:
        """A checkpoint of ``state`` with the run's record (``partial``: a partly trained epoch's running
        sums); returns its step."""
        host = self.trainer.host_state(state)
        step = int(np.ravel(host.step)[0])
        self.ckpt.save(step, host, {"config": self.config.to_dict(), "dataset": self.dataset, "epoch": len(history),
                                    "history": history, "epoch_progress": partial}, metrics)
        return step

    def _stopped(self, step: int) -> StoppedError:
        """The error that ends a stopped run, once its checkpoint at ``step`` is written."""
        self.ckpt.wait()
        return StoppedError(self.stop.requested, step)

    def run(self, state: TrainState, history: list[dict], partial: dict | None, train, val, monitor=None
            ) -> tuple[TrainState, list[dict], bool]:
        """Train from ``state`` (``history``: the epochs done; ``partial``: the running sums of a partly trained
        epoch) to ``train.epochs``, evaluating ``val`` (and ``monitor``, the test split with ``run.track_test``)
        after each epoch. Returns ``(state, history, stopped_early)``; raises :class:`StoppedError` after saving
        when a stop was requested."""
        trainer, cfg, spe = self.trainer, self.config.train, self.trainer.steps_per_epoch
        data = {"train_eval": None, "val": None, "test": None}
        train_data = trainer.put_data(train.images, train.labels)
        if len(val):
            data["val"] = trainer.put_data(val.images, val.labels, for_eval=True)
        if monitor is not None:
            data["test"] = trainer.put_data(monitor.images, monitor.labels, for_eval=True)
        # the generalisation gap as defined: a fixed, seeded training subset (the validation set's size),
        # evaluated like validation (no dropout, no augmentation)
        subset = np.sort(np.random.default_rng(cfg.seed).choice(len(train), train_eval_size(len(train), len(val)),
                                                                False))
        data["train_eval"] = trainer.put_data(train.images[subset], train.labels[subset], for_eval=True)
        start_step = int(np.ravel(trainer.host_state(state).step)[0])
        fit_start = time.perf_counter() - (history[-1].get("elapsed", 0.0) if history else 0.0)
        if stalled(history, cfg.early_stopping_patience):
            return state, history, True
        from cnn_jax.summaries import Summaries

        summaries = Summaries(self.run_dir, history) if self.is_main else None
        # a bar on a terminal (images over the whole run, img/s, ETA); plain lines per epoch otherwise
        bar = tqdm(total=cfg.epochs * spe * cfg.batch_size, initial=start_step * cfg.batch_size, unit="img",
                   unit_scale=True, leave=False, dynamic_ncols=True,
                   disable=not (self.config.run.progress and self.is_main and sys.stderr.isatty()))
        timing = {"per_step": None, "warm": False}  # the first call compiles and is not timed
        try:
            for epoch in range(start_step // spe, cfg.epochs):
                skip = start_step - epoch * spe if epoch == start_step // spe else 0
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
                state, sums = self._train_epoch(state, train_data, epoch, skip, partial if skip else None,
                                                history, bar, timing)
                metrics = self._evaluate(state, epoch, sums, data)
                metrics["elapsed"] = time.perf_counter() - fit_start
                history = [*history, metrics]
                if self.is_main:
                    write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                    summaries.write(metrics)
                    if self.config.run.progress:
                        tqdm.write(_epoch_line(metrics))
                step = self.save(state, history, metrics={"val_accuracy": metrics.get("val_accuracy", float("nan"))})
                if epoch + 1 < cfg.epochs and self.stop():
                    raise self._stopped(step)
                if stalled(history, cfg.early_stopping_patience):
                    return state, history, True
        finally:
            bar.close()
            if summaries is not None:
                summaries.close()
        return state, history, False

    def _train_epoch(self, state, train_data, epoch: int, skip: int, partial: dict | None, history: list[dict],
                     bar, timing: dict) -> tuple[TrainState, dict[str, Any]]:
        """Epoch ``epoch``'s steps from its step ``skip`` on (``partial``: the running sums up to there), in
        chunks; the epoch's sums (``loss_sum``, ``correct``, ``seen``, ``seconds``)."""
        trainer, cfg, spe = self.trainer, self.config.train, self.trainer.steps_per_epoch
        sums = dict(partial) if partial else {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        t0 = time.perf_counter() - sums["seconds"]
        done = skip
        while done < spe:
            steps = chunk_steps(self.config.run.steps_per_chunk, timing["per_step"], spe - done)
            if jax.process_count() > 1:  # every process runs the same chunks
                from jax.experimental import multihost_utils

                steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
            t_chunk = time.perf_counter()
            state, m = trainer.train_chunk(state, train_data, steps, (sums["loss_sum"], sums["correct"]))
            trainer.check_finite(state, m)  # the one host sync per chunk
            m = parallel.to_host(m)
            if timing["warm"]:
                timing["per_step"] = (time.perf_counter() - t_chunk) / steps
            timing["warm"] = True
            done += steps
            sums.update(loss_sum=float(m["loss_sum"]), correct=int(m["correct"]),  # the epoch's totals so far
                        seen=sums["seen"] + steps * cfg.batch_size)
            bar.set_postfix(loss=f"{sums['loss_sum'] / max(sums['seen'] // cfg.batch_size, 1):.4f}",
                            acc=f"{sums['correct'] / max(sums['seen'], 1):.4f}", refresh=False)
            bar.update(steps * cfg.batch_size)
            if done < spe and self.stop():  # mid-epoch: keep the epoch's running sums
                raise self._stopped(self.save(state, history, {**sums, "seconds": time.perf_counter() - t0}))
        return state, {**sums, "seconds": time.perf_counter() - t0}

    def _evaluate(self, state, epoch: int, sums: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Epoch ``epoch``'s metrics line: its training sums, the learning rate, and each evaluated split."""
        trainer, cfg, spe = self.trainer, self.config.train, self.trainer.steps_per_epoch
        seconds = sums["seconds"]
        metrics: dict[str, Any] = {
            "epoch": epoch + 1, "step": (epoch + 1) * spe,
            "train_loss": sums["loss_sum"] / max(sums["seen"] // cfg.batch_size, 1),
            "train_accuracy": sums["correct"] / max(sums["seen"], 1), "seconds": seconds,
            "images_per_s": sums["seen"] / seconds, "lr": float(trainer.schedule((epoch + 1) * spe - 1))}
        ev = trainer.evaluate(state, data["train_eval"])
        metrics.update(train_eval_loss=float(ev["loss"]), train_eval_accuracy=float(ev["accuracy"]))
        if data["val"] is not None:
            ev = trainer.evaluate(state, data["val"])
            metrics.update(val_loss=float(ev["loss"]), val_accuracy=float(ev["accuracy"]),
                           val_confusion=np.asarray(ev["confusion"]).tolist())
        if data["test"] is not None:
            ev = trainer.evaluate(state, data["test"])
            metrics.update(test_loss=float(ev["loss"]), test_accuracy=float(ev["accuracy"]))
        return metrics


def _epoch_line(m: dict[str, Any]) -> str:
    val = f" val_loss {m['val_loss']:.4f} val_acc {m['val_accuracy']:.4f}" if "val_accuracy" in m else ""
    return (f"epoch {m['epoch']}: loss {m['train_loss']:.4f} acc {m['train_accuracy']:.4f}{val} "
            f"({m['images_per_s']:,.0f} img/s)")

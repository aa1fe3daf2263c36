"""The training program: ``train_and_evaluate(config, workdir)``.

Data flows one way: data (host numpy) -> model -> compiled steps (:class:`~cnn_jax.trainer.Trainer`) -> epoch loop
(:mod:`cnn_jax.loop`) -> checkpoints (:mod:`cnn_jax.checkpoint`) -> ``results.json`` and figures
(:mod:`cnn_jax.results`), in a run folder (:mod:`cnn_jax.run_folder`: its files, what it holds, who may write it).

One compiled path for 1..N devices and hosts: ``jit`` over a :class:`~jax.sharding.Mesh` (one device is a
mesh of one), the batch split over its ``"data"`` axis; ``pmap`` (one host) is built from the same step.
Multi-process: every process runs the same program on the same host data; Orbax saves and restores across
processes; only process 0 writes the run's files and prints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnn_jax import parallel
from cnn_jax import run_folder as folder
from cnn_jax.checkpoint import (
    DiskFullError,
    IncompatibleCheckpointError,
    RunCheckpointer,
    is_disk_full,
    quiet_disk_full,
)
from cnn_jax.config import Config, differences
from cnn_jax.files import read_json, write_json, write_text
from cnn_jax.loop import EpochLoop, StoppedError, train_eval_size
from cnn_jax.results import finish
from cnn_jax.run_folder import CKPT_SUBDIR, CONFIG_FILE, RESULTS_FILE
from cnn_jax.signals import StopSignal
from cnn_jax.trainer import NonFiniteLossError, Trainer, build_model, load_data, resolve_microbatch

__all__ = ["train_and_evaluate", "StoppedError"]


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Train ``config`` in the run folder ``workdir`` (resuming its checkpoints), test, write results.

    Returns ``results.json``'s content. Raises :class:`IncompatibleCheckpointError` (before anything is
    touched) when the folder's checkpoints were made with another config, :class:`NonFiniteLossError` and
    :class:`StoppedError` (after saving) when training cannot go on.
    """
    parallel.initialize_distributed(config.run.distributed)  # before anything touches a device
    run_dir = Path(workdir)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)
    folder.agree(lambda: folder.claim(run_dir, check_only=True))  # a user's folder: refused, nothing written
    saved, saved_data = folder.saved_record(run_dir) or (None, None)
    if saved is not None:
        config = resolve_microbatch(config, None, saved)  # "auto": the run's own choice
        if diffs := differences(saved, config):
            raise IncompatibleCheckpointError(run_dir, diffs)
    elif finished := folder.finished_without_checkpoints(run_dir):  # its results are never replaced
        if diffs := differences(finished[0], resolve_microbatch(config, None, finished[0])):
            raise IncompatibleCheckpointError(run_dir, diffs, holds="the results of a finished run")
        say(f"{run_dir} is already complete (its checkpoints were removed; its results are kept: "
            f"{run_dir / RESULTS_FILE}). Pass --new-run (or another --run) to train again.")
        return finished[1]

    t_start = time.perf_counter()
    splits, preprocess, eval_preprocess = load_data(config)
    train, val, test = splits.train, splits.val, splits.test
    model = build_model(config, splits.num_classes, train.images.shape[1:])
    if hasattr(model, "init_from_data"):  # e.g. the ResNet's whitening stem: from the first 5,000 training images
        model.init_from_data(np.asarray(eval_preprocess(None, train.images[:5000])))
    trainer = Trainer(model, config, len(train), train.images.shape[1:], preprocess, eval_preprocess)
    config = trainer.config  # "auto" made concrete (a new run: the rule), recorded below
    dataset = {"name": config.data.dataset, "num_train": len(train), "num_val": len(val), "num_test": len(test),
               "num_classes": splits.num_classes, "class_names": list(splits.class_names),
               "input_shape": list(train.images.shape[1:]), "source": splits.source, "label": splits.label,
               "num_train_eval": train_eval_size(len(train), len(val))}
    if diffs := folder.data_differences(saved_data, dataset):  # a stand-in resumed on the dataset's own files, or back
        raise IncompatibleCheckpointError(run_dir, diffs)
    fresh = trainer.init_state() if saved is None else None  # errors of a new run's setup come before any file
    created = not run_dir.exists()
    folder.agree(lambda: folder.claim(run_dir))  # created (or checked again) and marked as ours

    with contextlib.ExitStack() as resources:  # left in reverse: checkpointer closed, signals, disk filter, lock
        resources.push(lambda kind, *_: _discard_if_diverged(kind, run_dir, created and is_main))
        resources.callback(folder.lock(run_dir, is_main, say).release)
        resources.enter_context(quiet_disk_full())
        ckpt = RunCheckpointer(run_dir / CKPT_SUBDIR, keep=config.run.keep)
        stop = resources.enter_context(StopSignal(preemption=ckpt.manager if jax.process_count() > 1 else None))
        resources.push(lambda kind, *_: _close(ckpt, quietly=kind is not None))
        run = EpochLoop(trainer, config, dataset, run_dir, ckpt, stop, is_main)
        try:  # from here on stops at the next chunk boundary, with a checkpoint
            history: list[dict[str, Any]] = []
            partial = None  # running sums of a partly trained epoch
            if saved is not None:
                restored = ckpt.restore(trainer.abstract_state())
                state = trainer.place_state(restored.state)
                history, partial = restored.meta.get("history", []), restored.meta.get("epoch_progress")
                done = (restored.step >= config.train.epochs * trainer.steps_per_epoch and partial is None
                        and read_json(run_dir / RESULTS_FILE, None))
                if done:
                    say(f"{run_dir} is already complete ({len(history)} epochs); its results: "
                        f"{run_dir / RESULTS_FILE}. Pass --new-run (or another --run) to train again.")
                    return done
                say(f"resuming {run_dir} from checkpoint step {restored.step} "
                    f"(epoch {len(history)} done{', mid-epoch' if partial else ''})")
            else:
                state = fresh
                say(f"new run in {run_dir}")
            if is_main:
                write_json(run_dir / CONFIG_FILE, config.to_dict())
                write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            state, history, stopped_early = run.run(state, history, partial, train, val,
                                                    test if config.run.track_test else None)
            ckpt.wait()
            return finish(run, state, history, stopped_early, test if config.run.test else val,
                          time.perf_counter() - t_start)
        except Exception as e:  # the disk filled up while Orbax (in the background) or we were writing
            if not is_disk_full(e):
                raise
            raise DiskFullError(f"no space left on the device of {run_dir}; the checkpoints saved before are "
                                "intact: free some space and run the same command to resume") from None


def _close(ckpt: RunCheckpointer, quietly: bool) -> None:
    """Close the checkpointer (its last saves finish); ``quietly``: an error already on its way says more."""
    try:
        ckpt.close()
    except Exception:
        if not quietly:
            raise


def _discard_if_diverged(kind: type[BaseException] | None, run_dir: Path, ours: bool) -> None:
    """A new run (``ours``: created by this process 0) that diverged before its first checkpoint: its folder goes,
    so that the same command (with another --lr) starts afresh."""
    if kind is not None and issubclass(kind, NonFiniteLossError) and ours and not folder.has_checkpoints(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)

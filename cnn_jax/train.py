"""The training program: ``train_and_evaluate(config, workdir)``.

Data flows one way: data (host numpy) -> model -> compiled steps (:class:`~cnn_jax.trainer.Trainer`) -> epoch loop ->
checkpoints (:mod:`cnn_jax.checkpoint`) -> ``results.json`` and figures, in a run folder
(:mod:`cnn_jax.run_folder`: its files, what it holds, who may write it).

One compiled path for 1..N devices and hosts: ``jit`` over a :class:`~jax.sharding.Mesh` (one device is a
mesh of one), the batch split over its ``"data"`` axis; ``pmap`` (one host) is built from the same step.
Multi-process: every process runs the same program on the same host data; Orbax saves and restores across
processes; only process 0 writes the run's files and prints.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from cnn_jax import parallel
from cnn_jax import run_folder as folder
from cnn_jax.checkpoint import (
    DiskFullError,
    IncompatibleCheckpointError,
    RunCheckpointer,
    StopSignal,
    is_disk_full,
    quiet_disk_full,
)
from cnn_jax.config import Config, differences
from cnn_jax.files import write_json, write_text
from cnn_jax.run_folder import CKPT_SUBDIR, CONFIG_FILE, RESULTS_FILE
from cnn_jax.steps import COMPUTE_DTYPES
from cnn_jax.train_state import eval_params
from cnn_jax.trainer import NonFiniteLossError, Trainer, build_model, load_data, resolve_microbatch

__all__ = ["train_and_evaluate", "StoppedError", "train_eval_size", "chunk_steps"]


class StoppedError(Exception):
    """SIGTERM/SIGINT (or a preemption notice on a multi-host run) stopped training after a checkpoint was
    saved; ``signal`` names it, ``step`` is the saved step."""

    def __init__(self, signal: str, step: int):
        super().__init__(f"{signal}: saved checkpoint at step {step}")
        self.signal, self.step = signal, step


# ---------------------------------------------------------------------------------------------- loop
def train_eval_size(num_train: int, num_val: int) -> int:
    """Size of the fixed training subset evaluated like validation each epoch (the generalisation gap's train
    side): the validation set's size, 5,000 without one, at most the training set."""
    return min(num_train, num_val or 5000)


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
    config = resolve_microbatch(config, model)  # a new run: the rule, recorded below
    trainer = Trainer(model, config, len(train), train.images.shape[1:], preprocess, eval_preprocess)
    cfg, spe = config.train, trainer.steps_per_epoch
    dataset = {"name": config.data.dataset, "num_train": len(train), "num_val": len(val), "num_test": len(test),
               "num_classes": splits.num_classes, "class_names": list(splits.class_names),
               "input_shape": list(train.images.shape[1:]), "source": splits.source, "label": splits.label,
               "num_train_eval": train_eval_size(len(train), len(val))}
    if diffs := folder.data_differences(saved_data, dataset):  # a stand-in resumed on the dataset's own files, or back
        raise IncompatibleCheckpointError(run_dir, diffs)
    fresh = trainer.init_state() if saved is None else None  # errors of a new run's setup come before any file
    created = not run_dir.exists()
    folder.agree(lambda: folder.claim(run_dir))  # created (or checked again) and marked as ours
    lock = folder.lock(run_dir, is_main, say)
    ckpt, finished, discard = RunCheckpointer(run_dir / CKPT_SUBDIR, keep=config.run.keep), False, False
    stop = StopSignal(preemption=ckpt.manager if jax.process_count() > 1 else None).__enter__()  # a SIGTERM
    quiet = quiet_disk_full()
    quiet.__enter__()
    try:  # from here on stops at the next chunk boundary, with a checkpoint
        history: list[dict[str, Any]] = []
        partial = None  # running sums of a partly trained epoch
        if saved is not None:
            restored = ckpt.restore(trainer.abstract_state())
            state = trainer.place_state(restored.state)
            history, partial = restored.meta.get("history", []), restored.meta.get("epoch_progress")
            done = restored.step >= cfg.epochs * spe and partial is None and folder.read_json(run_dir / RESULTS_FILE)
            if done:
                say(f"{run_dir} is already complete ({len(history)} epochs); its results: {run_dir / RESULTS_FILE}."
                    " Pass --new-run (or another --run) to train again.")
                return done
            say(f"resuming {run_dir} from checkpoint step {restored.step} "
                f"(epoch {len(history)} done{', mid-epoch' if partial else ''})")
        else:
            state = fresh
            say(f"new run in {run_dir}")
        if is_main:
            write_json(run_dir / CONFIG_FILE, config.to_dict())
            write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

        def save(state, history, partial=None, metrics=None) -> int:
            host = trainer.host_state(state)
            step = int(np.ravel(host.step)[0])
            ckpt.save(step, host, {"config": config.to_dict(), "dataset": dataset, "epoch": len(history),
                                   "history": history, "epoch_progress": partial}, metrics)
            return step

        state, history, stopped_early = _epochs(trainer, config, state, history, partial, train, val,
                                               test if config.run.track_test else None, run_dir, ckpt, save,
                                               stop, is_main)
        ckpt.wait()
        results = _finish(run_dir, config, dataset, trainer, state, history, stopped_early,
                          test if config.run.test else val, time.perf_counter() - t_start, is_main)
        finished = True
    except NonFiniteLossError:  # a new run that diverged before its first checkpoint: its folder goes
        discard = created and is_main and not folder.has_checkpoints(run_dir)
        raise
    except Exception as e:  # the disk filled up while Orbax (in the background) or we were writing
        if not is_disk_full(e):
            raise
        raise DiskFullError(f"no space left on the device of {run_dir}; the checkpoints saved before are intact: "
                            "free some space and run the same command to resume") from None
    finally:
        try:
            ckpt.close()
        except Exception:
            if finished:  # else the error already on its way says more
                raise
        finally:
            stop.__exit__()
            quiet.__exit__(None, None, None)
            lock.release()
            if discard:  # only what this run wrote: the same command (with another --lr) starts afresh
                shutil.rmtree(run_dir, ignore_errors=True)
    return results


def _test_hooks() -> Callable[[int, int], None]:
    """Test-only stand-ins for a slower machine and an outside signal, so that tests are driven by steps, not by
    the machine's speed (environment, read when a run starts): ``CNN_JAX_TEST_STEP_SECONDS=S`` sleeps S seconds
    per step; ``CNN_JAX_TEST_SIGNAL_AT=STEP[:SIGNAME]`` sends this process SIGNAME (default SIGTERM) once the
    chunk that reaches global step STEP is done. Returns ``hook(step_before, step_after)``, called per chunk."""
    delay = float(os.environ.get("CNN_JAX_TEST_STEP_SECONDS") or 0)
    at, _, name = (os.environ.get("CNN_JAX_TEST_SIGNAL_AT") or "").partition(":")

    def hook(before: int, after: int) -> None:
        if delay:
            time.sleep(delay * (after - before))
        if at and before < int(at) <= after:
            os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))
    return hook


#: Automatic chunks (``run.steps_per_chunk`` None) take about this long: the progress bar moves, and a stop
#: request is seen, once per chunk.
CHUNK_SECONDS = 1.0


def chunk_steps(fixed: int | None, per_step: float | None, remaining: int) -> int:
    """Steps of the next compiled call: ``fixed`` (``run.steps_per_chunk``), else as many as take about
    :data:`CHUNK_SECONDS` at the last measured ``per_step`` seconds (one step while nothing is measured),
    never past the epoch's ``remaining`` steps."""
    if fixed:
        return min(fixed, remaining)
    return 1 if per_step is None else max(1, min(remaining, int(CHUNK_SECONDS / max(per_step, 1e-9))))


def _epochs(trainer: Trainer, config: Config, state, history, partial, train, val, monitor, run_dir: Path,
            ckpt: RunCheckpointer, save: Callable, stop: StopSignal, is_main: bool):
    """The epoch loop: compiled chunks, progress, per-epoch evaluation, metrics line, TensorBoard and
    checkpoint."""
    from cnn_jax.summaries import Summaries

    cfg, spe = config.train, trainer.steps_per_epoch
    train_data = trainer.put_data(train.images, train.labels)
    val_data = trainer.put_data(val.images, val.labels, for_eval=True) if len(val) else None
    monitor_data = trainer.put_data(monitor.images, monitor.labels, for_eval=True) if monitor is not None else None
    # the generalisation gap as defined: a fixed, seeded training subset (the validation set's size), evaluated
    # like validation (no dropout, no augmentation)
    subset = np.sort(np.random.default_rng(cfg.seed).choice(len(train), train_eval_size(len(train), len(val)), False))
    train_eval_data = trainer.put_data(train.images[subset], train.labels[subset], for_eval=True)
    start_step = int(np.ravel(trainer.host_state(state).step)[0])
    fit_start = time.perf_counter() - (history[-1].get("elapsed", 0.0) if history else 0.0)
    if _stalled(history, cfg.early_stopping_patience):
        return state, history, True
    summaries = Summaries(run_dir, history) if is_main else None
    # a bar on a terminal (images over the whole run, img/s, ETA); plain lines per epoch otherwise
    bar = tqdm(total=cfg.epochs * spe * cfg.batch_size, initial=start_step * cfg.batch_size, unit="img",
               unit_scale=True, leave=False, dynamic_ncols=True,
               disable=not (config.run.progress and is_main and sys.stderr.isatty()))
    per_step, warm = None, False  # measured seconds per step; the first call compiles and is not timed
    test_hook = _test_hooks()
    try:
        for epoch in range(start_step // spe, cfg.epochs):
            skip = start_step - epoch * spe if epoch == start_step // spe else 0
            sums = dict(partial) if skip and partial else {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            t0 = time.perf_counter() - sums["seconds"]
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            done = skip
            while done < spe:
                steps = chunk_steps(config.run.steps_per_chunk, per_step, spe - done)
                if jax.process_count() > 1:  # every process runs the same chunks
                    from jax.experimental import multihost_utils

                    steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
                t_chunk = time.perf_counter()
                state, m = trainer.train_chunk(state, train_data, steps, (sums["loss_sum"], sums["correct"]))
                trainer.check_finite(state, m)  # the one host sync per chunk
                m = parallel.to_host(m)
                test_hook(epoch * spe + done, epoch * spe + done + steps)
                if warm:
                    per_step = (time.perf_counter() - t_chunk) / steps
                warm = True
                done += steps
                sums.update(loss_sum=float(m["loss_sum"]), correct=int(m["correct"]),  # the epoch's totals so far
                            seen=sums["seen"] + steps * cfg.batch_size)
                bar.set_postfix(loss=f"{sums['loss_sum'] / max(sums['seen'] // cfg.batch_size, 1):.4f}",
                                acc=f"{sums['correct'] / max(sums['seen'], 1):.4f}", refresh=False)
                bar.update(steps * cfg.batch_size)
                if done < spe and stop():  # mid-epoch: keep the epoch's running sums
                    ckpt.wait()
                    raise StoppedError(stop.requested, save(state, history,
                                                            {**sums, "seconds": time.perf_counter() - t0}))
            seconds = time.perf_counter() - t0
            metrics: dict[str, Any] = {
                "epoch": epoch + 1, "step": (epoch + 1) * spe,
                "train_loss": sums["loss_sum"] / max(sums["seen"] // cfg.batch_size, 1),
                "train_accuracy": sums["correct"] / max(sums["seen"], 1), "seconds": seconds,
                "images_per_s": sums["seen"] / seconds, "lr": float(trainer.schedule((epoch + 1) * spe - 1))}
            ev = trainer.evaluate(state, train_eval_data)
            metrics.update(train_eval_loss=float(ev["loss"]), train_eval_accuracy=float(ev["accuracy"]))
            if val_data is not None:
                ev = trainer.evaluate(state, val_data)
                metrics.update(val_loss=float(ev["loss"]), val_accuracy=float(ev["accuracy"]),
                               val_confusion=np.asarray(ev["confusion"]).tolist())
            if monitor_data is not None:
                ev = trainer.evaluate(state, monitor_data)
                metrics.update(test_loss=float(ev["loss"]), test_accuracy=float(ev["accuracy"]))
            metrics["elapsed"] = time.perf_counter() - fit_start
            history = [*history, metrics]
            if is_main:
                write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                summaries.write(metrics)
                if config.run.progress:
                    val_txt = f" val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f}" \
                        if val_data is not None else ""
                    tqdm.write(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f} acc "
                               f"{metrics['train_accuracy']:.4f}{val_txt} ({metrics['images_per_s']:,.0f} img/s)")
            step = save(state, history, metrics={"val_accuracy": metrics.get("val_accuracy", float("nan"))})
            if epoch + 1 < cfg.epochs and stop():
                ckpt.wait()
                raise StoppedError(stop.requested, step)
            if _stalled(history, cfg.early_stopping_patience):
                return state, history, True
    finally:
        bar.close()
        if summaries is not None:
            summaries.close()
    return state, history, False


def _stalled(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs since the best validation accuracy."""
    accs = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
    return patience is not None and bool(accs) and len(accs) - 1 - int(np.argmax(accs)) >= patience


# ------------------------------------------------------------------------------------------- results
def _finish(run_dir: Path, config: Config, dataset: dict[str, Any], trainer: Trainer, state, history,
            stopped_early: bool, held_out, wall: float, is_main: bool) -> dict[str, Any]:
    """Test metrics, ``results.json`` and figures (process 0) for a finished run. ``held_out``: the test split,
    or with ``run.test`` off the validation split (the confusion matrix and figures; no test figures)."""
    from cnn_jax import plots
    from cnn_jax.data import normalize
    from cnn_jax.steps import eval_logits

    on_test = config.run.test
    ev = trainer.evaluate(state, trainer.put_data(held_out.images, held_out.labels, for_eval=True))
    last = history[-1] if history else {}
    confusion = np.asarray(ev["confusion"])
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
    host = trainer.host_state(state)
    params = eval_params(host.params, host.opt_state)
    logits = eval_logits(trainer.model, params, host.batch_stats, normalize(held_out.images[:64], config.data.dataset),
                         config.data.tta, COMPUTE_DTYPES[config.train.precision])
    with_val = [h for h in history if h.get("val_accuracy") is not None]
    best = max(with_val, key=lambda h: h["val_accuracy"]) if with_val else None
    timed = [h["images_per_s"] for h in history if h.get("images_per_s")]
    names = dataset["class_names"]
    results = {
        "dataset": config.data.dataset, "model": config.model.name, "epochs": len(history),
        "stopped_early": stopped_early, **{k: last.get(k) for k in ("train_loss", "train_accuracy", "val_loss",
                                                                      "val_accuracy")},
        "test_loss": float(ev["loss"]) if on_test else None,
        "test_accuracy": float(ev["accuracy"]) if on_test else None,
        "confusion_split": "test" if on_test else "val",
        "best_epoch": best["epoch"] if best else None, "best_val_accuracy": best["val_accuracy"] if best else None,
        "per_class_accuracy": dict(zip(names, per_class, strict=True)), "confusion_matrix": confusion.tolist(),
        "class_names": names, "wall_seconds": wall, "train_seconds": sum(h.get("seconds", 0) for h in history),
        "images_per_s": float(np.median(timed)) if timed else None,
        "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
        "process_count": jax.process_count(), "backend": jax.default_backend(), **{
            k: dataset[k] for k in ("num_train", "num_val", "num_test", "num_train_eval")},
        "data_source": dataset["source"], "data_label": dataset["label"],
        "versions": _versions(), "host": platform.node(), "run_dir": str(run_dir),
    }
    if is_main:
        figures = plots.write_run_figures(run_dir / "figures", history, confusion, names, held_out,
                                          np.asarray(np.argmax(logits, -1)), params, config.data.dataset)
        results["figures"] = [str(p) for p in figures]
        write_json(run_dir / RESULTS_FILE, results)
        said = f"test accuracy {results['test_accuracy']:.4f} (loss {results['test_loss']:.4f})" if on_test else \
            f"validation accuracy {float(ev['accuracy']):.4f} (test not evaluated: --no-test)"
        print(f"{said}; wrote {run_dir / RESULTS_FILE} and {len(figures)} figures in {run_dir / 'figures'}")
    return results


def _versions() -> dict[str, str]:
    from importlib import metadata

    have = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    pkgs = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "cnn-jax")
    return {"python": platform.python_version(), **{p: have[p] for p in pkgs if p in have}}

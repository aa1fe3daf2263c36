"""A finished run's results: the held-out split evaluated, ``results.json`` (metrics, per-class accuracy, confusion
matrix, timing, devices, versions) and the figures (:mod:`cnn_jax.plots`), written by process 0."""

from __future__ import annotations

import platform
from typing import Any

import jax
import numpy as np

from cnn_jax.files import write_json
from cnn_jax.loop import EpochLoop
from cnn_jax.run_folder import RESULTS_FILE
from cnn_jax.steps import COMPUTE_DTYPES
from cnn_jax.train_state import TrainState, eval_params

__all__ = ["finish", "versions"]


def finish(run: EpochLoop, state: TrainState, history: list[dict[str, Any]], stopped_early: bool, held_out,
           wall: float) -> dict[str, Any]:
    """Test metrics, ``results.json`` and figures (process 0) for a run that ``run`` trained to ``state``.
    ``held_out``: the test split, or with ``run.test`` off the validation split (the confusion matrix and figures;
    no test figures). ``wall``: seconds since the run started (data loading included)."""
    run_dir, config, dataset, trainer = run.run_dir, run.config, run.dataset, run.trainer
    from cnn_jax import plots
    from cnn_jax.data import normalize
    from cnn_jax.steps import eval_logits

    on_test = config.run.test
    ev = trainer.evaluate(state, trainer.put_data(held_out.images, held_out.labels, for_eval=True))
    last = history[-1] if history else {}
    confusion = np.asarray(ev["confusion"])
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
    host = trainer.host_state(state)
    params = eval_params(host)
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
        "versions": versions(), "host": platform.node(), "run_dir": str(run_dir),
    }
    if run.is_main:
        figures = plots.write_run_figures(run_dir / "figures", history, confusion, names, held_out,
                                          np.asarray(np.argmax(logits, -1)), params, config.data.dataset)
        results["figures"] = [str(p) for p in figures]
        write_json(run_dir / RESULTS_FILE, results)
        said = f"test accuracy {results['test_accuracy']:.4f} (loss {results['test_loss']:.4f})" if on_test else \
            f"validation accuracy {float(ev['accuracy']):.4f} (test not evaluated: --no-test)"
        print(f"{said}; wrote {run_dir / RESULTS_FILE} and {len(figures)} figures in {run_dir / 'figures'}")
    return results


def versions() -> dict[str, str]:
    """Python's and the packages' versions a run records."""
    from importlib import metadata

    have = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    pkgs = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "cnn-jax")
    return {"python": platform.python_version(), **{p: have[p] for p in pkgs if p in have}}

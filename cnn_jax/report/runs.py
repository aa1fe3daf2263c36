"""The runs a report compares: a finished run folder read (``results.json``, ``metrics.jsonl``), named, and
summarised into the numbers the table and the conclusion use."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnn_jax.files import read_json
from cnn_jax.report.statistics import gap, overfitting, subset_sizes

__all__ = ["ReportError", "Run", "read_run", "run_names", "dataset_label", "summarize"]


class ReportError(ValueError):
    """A problem with the inputs or the output path, said in one line."""


@dataclass
class Run:
    """One finished run: its folder, ``results.json`` and ``metrics.jsonl`` history."""

    path: Path
    results: dict[str, Any]
    history: list[dict[str, Any]]
    name: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder; :class:`ReportError` if it is not a finished run."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such folder")
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder; expected a run folder with results.json and metrics.jsonl")
    missing = [f for f in ("results.json", "metrics.jsonl") if not (path / f).is_file()]
    if missing:
        hint = (" (the run has not finished: resume it with the same experiment command first)"
                if missing == ["results.json"] else "")
        raise ReportError(f"{path}: not a run folder, no {' or '.join(missing)}{hint}")
    try:
        results = read_json(path / "results.json")
    except ValueError as e:
        raise ReportError(str(e)) from e
    if not isinstance(results, dict) or "test_accuracy" not in results:
        raise ReportError(f"{path / 'results.json'}: not a cnn_jax results file (no test_accuracy)")
    history = []
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path / 'metrics.jsonl'}: unreadable ({type(e).__name__})") from e
    if not history:
        raise ReportError(f"{path / 'metrics.jsonl'}: empty, the run has no finished epoch")
    return Run(path, results, history)


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the folder name, or as many trailing path parts as needed to tell them apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def dataset_label(results: dict[str, Any]) -> str:
    """How a run's data are named to a user: a stand-in's label (``results.json``'s ``data_source``), never the
    name of the dataset it stands in for; else the dataset's name."""
    record = results.get("data_source")
    return record["label"] if isinstance(record, dict) and record.get("label") else str(results.get("dataset"))


def summarize(run: Run) -> dict[str, Any]:
    """The numbers the table and the conclusion use (accuracies as fractions, as in ``results.json``)."""
    r, hist = run.results, run.history
    per_class = r.get("per_class_accuracy") or {}
    return {
        "dataset": dataset_label(r), "tfds_name": r.get("dataset"), "data_source": r.get("data_source"),
        "model": r.get("model"), "epochs": r.get("epochs", len(hist)),
        "train_accuracy": r.get("train_accuracy"), "train_eval_accuracy": hist[-1].get("train_eval_accuracy"),
        "val_accuracy": r.get("val_accuracy"), "test_accuracy": r.get("test_accuracy"),
        "test_loss": r.get("test_loss"), "num_test": r.get("num_test"), "gap": gap(hist[-1]),
        "best_epoch": r.get("best_epoch"), "best_val_accuracy": r.get("best_val_accuracy"),
        "wall_seconds": r.get("wall_seconds"), "images_per_s": r.get("images_per_s"),
        "worst_classes": sorted(per_class.items(), key=lambda kv: kv[1])[:3],
        "per_class_accuracy": per_class, "overfitting": overfitting(hist, subset_sizes(r)),
    }

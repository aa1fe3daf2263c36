"""The Markdown report: the runs side by side, the curves' figure, per-class weaknesses and the conclusion."""

from __future__ import annotations

from cnn_jax.report.prose import conclusion
from cnn_jax.report.runs import Run
from cnn_jax.report.statistics import pct

__all__ = ["MARKDOWN_MARK", "TABLE_COLUMNS", "table_row", "render"]

#: The report's first line: marks the file as ours (:mod:`cnn_jax.report.output` replaces only such a file).
MARKDOWN_MARK = "<!-- written by cnn_jax compare (experiments/compare.py); re-running the comparison replaces it -->"
#: The side-by-side table's columns, one row per run (:func:`table_row`).
TABLE_COLUMNS = ("run", "dataset", "model", "epochs", "train acc (%)", "train-eval acc (%)", "val acc (%)",
                 "test acc (%)", "train-eval - val gap (points)", "overfits", "epochs to best val", "wall time (s)",
                 "images/s")


def table_row(run: Run) -> list[str]:
    """A run's cells of the table (:data:`TABLE_COLUMNS`), from its summary."""
    s = run.summary
    return [run.name, str(s["dataset"]), str(s["model"]), str(s["epochs"]), pct(s["train_accuracy"]),
            pct(s["train_eval_accuracy"]), pct(s["val_accuracy"]), pct(s["test_accuracy"]), pct(s["gap"]),
            str(s["overfitting"]["overfits"]).lower(),
            "n/a" if s["best_epoch"] is None else str(s["best_epoch"]),
            "n/a" if s["wall_seconds"] is None else f"{s['wall_seconds']:.1f}",
            "n/a" if s["images_per_s"] is None else f"{s['images_per_s']:.0f}"]


def render(runs: list[Run], figure_name: str | None) -> str:
    """The Markdown report."""
    lines = [MARKDOWN_MARK, "# Run comparison", ""]
    lines += [f"- **{r.name}**: `{r.path}`" for r in runs]
    lines += ["", "## Side by side", "",
              "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in runs]
    lines += ["", "Accuracies are the last epoch's. Train acc is the running mean over the epoch's batches (dropout "
              "and augmentation on); train-eval acc is a fixed training subset evaluated like validation, and the "
              "gap is train-eval - val. Epochs to best val is the epoch with the highest validation accuracy.", ""]
    if figure_name:
        lines += ["## Curves", "", f"![validation accuracy, validation loss and train - val gap]({figure_name})", ""]
    lines += ["## Per-class weaknesses", "", "The three classes with the lowest test accuracy in each run:", ""]
    for r in runs:
        worst = r.summary["worst_classes"]
        text = ", ".join(f"{c} {pct(a, 1)}%" for c, a in worst) if worst else "no per-class accuracy recorded"
        lines.append(f"- **{r.name}**: {text}")
    lines += ["", "## Conclusion", "", " ".join(conclusion(runs)), ""]
    return "\n".join(lines)

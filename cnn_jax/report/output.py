"""Where a report goes and what it writes: ``<stem>.md``, ``<stem>.json`` and ``<stem>.png``, each atomically, never
into a run folder, replacing only an earlier report of ours (each file is marked as one)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnn_jax.files import owner, unwritable, write_json, write_text
from cnn_jax.report.markdown import MARKDOWN_MARK, render
from cnn_jax.report.prose import conclusion
from cnn_jax.report.runs import ReportError, Run, read_run, run_names, summarize
from cnn_jax.report.statistics import margin, overfitting_comparison

__all__ = ["REPORT_KIND", "PNG_MARK", "RUN_FILES", "report_paths", "check_out", "report_data", "write_report"]


#: What marks the report files as ours, so that re-running a comparison replaces its own previous report and
#: nothing else: the Markdown's first line (:data:`~cnn_jax.report.markdown.MARKDOWN_MARK`), the JSON's ``kind``
#: and a PNG text chunk.
REPORT_KIND = "cnn_jax.compare"
PNG_MARK = {"cnn_jax": REPORT_KIND}
#: Files that make a folder a run folder (with a ``.cnn_jax`` marker of kind ``run``).
RUN_FILES = ("results.json", "metrics.jsonl", "ckpt")


def report_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The files a report ``--out`` names: ``{"report": <stem>.md, "data": <stem>.json, "figure": <stem>.png}``.
    ``out`` must end in ``.md`` (a name without a suffix gets ``.md``); :class:`ReportError` otherwise."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out}: is a folder; give a file name such as {out / 'report.md'}")
    if out.suffix == "":
        out = out.with_name(out.name + ".md")
    elif out.suffix.lower() != ".md":
        stem = out.with_suffix("")
        raise ReportError(f"--out {out}: the report is Markdown and must end in .md (e.g. --out {stem}.md, which "
                          f"also writes {stem.name}.json and {stem.name}.png)")
    return {"report": out, "data": out.with_suffix(".json"), "figure": out.with_suffix(".png")}


def _run_folder(folder: Path, strict: bool = True) -> str | None:
    """Why ``folder`` is a run folder (marked as one, or holding a run's files: one of :data:`RUN_FILES`, or with
    ``strict=False`` two of them), or None."""
    if owner(folder) == "run":
        return "it is marked as a cnn_jax run folder"
    held = [f for f in RUN_FILES if (folder / f).exists()]
    return f"it holds {' and '.join(held)}" if len(held) >= (1 if strict else 2) else None


def _ours(kind: str, path: Path) -> bool:
    """Whether an existing ``path`` is a report file of ours (written by :func:`write_report`)."""
    from PIL import Image

    try:
        if kind == "report":
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.readline().rstrip("\n") == MARKDOWN_MARK
        if kind == "data":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and data.get("kind") == REPORT_KIND
        with Image.open(path) as im:
            return im.format == "PNG" and all(im.info.get(k) == v for k, v in PNG_MARK.items())
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def check_out(out: str | os.PathLike) -> dict[str, Path]:
    """Check, writing nothing, that a report can go to ``out``; returns :func:`report_paths`. :class:`ReportError`
    (one line) when ``out`` is not a ``.md`` name, its folder cannot be written or is a run folder (a report is
    not part of a run), or one of the files it would write exists and is not a report of ours."""
    paths = report_paths(out)
    out = paths["report"]
    problem = unwritable(out.parent)
    if problem:
        raise ReportError(f"--out {out}: {problem}; pick another --out")
    folder = out.parent.resolve()
    for d in (folder, *folder.parents):
        why = _run_folder(d, strict=d == folder)
        if why:
            where = f"{folder} is a run folder" if d == folder else f"{folder} is inside the run folder {d}"
            raise ReportError(f"--out {out}: {where} ({why}); a report is not part of a run and nothing was written: "
                              f"pick an --out outside it (e.g. {d.parent / (d.name + '-report.md')})")
    for kind, path in paths.items():
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise ReportError(f"--out {out}: {path} is a folder, not a file; nothing was written: pick another --out")
        if path.exists() and not _ours(kind, path):
            raise ReportError(f"--out {out}: {path} exists and is not a report written by cnn_jax compare; nothing "
                              "was written (it is not replaced): pick another --out, or move that file")
    return paths


def report_data(runs: list[Run]) -> dict[str, Any]:
    """What ``report.json`` holds: per run its figures and overfitting verdict, the accuracy margin, the
    conclusion (the prose renders these)."""
    keys = ("dataset", "tfds_name", "data_source", "model", "epochs", "train_accuracy", "train_eval_accuracy",
            "val_accuracy", "test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "images_per_s")
    return {"kind": REPORT_KIND,
            "runs": {r.name: {"path": str(r.path), **{k: r.summary[k] for k in keys},
                              "overfitting": r.summary["overfitting"]} for r in runs},
            "accuracy": margin(runs), "overfitting_comparison": overfitting_comparison(runs),
            "conclusion": conclusion(runs)}


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike = "report.md") -> dict[str, Any]:
    """Read the runs, write the report (``<stem>.md``), its data (``<stem>.json``) and its figure
    (``<stem>.png``), each atomically; ``out`` must end in ``.md`` (or have no suffix). Writes nothing into a run
    folder and replaces no file that is not a report of ours (:func:`check_out`). A run on a stand-in is named by
    its label (``results.json``'s ``data_source``). Returns ``{"report", "data", "figure", "runs", "conclusion",
    "text"}``."""
    if len(run_dirs) < 2:
        raise ReportError(f"need at least two run folders to compare, got {len(run_dirs)}")
    resolved = [Path(p).resolve() for p in run_dirs]
    dupes = {str(p) for p in resolved if resolved.count(p) > 1}
    if dupes:
        raise ReportError(f"the same run folder is given twice: {', '.join(sorted(dupes))}")
    paths = check_out(out)
    runs = [read_run(p) for p in run_dirs]
    for run, name in zip(runs, run_names([r.path for r in runs]), strict=True):
        run.name = name
        run.summary = summarize(run)
    from cnn_jax import plots

    out, figure = paths["report"], paths["figure"]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plots.plot_comparison({r.name: r.history for r in runs}, figure,
                              "validation accuracy, validation loss and overfitting gap per epoch", metadata=PNG_MARK)
        text = render(runs, figure.name)
        write_text(out, text)
        write_json(paths["data"], report_data(runs))
    except OSError as e:
        raise ReportError(f"--out {out}: cannot write ({e.strerror or e})") from e
    return {"report": out, "data": paths["data"], "figure": figure, "runs": runs, "conclusion": conclusion(runs),
            "text": text}

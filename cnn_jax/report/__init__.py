"""Compare finished runs: a Markdown report with a side-by-side table, per-class weaknesses, a conclusion
computed from the numbers (``report.json`` beside it holds them, with each run's overfitting verdict), and a
figure (validation accuracy, validation loss and train-eval - val gap per epoch): ``<stem>.md``, ``<stem>.json``
and ``<stem>.png`` for ``--out <stem>.md``, written atomically, never into a run folder, and replacing only an
earlier report of ours (each file is marked as one), never a user's file.

    python experiments/compare.py checkpoints/fashion_mnist/lab checkpoints/fashion_mnist/best --out report.md

A run folder is what ``experiments/<dataset>.py`` writes: ``results.json`` (final metrics) and ``metrics.jsonl``
(one line per epoch).

Modules, in the order data flows: :mod:`~cnn_jax.report.statistics` (noise, overfitting, margins),
:mod:`~cnn_jax.report.runs` (reading and summarising runs), :mod:`~cnn_jax.report.prose` (the conclusion),
:mod:`~cnn_jax.report.markdown` (the report), :mod:`~cnn_jax.report.output` (where it goes, what it writes).
"""

from __future__ import annotations

import sys

from cnn_jax.report.markdown import MARKDOWN_MARK, TABLE_COLUMNS, render
from cnn_jax.report.output import REPORT_KIND, check_out, report_data, report_paths, write_report
from cnn_jax.report.prose import conclusion, verdict_words
from cnn_jax.report.runs import ReportError, Run, dataset_label, read_run, summarize
from cnn_jax.report.statistics import (
    NOISE_SE,
    TIE_POINTS,
    beyond_noise,
    margin,
    overfitting,
    overfitting_comparison,
    subset_sizes,
)

__all__ = ["ReportError", "Run", "read_run", "summarize", "overfitting", "overfitting_comparison", "margin",
           "beyond_noise", "subset_sizes", "dataset_label", "verdict_words", "conclusion", "render", "report_data",
           "report_paths", "check_out", "write_report", "main", "MARKDOWN_MARK", "REPORT_KIND", "TABLE_COLUMNS",
           "NOISE_SE", "TIE_POINTS"]


def main(argv: list[str] | None = None, prog: str = "experiments/compare.py") -> int:
    from cnn_jax.cli import ArgumentParser  # the one-line errors of every command

    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run folders (with results.json)")
    p.add_argument("--out", default="report.md", help="the Markdown report, a name ending in .md; its data and "
                                                      "figure go beside it as .json and .png (default: report.md). "
                                                      "Not inside a run folder; files that are not an earlier "
                                                      "report of ours are never replaced")
    args = p.parse_args(argv)
    try:
        result = write_report(args.runs, args.out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['report']}, {result['data']} and {result['figure']}")
    print(" ".join(result["conclusion"]))
    return 0

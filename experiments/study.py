"""The notebook's study in one command: its CNN (``lab``) on Fashion-MNIST and on EMNIST Digits, compared.

    python experiments/study.py                              # or `make study`
    python experiments/study.py --emnist-source ~/Downloads/gzip.zip --with-best
    python experiments/study.py -- --epochs 3 --limit 2000   # flags after -- go to every run

Each run is an ordinary run folder under ``--workdir`` (the same command resumes, or reports finished runs);
the comparison goes to ``--out`` (``report.md``, ``report.json``, ``report.png``). EMNIST is downloaded the first
time; offline and without its files the digits run is skipped, with how to get them, and the rest is done.
"""

import argparse
import sys
from pathlib import Path

from cnn_jax.cli import main as train
from cnn_jax.report import ReportError, check_out, write_report


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(prog="experiments/study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--emnist-source", default=None, help="NIST's gzip.zip or a folder holding it (the first time)")
    p.add_argument("--with-best", action="store_true", help="also train the `best` preset on Fashion-MNIST")
    p.add_argument("--workdir", default="checkpoints", help="parent of the datasets' run folders")
    p.add_argument("--out", default="outputs/study/report.md",
                   help="the comparison report, a name ending in .md (its .json and .png go beside it); not inside a "
                        "run folder, and files that are not an earlier report of ours are never replaced")
    p.add_argument("flags", nargs="*", help="experiment flags for every run, after --")
    a = p.parse_args(argv)
    plan = [("fashion_mnist", "lab", []), *([("fashion_mnist", "best", [])] if a.with_best else []),
            ("emnist/digits", "lab", ["--source-dir", a.emnist_source] if a.emnist_source else [])]
    try:  # before hours of training: the report's place must be fine (checked again when it is written)
        report = check_out(a.out)["report"].parent.resolve()
        for dataset, preset, _ in plan:
            run_dir = (Path(a.workdir) / dataset.replace("/", "_") / preset).resolve()
            if report == run_dir or run_dir in report.parents:
                raise ReportError(f"--out {a.out}: inside the run folder {run_dir} this study trains; a report is "
                                  "not part of a run and nothing was written: pick an --out outside it")
    except ReportError as e:
        sys.exit(f"error: {e}")
    runs = []
    for dataset, preset, more in plan:
        workdir = Path(a.workdir) / dataset.replace("/", "_")
        print(f"== {dataset}, preset {preset}")
        try:
            train(dataset, ["--preset", preset, "--workdir", str(workdir), *more, *a.flags])
        except SystemExit as e:
            if dataset != "emnist/digits" or e.code in (0, None):
                raise
            print(f"EMNIST Digits skipped: {e.code}", file=sys.stderr)
            continue
        runs.append(workdir / preset)
    if len(runs) < 2:  # nothing to compare: the one run's verdict
        import json

        from cnn_jax.report import overfitting

        history = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
        v = overfitting(history)
        print(f"only {runs[0]} trained, nothing to compare; it overfits: {v['overfits']} ({'; '.join(v['reasons'])})")
        return None
    try:
        result = write_report(runs, a.out)
    except ReportError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {result['report']}, {result['data']} and {result['figure']}")
    print(" ".join(result["conclusion"]))
    return result


if __name__ == "__main__":
    main()

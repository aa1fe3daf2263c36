"""Train a CNN on EMNIST Digits: ``--preset lab`` (the notebook's CNN), ``fast`` or ``best`` (no flips for digits).

The first time it downloads NIST's ``gzip.zip`` (562 MB), or takes it from ``--source-dir``; see the README's
Datasets section. ``--source-dir`` may also be the MNIST digits stand-in (``python -m cnn_jax.data stand-in
emnist/digits --out DIR``): it is then named as the stand-in, its runs go to ``checkpoints/mnist_digits_standin/``
(unless ``--workdir``) and hold out 1,000 validation images (unless ``--val-size``).

    python experiments/emnist_digits.py --preset lab --source-dir ~/Downloads    # --help lists every flag
"""

import sys
from pathlib import Path

from cnn_jax.cli import main
from cnn_jax.data.standin import digits_plan, flag_value


def run(argv: list[str]) -> dict:
    """Train on EMNIST Digits, or on the stand-in (named as such, in its own folder)."""
    if any(a in ("-h", "--help") for a in argv):
        return main("emnist/digits", argv)
    plan = digits_plan(argv)
    workdir = flag_value(argv, "--workdir")
    argv = [*argv, *plan.args, *([] if workdir else ["--workdir", str(Path("checkpoints") / plan.folder)])]
    for line in plan.lines + ([f"runs on the stand-in go to checkpoints/{plan.folder}/ (--workdir to choose)"]
                              if plan.record and not workdir else []):
        print(line)
    results = main("emnist/digits", argv)
    if plan.record and results.get("test_accuracy") is not None:
        print(f"{plan.label}: test accuracy {results['test_accuracy']:.4f} (not EMNIST Digits; see the README)")
    return results


if __name__ == "__main__":
    run(sys.argv[1:])

"""The ``cnn-jax`` command (also ``python -m cnn_jax``): everything the experiment scripts do, after ``pip install``.

    cnn-jax train --dataset fashion_mnist --preset lab [flags]   # train (or resume) a run; --help lists the flags
    cnn-jax evaluate RUN                                         # a run's test accuracy
    cnn-jax predict RUN --image shoe.jpg                         # its top classes for your pictures
    cnn-jax prepare DATASET                                      # prepare a dataset ahead of time
    cnn-jax stand-in emnist/digits --out DIR                     # the MNIST digits stand-in (not EMNIST)
    cnn-jax compare RUN RUN... [--out report.md]                 # compare finished runs
    cnn-jax study                                                # the notebook's study in one command

Each subcommand is the same code as its script in the repository (``experiments/fashion_mnist.py``, ...).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cnn_jax.cli import ArgumentParser
from cnn_jax.config import PRESETS

__all__ = ["main", "COMMANDS"]

#: Subcommand -> what it does (``cnn-jax --help``).
COMMANDS: dict[str, str] = {
    "train": f"train (or resume) a run: --dataset fashion_mnist|emnist/digits, --preset {'|'.join(PRESETS)}, "
             "any config flag",
    "evaluate": "a run's test accuracy (python -m cnn_jax.inference RUN)",
    "predict": "a run's top classes for your pictures (--image PATH...)",
    "prepare": "prepare a dataset ahead of time (python -m cnn_jax.data prepare)",
    "stand-in": "write the MNIST digits stand-in for EMNIST Digits (python -m cnn_jax.data stand-in)",
    "compare": "compare two or more finished runs: a Markdown report and a figure",
    "study": "the notebook's study: its CNN on Fashion-MNIST and on handwritten digits, compared",
}


def _invoked_as() -> list[str]:
    """How this process was started: ``["cnn-jax"]`` or ``["python", "-m", "cnn_jax"]``."""
    return ["python", "-m", "cnn_jax"] if Path(sys.argv[0]).name == "__main__.py" else ["cnn-jax"]


def _train(argv: list[str], command: list[str]) -> None:
    from cnn_jax.cli import run

    p = ArgumentParser(prog=shlex.join([*command, "train"]), add_help=False)
    p.add_argument("--dataset", default="fashion_mnist")
    known, rest = p.parse_known_args(argv)
    run(known.dataset, rest, [*command, "train", "--dataset", known.dataset])


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status (errors are one line, as the scripts')."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _invoked_as()
    prog = shlex.join(command)
    parser = ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convolutional networks in JAX/Flax: train, evaluate, predict, compare.",
        epilog="commands:\n" + "\n".join(f"  {name:10s} {what}" for name, what in COMMANDS.items())
        + f"\n\n{prog} COMMAND --help shows a command's flags.")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = parser.parse_args(argv[:1]).command, argv[1:]
    sub = f"{prog} {name}"
    if name == "train":
        _train(rest, command)
        return 0
    if name in ("evaluate", "predict"):
        from cnn_jax.inference import main as inference

        inference(rest, sub, name)
        return 0
    if name in ("prepare", "stand-in"):
        from cnn_jax.data.__main__ import main as data

        return data([name, *rest], prog)
    if name == "compare":
        from cnn_jax.report import main as compare

        return compare(rest, sub)
    from cnn_jax.study import main as study

    study(rest, sub)
    return 0


if __name__ == "__main__":
    sys.exit(main())

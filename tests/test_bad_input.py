"""Mistakes as a new user types them (issue 40): one line naming the problem and the fix, exit status 2, nothing
written, before any work; the usage only with ``--help``. Each runs the ``cnn-jax`` command's ``main(argv)`` in the
test process (``tests/inproc.py``); ``test_a_mistake_in_a_process_is_one_line`` starts the command itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import inproc
import pytest

from cnn_jax.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line(out: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one line on stderr of a command that failed with ``code``; it holds every needle."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == code and len(lines) == 1, (out.returncode, out.stderr[-3000:])
    assert "usage:" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "needles"), [
    (["train", "--epochs", "abc"], ["--epochs: invalid int value: 'abc'", "cnn-jax train --dataset fashion_mnist "
                                                                           "--help lists the flags"]),
    (["train", "--preset", "labb"],
     ["--preset: unknown preset 'labb'; choose from ['best', 'best-2026-11', 'fast', 'lab']"]),
    (["train", "--lr", "nan"], ["--lr must be a finite number > 0, got nan"]),
    (["train", "--lr", "1e300"], ["--lr must be at most 3.4e38 (float32's largest number"]),  # inf in float32
    (["train", "--clip", "1e39"], ["--clip must be at most 3.4e38"]),
    (["train", "--dataset", "mnist"], ["unknown dataset 'mnist'; known: fashion_mnist, emnist/digits"]),
    (["train", "--dataset", "emnist/digits", "--augment", "translate", "altflip"],
     ["--augment: altflip changes a digit's meaning; drop it for emnist/digits"]),
    (["train", "--stem", "patchy", "--preset", "fast"],
     ["--stem must be one of ('conv', 'patch', 'pool', 'whiten'), got 'patchy'"]),
    (["train", "--stem", "patch"], ["--stem: model 'lab_cnn' has no stem parameter"]),
    (["train", "--lookahead", "0"], ["--lookahead must be >= 1 (or none: off), got 0"]),
    (["train", "--bn-bias-lr", "0"], ["--bn-bias-lr must be a finite number in (0, 1e6], got 0.0"]),
    (["train", "--init", "zeros", "--preset", "fast"], ["--init must be one of ('lecun', 'dirac'), got 'zeros'"]),
    (["train", "--tta", "shift", "rotate"], ["--tta: unknown ['rotate']; choose from ['flip', 'shift']"]),
    (["train", "--run", ".."], ["--run: '..' is not a plain name"]),
    (["train", "--run", ""], ["--run: '' is not a plain name"]),  # was: the preset's name, silently
    (["train", "--steps-per-chunk", "0"], ["--steps-per-chunk must be > 0 (or none: about a second"]),
    (["train", "--workdir", "FILE"], ["--workdir FILE: FILE is a file, not a folder; pick another --workdir"]),
    (["evaluate", "RUN", "--which", "worst"], ["--which: expected best, latest or a step number, got 'worst'"]),
    (["predict", "RUN"], ["the following arguments are required: --image"]),
    (["study", "--workdir", "FILE"], ["cnn-jax study: error: --workdir FILE: FILE is a file, not a folder"]),
    (["study", "--emnist-source", "MISSING"], ["--emnist-source MISSING: no such file or folder",
                                               "python -m cnn_jax.data stand-in emnist/digits"]),
    (["prepare"], ["the following arguments are required: name"]),
    (["compare"], ["the following arguments are required: RUN_DIR"]),
    (["trian"], ["invalid choice: 'trian'"]),
])
def test_a_mistake_is_one_line_and_writes_nothing(argv, needles, tmp_path, capsys, monkeypatch):
    (tmp_path / "FILE").write_text("the user's file\n")
    monkeypatch.chdir(tmp_path)  # where the commands' default folders would go
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    if argv[0] == "train":  # were a mistake not caught, training would be short (a later flag wins)
        argv = ["train", "--limit", "64", "--val-size", "16", "--epochs", "1", *argv[1:]]
    out = inproc.command(main, argv, capsys, monkeypatch, program="cnn-jax")
    _one_line(out, 2, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # no run folder, no checkpoints/, no data dir
    assert (tmp_path / "FILE").read_text() == "the user's file\n"


def test_a_mistake_in_a_process_is_one_line(tmp_path):
    """The training script itself: one line, exit 2, in the time it takes to start (no data read, nothing written)."""
    out = subprocess.run([sys.executable, "experiments/fashion_mnist.py", "--epochs", "abc", "--workdir",
                          str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    _one_line(out, 2, "experiments/fashion_mnist.py: error: argument --train.epochs/--epochs: invalid int value: "
                      "'abc' (experiments/fashion_mnist.py --help lists the flags)")
    assert list(tmp_path.iterdir()) == []


def test_help_still_shows_the_usage(capsys, monkeypatch):
    out = inproc.command(main, ["train", "--help"], capsys, monkeypatch, program="cnn-jax")
    assert out.returncode == 0 and out.stdout.startswith("usage: cnn-jax train --dataset fashion_mnist")
    assert "--epochs" in out.stdout and out.stderr == ""

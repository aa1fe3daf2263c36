"""What a newcomer meets, run as they run it: a progress bar that moves within an epoch (on a terminal) and
plain lines otherwise, TensorBoard event files of the run's metrics, predictions on ``(N, H, W)`` arrays and on
their own picture files (``python -m cnn_jax.inference RUN --image ...``)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from hooks import hooked
from PIL import Image

from cnn_jax.cli import main as run
from cnn_jax.loop import chunk_steps

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "fashion_mnist.py"


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _on_terminal(cmd: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal (120 columns): exit code and all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


# ------------------------------------------------------------------------------------------- progress
def test_chunk_length_follows_the_clock():
    assert chunk_steps(None, None, 429) == 1  # the first calls compile: one step each, not timed
    assert chunk_steps(None, 0.01, 429) == 100  # about a second of steps
    assert chunk_steps(None, 0.01, 30) == 30  # never past the epoch
    assert chunk_steps(None, 5.0, 429) == 1
    assert chunk_steps(64, 0.01, 429) == 64 and chunk_steps(64, None, 10) == 10  # --steps-per-chunk


def test_bar_moves_within_an_epoch_on_a_terminal(fashion_tfds_dir, tmp_path):
    """An epoch of 31 steps slowed to >= 0.15 s each (>= 4.6 s on any machine, in ~1 s chunks): the bar shows
    images, img/s and an ETA several times before the epoch's line."""
    env = hooked(_env(fashion_tfds_dir), step_seconds=0.15)
    code, out = _on_terminal([sys.executable, str(SCRIPT), "--epochs", "1", "--limit", "4000", "--val-size",
                              "500", "--workdir", str(tmp_path)], env)
    assert code == 0, out[-3000:]
    before_epoch = out.split("epoch 1: loss")[0]
    updates = re.findall(r"epoch 1/1:\s+(\d+)%\|[^\r\n]*?\[(\d\d:\d\d)<(\d\d:\d\d), +([\d.]+k?)img/s", before_epoch)
    moving = sorted({int(pct) for pct, *_ in updates if 0 < int(pct) < 100})
    assert len(moving) >= 3, before_epoch[-3000:]  # at least three distinct places inside the epoch
    assert "test accuracy" in out


def test_plain_lines_when_not_a_terminal(fashion_tfds_dir, tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--limit", "2000", "--val-size", "300",
                          "--workdir", str(tmp_path)], env=_env(fashion_tfds_dir), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    assert "img/s]" not in out.stderr and "\r" not in out.stdout + out.stderr  # no bar in a log


# ------------------------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def trained(fashion_tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs")
    run("fashion_mnist", ["--epochs", "2", "--limit", "4000", "--val-size", "500", "--no-progress",
                          "--data-dir", str(fashion_tfds_dir), "--workdir", str(workdir)])
    return workdir / "lab"


def test_tensorboard_holds_the_logged_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "loss/train_eval", "lr",
            "images_per_s"} <= tags
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_accuracy"), ("lr", "lr"),
                     ("images_per_s", "images_per_s"), ("accuracy/train_eval", "train_eval_accuracy")):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [h["step"] for h in history], tag
        assert [e.value for e in scalars] == pytest.approx([h[key] for h in history], rel=1e-6), tag
    assert history[0]["lr"] == pytest.approx(1e-3)  # the lab preset: Adam at a constant 1e-3


# ------------------------------------------------------------------------------------------- predictions
def test_predict_takes_n_h_w_and_h_w(trained, fashion_tfds_dir):
    from cnn_jax import load
    from cnn_jax.data import load as load_data

    images = load_data("fashion_mnist", data_dir=str(fashion_tfds_dir), val_size=0).test.images[:50]
    lm = load(trained)
    expected = lm.predict(images)  # (N, 28, 28, 1)
    np.testing.assert_array_equal(lm.predict(images[..., 0]), expected)  # (N, 28, 28)
    np.testing.assert_array_equal(lm.logits(images[..., 0]), lm.logits(images))
    assert lm.predict(images[0, ..., 0]) == expected[0]  # (28, 28): one image, a scalar class
    assert lm.predict(images[:1, ..., 0]).shape == (1,)  # (1, 28, 28): a batch of one
    with pytest.raises(ValueError, match=r"\(H, W\), \(N, H, W\), \(H, W, C\) or \(N, H, W, C\)"):
        lm.predict(images[:, :27, :, 0])


def test_image_command_matches_predict_on_the_array(trained, fashion_tfds_dir, tmp_path):
    """Test images saved as PNG, as-is, inverted (dark on light) and inverted at 64x64, and a colour JPEG:
    the command's top class is the class ``predict`` gives on the array."""
    from cnn_jax import load
    from cnn_jax.data import load as load_data

    test = load_data("fashion_mnist", data_dir=str(fashion_tfds_dir), val_size=0).test
    lm = load(trained)
    probs = np.asarray(jax.nn.softmax(lm.logits(test.images[:200]), axis=-1))
    confident = [i for i in np.argsort(-probs.max(1)) if probs[i].max() > 0.9][:4]
    assert len(confident) == 4
    paths, expected = [], []
    for i in confident:
        grey = test.images[i, ..., 0]
        for name, picture in ((f"{i}.png", Image.fromarray(grey)),
                              (f"{i}-inverted.png", Image.fromarray(255 - grey)),
                              (f"{i}-inverted-64.png", Image.fromarray(255 - grey).resize((64, 64),
                                                                                         Image.Resampling.BICUBIC)),
                              (f"{i}-colour.jpg", Image.fromarray(np.stack([255 - grey, 255 - grey,
                                                                            255 - grey // 2], -1)))):
            picture.save(tmp_path / name, **({"quality": 95} if name.endswith(".jpg") else {}))
            paths.append(str(tmp_path / name))
            expected.append(lm.class_names[int(np.argmax(probs[i]))])
    out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(trained), "--image", *paths, "--top", "2"],
                         env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(str(tmp_path))]
    assert len(lines) == len(paths)
    for path, want, line in zip(paths, expected, lines, strict=True):
        assert line.startswith(f"{path}: {want} "), line
        said, name = line[len(path):], Path(path).name  # not the folder: pytest's may be named "pytest-64"
        assert ("inverted" in said) == ("inverted" in name or "colour" in name), line
        assert ("resized to 28x28" in said) == ("-64" in name), line
    assert "light on dark" in out.stdout
    # the same, as a library call
    from cnn_jax.inference import read_image

    array, notes = read_image(paths[1])
    np.testing.assert_array_equal(array, test.images[confident[0]])  # inverting back is exact
    assert any("inverted" in n for n in notes)


def test_image_command_refuses_a_file_that_is_not_a_picture(trained, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(trained), "--image",
                          str(tmp_path / "notes.png")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'notes.png'}: not a picture")

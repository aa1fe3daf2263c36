"""The data dir as the user's commands meet it (issue 21, item 5): read-only, missing, not a folder; Ctrl-C.

Each case runs the command itself: ``python -m cnn_jax.data prepare`` and the trainer
``experiments/fashion_mnist.py``, as a process, or, for the one-line refusals of a bad data dir, as their
``main(argv)`` in the test process (:func:`in_process`). A bad data dir is one ``error:`` line naming the folder,
the problem and the fix (exit 1, no traceback, nothing written); a missing one is created; a read-only one that
holds the prepared dataset is read as is. Ctrl-C while preparing is one line, exit 130, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import inproc
import pytest
import tensorflow_datasets as tfds
from test_data import make_fashion_dir

from cnn_jax.data.loading import CACHE_NAME

ROOT = Path(__file__).resolve().parents[1]
FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")
needs_raw = pytest.mark.skipif(not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file(),
                               reason=f"no real Fashion-MNIST in {FASHION_RAW} (apt-get install dataset-fashion-mnist)")
PREPARE = [sys.executable, "-m", "cnn_jax.data", "prepare", "fashion_mnist"]
TRAIN = [sys.executable, "experiments/fashion_mnist.py", "--run", "r", "--epochs", "1", "--limit", "256"]


#: Runs ``python -m MODULE ARGS`` / ``python SCRIPT ARGS`` (after it) with Ctrl-C's default handler: a child of a
#: non-interactive shell's background job (a CI runner's) inherits SIGINT ignored, and Python keeps that. Done in
#: the child's Python rather than with ``preexec_fn``, which is unsafe to fork with from a threaded (JAX) parent.
DEFAULT_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                  "module = sys.argv[1] == '-m'; sys.argv = sys.argv[2:] if module else sys.argv[1:]; "
                  "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True) if module else "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")


def with_default_sigint(cmd: list[str]) -> list[str]:
    """``cmd`` (``[python, ...]``) run under :data:`DEFAULT_SIGINT`."""
    return [cmd[0], "-c", DEFAULT_SIGINT, *cmd[1:]]


def environ(**extra: str) -> dict[str, str]:
    """This environment, without a data dir or mirror of the user's, on one CPU device."""
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR" and not k.startswith("CNN_JAX_")}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **extra}


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environ(**(env or {})))


def in_process(cmd: list[str], capsys, monkeypatch, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """:data:`PREPARE` or :data:`TRAIN` (with more flags) as :func:`run` runs it, but as its ``main(argv)`` in this
    process: for refusals that come before any data is read or any device is used."""
    from cnn_jax.cli import main as train
    from cnn_jax.data.__main__ import main as data

    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    if cmd[1:3] == ["-m", "cnn_jax.data"]:
        return inproc.command(data, cmd[3:], capsys, monkeypatch, program="python -m cnn_jax.data", env=env)
    assert cmd[1] == TRAIN[1], cmd
    return inproc.command(lambda a: train("fashion_mnist", a), cmd[2:], capsys, monkeypatch, program=cmd[1], env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command, checked to be all there is on stderr (no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.split("\n") if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (or ``folder`` itself, a file) with its SHA-256; folders as ``"dir"``."""
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@contextlib.contextmanager
def read_only(folder: Path, tmp_path: Path):
    """A read-only view of ``folder``: a read-only bind mount as root (root ignores permission bits; skipped
    where mounting is not allowed), else the folder itself with its write bits cleared (restored after)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    view = tmp_path / f"ro-{folder.name}"
    view.mkdir()
    mount = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here ({mount.stderr.strip()}); a read-only folder needs it")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({remount.stderr.strip()})")
        assert not os.access(view, os.W_OK)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.fixture(scope="module")
def prepared(fashion_tfds_dir: Path) -> Path:
    """The session's data dir holding real Fashion-MNIST, prepared and decoded (conftest)."""
    assert (fashion_tfds_dir / "fashion_mnist" / "3.0.1" / CACHE_NAME).is_file()
    return fashion_tfds_dir


def empty_prepared_copy(prepared: Path, to: Path) -> Path:
    """``prepared`` without its decode cache (hard links: instant, and the shards are never written)."""
    shutil.copytree(prepared / "fashion_mnist", to / "fashion_mnist", copy_function=os.link)
    (to / "fashion_mnist" / "3.0.1" / CACHE_NAME).unlink()
    return to


# ------------------------------------------------------------------------------------ read-only data dir
def test_read_only_prepared_data_dir_is_used_as_is(prepared, tmp_path):
    """Read-only loading is a feature: a read-only data dir holding the dataset works for both commands."""
    before = tree(prepared)
    with read_only(prepared, tmp_path) as view:
        proc = run([*PREPARE, "--data-dir", str(view)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "decoded cache ready" in proc.stdout
        proc = run([*TRAIN, "--workdir", str(tmp_path / "w"), "--data-dir", str(view)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert tree(prepared) == before


def test_read_only_prepared_data_dir_without_cache_decodes_with_one_warning(prepared, tmp_path):
    """No decode cache and a read-only folder: the cache is skipped with one warning, the data is still used."""
    data = empty_prepared_copy(prepared, tmp_path / "d")
    before = tree(data)
    with read_only(data, tmp_path) as view:
        proc = run([*PREPARE, "--data-dir", str(view)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("cannot write the decoded cache") == 1 and "read-only" in proc.stderr
    assert "cache not written" in proc.stdout and "60000 train" in proc.stdout
    assert tree(data) == before  # nothing written: no cache, no temporary file


@pytest.mark.parametrize("cmd", ["prepare", "train"])
def test_read_only_empty_data_dir_is_one_line(cmd, tmp_path, capsys, monkeypatch):
    data = tmp_path / "d"
    (data / "keep").mkdir(parents=True)
    (data / "keep" / "notes.txt").write_text("mine\n")
    before = tree(data)
    with read_only(data, tmp_path) as view:
        t0 = time.perf_counter()
        proc = in_process([*PREPARE, "--data-dir", str(view)] if cmd == "prepare" else
                          [*TRAIN, "--workdir", str(tmp_path / "w"), "--data-dir", str(view)], capsys, monkeypatch)
        elapsed = time.perf_counter() - t0
        line = error_line(proc)
    for needle in (f"--data-dir {view}", "fashion_mnist is not prepared there", "writable folder as --data-dir"):
        assert needle in line, line
    assert "read-only" in line or "not writable" in line, line
    assert elapsed < 60, elapsed  # before reading the raw files or preparing anything
    assert tree(data) == before


# ------------------------------------------------------------------------------- not a folder / missing
@pytest.mark.parametrize("cmd", ["prepare", "train"])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_data_dir_that_is_not_a_folder_is_one_line(cmd, where, tmp_path, capsys, monkeypatch):
    file = tmp_path / "notes.txt"
    file.write_text("the user's file\n")
    data = file if where == "file" else file / "sub" / "tfds"
    proc = in_process([*PREPARE, "--data-dir", str(data)] if cmd == "prepare" else
                      [*TRAIN, "--workdir", str(tmp_path / "w"), "--data-dir", str(data)], capsys, monkeypatch)
    line = error_line(proc)
    want = "not a folder (it is a file)" if where == "file" else f"cannot be created, {file} is a file"
    assert f"--data-dir {data}:" in line and want in line and "pass a folder as --data-dir" in line, line
    assert file.read_text() == "the user's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no workdir, no data dir


def test_tfds_data_dir_env_is_named(tmp_path, capsys, monkeypatch):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    line = error_line(in_process(PREPARE, capsys, monkeypatch, env={"TFDS_DATA_DIR": str(file)}))
    assert f"TFDS_DATA_DIR={file}: not a folder" in line and "set TFDS_DATA_DIR to a folder" in line, line


# ------------------------------------------------------------------- Ctrl-C; a missing data dir is created
def start_and_interrupt(cmd: list[str], data: Path) -> subprocess.CompletedProcess:
    """Run ``cmd``; once it is writing the dataset (TFDS's ``incomplete.*`` folder has a shard), send SIGINT.

    The child gets SIGINT's default disposition: one started from a non-interactive shell's background job
    would inherit "ignored", and Python keeps that (so would a user's ``nohup``)."""
    proc = subprocess.Popen(with_default_sigint(cmd), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environ())
    try:
        deadline = time.monotonic() + 120
        while not list((data / "fashion_mnist").glob("incomplete.*/*.array_record*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "preparation did not start within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@needs_raw
def test_ctrl_c_while_preparing_keeps_nothing_then_prepare_creates_the_missing_data_dir(tmp_path):
    """Ctrl-C during ``prepare`` into a data dir whose parents do not exist: one line, exit 130, every folder
    it had created removed again; the command then creates the data dir and prepares it (from a small raw source:
    preparing the real files whole is what the session's fixture does)."""
    data = tmp_path / "new" / "a" / "tfds"
    proc = start_and_interrupt([*PREPARE, "--data-dir", str(data)], data)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = "interrupted while preparing fashion_mnist; nothing was kept; run the same command again"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", proc.stderr)  # terminal codes of the progress bars cleared
    last = text.rstrip().split("\n")[-1].split("\r")[-1].strip()  # after a progress bar cleared itself
    assert last == said, last
    assert "\x1b" not in proc.stderr.split(said)[-1], proc.stderr[-300:]  # no bar moves over the line after it
    assert not (tmp_path / "new").exists()  # no incomplete.* folder, no empty folders

    raw = make_fashion_dir(tmp_path / "raw")  # 40 images: the folders are the point, not the 70,000 again
    proc = run([*PREPARE, "--data-dir", str(data), "--from", str(raw), "--no-verify"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "decoded cache ready" in proc.stdout
    assert tfds.builder("fashion_mnist", data_dir=str(data)).is_prepared()
    assert (data / "fashion_mnist" / "3.0.1" / CACHE_NAME).is_file()
    assert not list(data.rglob("incomplete.*")) and not list(data.rglob(".tmp-*"))


@needs_raw
def test_ctrl_c_while_the_trainer_prepares_data_keeps_nothing(tmp_path):
    """The trainer's first run on an empty data dir prepares it; Ctrl-C then: one line, exit 130, nothing that
    counts as prepared, no temporary folder, no new folder."""
    data = tmp_path / "d"
    data.mkdir()
    proc = start_and_interrupt([*TRAIN, "--workdir", str(tmp_path / "w"), "--data-dir", str(data)], data)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", proc.stderr)  # terminal codes of the progress bars cleared
    errors = [ln.split("\r")[-1] for ln in text.split("\n") if ln.split("\r")[-1].startswith("error: ")]
    assert len(errors) == 1 and "interrupted (Ctrl-C)" in errors[0], proc.stderr[-3000:]
    assert not tfds.builder("fashion_mnist", data_dir=str(data)).is_prepared()
    assert list(data.iterdir()) == []  # the folder given is kept, empty as it was
    assert not (tmp_path / "w").exists()


GC_CALLBACK_INTERRUPT = """
import gc, os, signal
from cnn_jax.signals import interruptible

def callback(phase, info):  # as JAX's gc callback: Ctrl-C lands while the garbage collector runs it
    if phase == "start" and not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # Python handles the signal here, inside the callback

fired = []
gc.callbacks.append(callback)
try:
    with interruptible():
        gc.collect()
        for _ in range(10 ** 6):  # a long step with no check: the interrupt comes at the latest on leaving
            pass
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_ctrl_c_during_a_gc_callback_is_not_lost():
    """CPython prints a KeyboardInterrupt raised in a garbage-collector callback as a traceback and ignores it;
    JAX registers one, so about one Ctrl-C in ten during preparation used to be lost. It is kept and raised."""
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + GC_CALLBACK_INTERRUPT
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=environ())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["interrupted", "True"], (proc.stdout, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

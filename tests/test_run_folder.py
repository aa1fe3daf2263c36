"""Run folders never lose work: one writer, read-only loading, verified checkpoints, one-line errors.
Each case runs the user's command (the experiment script, ``python -m cnn_jax.inference``): as a process, or, where
it stops before training with a one-line error, as ``main(argv)`` in the test process (:func:`_main`)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import inproc
import jax
import numpy as np
import pytest
from hooks import hooked

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "fashion_mnist.py"
ARGS = ["--epochs", "2", "--limit", "2000", "--val-size", "500", "--steps-per-chunk", "1", "--no-progress"]
SPE = 2000 // 128  # steps per epoch
TIMING = ("seconds", "images_per_s", "elapsed")


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNN_JAX_")}
    return {**env, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *ARGS, "--workdir", str(workdir), *extra]


def _run(data_dir: Path, workdir: Path, *extra: str, code: int | None = 0) -> subprocess.CompletedProcess:
    out = subprocess.run(_cmd(workdir, *extra), env=_env(data_dir), capture_output=True, text=True, timeout=600)
    if code is not None:
        assert out.returncode == code, f"exit {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _main(capsys, monkeypatch, data_dir: Path, workdir: Path, *extra: str, code: int) -> subprocess.CompletedProcess:
    """The experiment script's command as :func:`_run` gives it, run as ``main(argv)`` in this process (for the
    refusals that come before any training): its exit status must be ``code``."""
    from cnn_jax.cli import main

    argv = _cmd(workdir, *extra)[2:]
    out = inproc.command(lambda a: main("fashion_mnist", a), argv, capsys, monkeypatch, program=str(SCRIPT),
                         env={"TFDS_DATA_DIR": str(data_dir)})
    assert out.returncode == code, f"exit {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _one_line_error(out: subprocess.CompletedProcess, text: str) -> None:
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ") or ": error: " in ln]
    assert len(lines) == 1 and text in lines[0], out.stderr[-3000:]


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _checksums(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` (folders as "dir"), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if p.name not in skip}


def _params(run_dir: Path, which="latest"):
    from cnn_jax import load

    lm = load(run_dir, which)
    return lm.step, jax.tree.leaves(lm.variables)


def _damage(step_dir: Path, how: str = "truncate") -> None:
    """Damage a checkpoint's array data: truncate it, or flip 4 KB of its bytes."""
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                   key=lambda p: -p.stat().st_size)
    data = bytearray(files[0].read_bytes())
    if how == "truncate":
        files[0].write_bytes(bytes(data[: len(data) // 2]))
    else:
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
        files[0].write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(fashion_tfds_dir, tmp_path_factory) -> Path:
    """An uninterrupted run keeping 4 checkpoints: the baseline every other run must reproduce."""
    workdir = tmp_path_factory.mktemp("ref")
    _run(fashion_tfds_dir, workdir, "--keep", "4", "--run", "ref")
    return workdir / "ref"


def _copy(reference: Path, tmp_path: Path) -> Path:
    shutil.copytree(reference, tmp_path / "ref")
    (tmp_path / "ref" / ".lock").unlink(missing_ok=True)
    return tmp_path / "ref"


# ------------------------------------------------------------------------ 1. reading never writes
def test_loading_never_writes_and_works_on_a_read_only_copy(fashion_tfds_dir, reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    steps = sorted(p.name for p in (run_dir / "ckpt").iterdir())
    assert len(steps) == 2  # 2 epochs, --keep 4: nothing pruned by training
    before = _snapshot(run_dir)
    out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(run_dir), "--which", "latest"],
                         env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    _params(run_dir)
    _params(run_dir, "best")
    assert _snapshot(run_dir) == before  # no checkpoint pruned, no file touched

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(run_dir), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root): read-only copy not tested")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        step, leaves = _params(ro)
        assert step == 2 * SPE and all(np.isfinite(a).all() for a in leaves)
        out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(ro)], env=_env(fashion_tfds_dir),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(ro)])


# ---------------------------------------------------------------------- 2. one writer per folder
def test_a_second_trainer_is_refused_and_a_dead_holder_is_taken_over(fashion_tfds_dir, tmp_path):
    long = ["--run", "r", "--epochs", "40"]
    slow = hooked(_env(fashion_tfds_dir), step_seconds=0.5)  # >= 300 s on any machine; stopped below
    first = subprocess.Popen(_cmd(tmp_path, *long), env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lock = tmp_path / "r" / ".lock"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
    second = _run(fashion_tfds_dir, tmp_path, *long, code=None)
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 1
    _one_line_error(second, f"is being trained by another process (host {os.uname().nodename}, PID {first.pid})")
    assert "--new-run" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 143
    epochs = [h["epoch"] for h in _history(tmp_path / "r")]
    assert epochs == list(range(1, len(epochs) + 1))  # each epoch written once, by one writer
    assert lock.read_text() == ""  # released

    # what a SIGKILLed trainer leaves: a lock file naming it, no lock held
    from cnn_jax.files import claim_folder

    claim_folder(tmp_path / "d", "run")  # a new run's first file
    (tmp_path / "d" / ".lock").write_text("host elsewhere, PID 999999\n")
    out = _run(fashion_tfds_dir, tmp_path, "--run", "d")
    assert "took over the lock of a process that is gone (host elsewhere, PID 999999)" in out.stdout


# ------------------------------------------------------------ 3. identity lives in the checkpoints
def test_missing_config_json_still_refuses_another_config(fashion_tfds_dir, reference, tmp_path, capsys, monkeypatch):
    run_dir = _copy(reference, tmp_path)
    (run_dir / "config.json").unlink()
    before = _snapshot(run_dir)
    out = _main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", "--batch-size", "64",
                "--seed", "7", code=1)
    assert "train.batch_size: saved 128, now 64" in out.stderr and "train.seed: saved 0, now 7" in out.stderr
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("files", [
    {"config.json": '{"mine": true}', "notes.txt": "keep me"},  # a user's config.json beside their files
    {"results.json": "my own results"}, {"metrics.jsonl": "{}\n"}, {"figures/mine.png": "png"},
    {"ckpt/1/data": "mine"}, {".lock": ""}], ids=["config", "results", "metrics", "figures", "ckpt", "lock"])
def test_a_folder_that_is_not_a_run_is_never_written_into(fashion_tfds_dir, tmp_path, files, capsys, monkeypatch):
    """Ours is decided by the marker only we write, not by file names."""
    victim = tmp_path / "lab"
    for name, text in files.items():
        (victim / name).parent.mkdir(parents=True, exist_ok=True)
        (victim / name).write_text(text)
    before = _checksums(victim)
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, code=1),
                    "holds files that cnn_jax did not write")
    assert _checksums(victim) == before


def test_a_run_of_an_older_version_is_recognised_by_its_checkpoint_digests(fashion_tfds_dir, reference, tmp_path):
    from cnn_jax.checkpoint import DIGEST, _file_digest
    from cnn_jax.files import MARKER, owner

    run_dir = _copy(reference, tmp_path)
    (run_dir / MARKER).unlink()  # runs from before the marker: their checkpoints carry file digests
    for step in (run_dir / "ckpt").iterdir():
        (step / DIGEST).write_text(json.dumps(_file_digest(step)))
    out = _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4")
    assert "is already complete" in out.stdout and owner(run_dir) == "run"


# -------------------------------------------------------------------------- 4, 5, 8. verified checkpoints
def test_damaged_latest_falls_back_and_training_replaces_it(fashion_tfds_dir, reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    _damage(run_dir / "ckpt" / str(2 * SPE))
    (run_dir / "results.json").unlink()
    out = _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4")
    assert "Traceback" not in out.stderr and "is damaged" in out.stderr
    assert f"resuming {run_dir} from checkpoint step {SPE}" in out.stdout
    step, leaves = _params(run_dir)  # the final model was saved again
    ref_step, ref_leaves = _params(reference)
    assert step == ref_step == 2 * SPE
    assert all(np.array_equal(a, b) for a, b in zip(leaves, ref_leaves, strict=True))
    assert _history(run_dir) == _history(reference)


@pytest.mark.parametrize("which", ["latest", "best"])
def test_flipped_bytes_are_detected_and_load_falls_back(reference, tmp_path, which):
    from cnn_jax import load

    run_dir = _copy(reference, tmp_path)
    target = load(run_dir, which).step
    _damage(run_dir / "ckpt" / str(target), how="flip")
    # caught by the digest, or earlier, when the flipped bytes of a compressed chunk no longer decode (which one
    # depends on where the chunk lies; the digest alone is tested with decodable data in test_checkpoint.py)
    with pytest.warns(UserWarning, match=r"is damaged "):
        lm = load(run_dir, which)
    assert lm.step != target and lm.step in (SPE, 2 * SPE)
    assert np.isfinite(lm.logits(np.zeros((4, 28, 28, 1), np.uint8))).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        lm.predict(np.full((2, 28, 28, 1), np.nan, np.float32))
    assert lm.predict(np.zeros((0, 28, 28, 1), np.uint8)).shape == (0,)


def test_the_checkpoint_saved_just_before_a_sigkill_is_verified(fashion_tfds_dir, tmp_path):
    """A checkpoint's digest is written with it: the newest one at a SIGKILL is verified too."""
    env = hooked(_env(fashion_tfds_dir), signal_at=f"{SPE + 3}:SIGKILL", step_seconds=0.2)
    out = subprocess.run(_cmd(tmp_path, "--run", "k"), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    run_dir = tmp_path / "k"
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == [str(SPE)]  # the only one, never closed
    from cnn_jax.checkpoint import RunCheckpointer

    ck = RunCheckpointer(run_dir / "ckpt", read_only=True)
    assert set(ck.read_meta(SPE)["digest"]) == {"state", "meta"}  # its digest was written with it
    ck.close()
    _damage(run_dir / "ckpt" / str(SPE), how="flip")
    before = _checksums(run_dir, skip=(".lock",))
    out = _run(fashion_tfds_dir, tmp_path, "--run", "k", code=1)
    _one_line_error(out, "no usable checkpoint")  # its digest differs, or its compressed bytes no longer decode
    assert _checksums(run_dir, skip=(".lock",)) == before  # refused, not resumed, nothing rewritten


def test_unreadable_checkpoint_records_without_config_json_are_one_line(fashion_tfds_dir, reference, tmp_path,
                                                                       capsys, monkeypatch):
    run_dir = _copy(reference, tmp_path)
    (run_dir / "config.json").unlink()
    for meta in (run_dir / "ckpt").glob("*/meta/metadata"):
        meta.write_text('{"truncated": ')
    before = _checksums(run_dir)
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", code=1),
                    "the config of its checkpoints cannot be read")
    assert _checksums(run_dir) == before


def test_a_finished_run_without_its_checkpoints_is_never_trained_into(fashion_tfds_dir, reference, tmp_path,
                                                                      capsys, monkeypatch):
    """``ckpt/`` deleted to save space, the results kept: the same command reports the run finished, another
    config is refused with its differences, ``--new-run`` starts beside it; nothing of the run is rewritten."""
    run_dir = _copy(reference, tmp_path)
    shutil.rmtree(run_dir / "ckpt")
    before = _checksums(run_dir, skip=(".lock",))
    out = _main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", code=0)
    assert f"{run_dir} is already complete (its checkpoints were removed" in out.stdout, out.stdout
    out = _main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", "--lr", "0.01", code=1)
    assert "holds the results of a finished run with another config" in out.stderr
    assert "train.lr: saved 0.001, now 0.01" in out.stderr
    assert _checksums(run_dir, skip=(".lock",)) == before
    (run_dir / "config.json").unlink()  # results without the config they came from: refused, not replaced
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", code=1),
                    "config.json cannot be read")
    out = _main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", "--epochs", "1",
                "--new-run", code=0)
    assert f"--new-run: {run_dir} holds a run; starting a new run in {tmp_path / 'ref-2'}" in out.stdout
    assert (tmp_path / "ref-2" / "results.json").is_file()
    assert _checksums(run_dir, skip=(".lock",)) == {k: v for k, v in before.items() if k != "config.json"}


def test_evaluate_with_a_data_dir_that_is_a_file_is_one_line(reference, tmp_path, capsys, monkeypatch):
    from cnn_jax.inference import main

    (tmp_path / "notes.txt").write_text("mine")
    out = inproc.command(main, [str(reference), "--data-dir", str(tmp_path / "notes.txt")], capsys, monkeypatch,
                         program="python -m cnn_jax.inference")
    assert out.returncode == 1
    _one_line_error(out, f"--data-dir {tmp_path / 'notes.txt'}: not a folder (it is a file)")


# ------------------------------------------------------------------- the same command, the same numbers
def _results(run_dir: Path) -> dict:
    """results.json apart from timings, host and paths."""
    return {k: v for k, v in json.loads((run_dir / "results.json").read_text()).items()
            if k not in ("wall_seconds", "train_seconds", "images_per_s", "host", "run_dir", "figures")}


def test_epoch_metrics_do_not_depend_on_chunking(fashion_tfds_dir, reference, tmp_path):
    _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4", "--steps-per-chunk", "7")  # 7, 7, 1 per epoch
    assert _history(tmp_path / "ref") == _history(reference)  # train_loss to the last digit
    assert _results(tmp_path / "ref") == _results(reference)


# --------------------------------------------------------------------------- 10. one line, not a traceback
def test_errors_are_one_line(fashion_tfds_dir, tmp_path, capsys, monkeypatch):
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--batch-size", "5000", code=1),
                    "--batch-size 5000")
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--val-size", "60000", code=1),
                    "--val-size 60000")
    out = _run(fashion_tfds_dir, tmp_path, "--optimizer", "sgd", "--lr", "1e30", "--momentum", "0", "--run", "nan",
               code=3)
    _one_line_error(out, "no checkpoint had been saved yet, so nothing was kept. Lower --lr or add --clip and run "
                         "again")
    assert not list(tmp_path.glob("lab*"))
    assert not (tmp_path / "nan").exists()  # the diverged new run left no folder: the same command starts afresh


def test_flags_checked_before_anything_is_written(fashion_tfds_dir, tmp_path, capsys, monkeypatch):
    out = _main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--conv-dropout", "0.1", code=2)  # lab_cnn: none
    _one_line_error(out, "--conv-dropout: model 'lab_cnn' has no conv_dropout parameter")
    _one_line_error(_main(capsys, monkeypatch, fashion_tfds_dir, tmp_path, "--seed", str(2**40), code=2),
                    "--seed must be in [0, 4294967296)")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_results_and_config_are_written_again(fashion_tfds_dir, reference, tmp_path):
    run_dir = _copy(reference, tmp_path)
    for name in ("results.json", "config.json"):
        (run_dir / name).write_text('{"truncated": ')
    _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4")
    results, ref = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert results["test_accuracy"] == ref["test_accuracy"]
    assert json.loads((run_dir / "config.json").read_text()) == json.loads((reference / "config.json").read_text())


def test_damaged_prepared_data_is_one_line(fashion_tfds_dir, tmp_path, capsys, monkeypatch):
    data = tmp_path / "tfds"
    shutil.copytree(fashion_tfds_dir, data)
    shard = sorted(data.rglob("*train.array_record-*"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    _one_line_error(_main(capsys, monkeypatch, data, tmp_path / "runs", code=1), "the prepared dataset is damaged")


# the disk fills while Orbax writes in the background: the pre-check is told there is room (as when another
# program fills the disk after it), so Orbax's writer threads meet the full disk
_BACKGROUND = ("import sys, cnn_jax.checkpoint as c; c._free_bytes = lambda d: 2**50; from cnn_jax.cli import main; "
               "main('fashion_mnist', sys.argv[1:])")


@pytest.mark.parametrize("where", ["before the save", "during the background write"])
def test_disk_full_keeps_the_saved_checkpoints(fashion_tfds_dir, reference, tmp_path, where):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): disk-full not tested")
    try:
        shutil.copytree(reference, disk / "ref", ignore=shutil.ignore_patterns("figures"))
        shutil.rmtree(disk / "ref" / "ckpt" / str(2 * SPE))
        (disk / "ref" / "results.json").unlink()
        fs = os.statvfs(disk)  # the free blocks, not 8 MiB less the files' sizes: each small file takes a block
        (disk / "fill").write_bytes(b"\0" * (fs.f_bavail * fs.f_frsize - 64 * 1024))
        before = _checksums(disk / "ref" / "ckpt")
        cmd = _cmd(disk, "--run", "ref", "--keep", "4")
        if where != "before the save":
            cmd[1:2] = ["-c", _BACKGROUND]
        out = subprocess.run(cmd, env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=600)
        assert out.returncode == 1, out.stderr[-3000:]
        _one_line_error(out, "no space left")
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]  # no logged tracebacks either
        assert _checksums(disk / "ref" / "ckpt") == before  # the earlier checkpoint intact, no temporary left
    finally:
        subprocess.run(["umount", str(disk)])


# ---------------------------------------------------------------------------------- fault injection
#: SIGKILLs at chosen steps (after the chunk that reaches the step), each on a relaunch of the same command: before
#: any checkpoint, one step after the first epoch's save (while Orbax may still be writing it), mid-epoch after it,
#: and on the last step before the final save.
KILL_STEPS = (3, SPE + 1, SPE + 5, 2 * SPE - 1)


def _assert_resumed_equals_reference(run_dir: Path, reference: Path) -> None:
    """A run killed and resumed ends as the uninterrupted one: parameters, history, results and TensorBoard."""
    step, leaves = _params(run_dir)
    ref_step, ref_leaves = _params(reference)
    assert step == ref_step and all(np.array_equal(a, b) for a, b in zip(leaves, ref_leaves, strict=True))
    assert _history(run_dir) == _history(reference)
    assert _results(run_dir) == _results(reference)  # every figure, timings, host and paths apart
    leftovers = [p.name for p in run_dir.rglob("*") if "tmp" in p.name and "tfevents" not in p.name]
    assert leftovers == []  # nothing a later run would misread
    # TensorBoard shows each epoch once, as in metrics.jsonl, however often the run was killed and resumed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    history = _history(run_dir)
    assert [e.step for e in events.Scalars("accuracy/val")] == [h["step"] for h in history] == [SPE, 2 * SPE]
    assert [e.value for e in events.Scalars("accuracy/val")] == pytest.approx([h["val_accuracy"] for h in history])
    from cnn_jax import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in (run_dir / "ckpt").iterdir():  # every kept checkpoint verifies
            assert load(run_dir, int(s.name)).step == int(s.name)
    assert not [w for w in caught if "damaged" in str(w.message)]


def test_sigkill_at_chosen_steps_then_resume_equals_the_uninterrupted_run(fashion_tfds_dir, reference, tmp_path):
    for step in KILL_STEPS:
        env = hooked(_env(fashion_tfds_dir), signal_at=f"{step}:SIGKILL")
        out = subprocess.run(_cmd(tmp_path, "--run", "ref", "--keep", "4"), env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == -signal.SIGKILL, (step, out.stderr[-3000:])
    _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4")
    _assert_resumed_equals_reference(tmp_path / "ref", reference)


@pytest.mark.soak  # `make soak`: SIGKILLs at moments no step chooses (inside a save, an evaluation, a start-up)
def test_sigkill_at_ten_random_moments_then_resume_equals_the_uninterrupted_run(fashion_tfds_dir, reference,
                                                                             tmp_path):
    rng = random.Random(0)
    kills = 0
    env = hooked(_env(fashion_tfds_dir), step_seconds=0.1)  # >= 3 s of training on any machine
    while kills < 10:
        proc = subprocess.Popen(_cmd(tmp_path, "--run", "ref", "--keep", "4"), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(2.0, 10.0))
        if proc.poll() is not None:  # finished before this moment: start the count again from a fresh run
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            shutil.rmtree(tmp_path / "ref")
            continue
        proc.kill()
        proc.wait()
        kills += 1
    _run(fashion_tfds_dir, tmp_path, "--run", "ref", "--keep", "4")
    _assert_resumed_equals_reference(tmp_path / "ref", reference)

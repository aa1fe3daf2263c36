"""Checkpointing and resume: interrupted runs end bit-identical to uninterrupted ones; retention; refusal
of another config; damaged checkpoints; device-count changes; load + predict."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hooks import hooked
from synthetic import make_data, train

from cnn_jax import get_model
from cnn_jax.checkpoint import CheckpointError, RunCheckpointer
from cnn_jax.config import Config, RunConfig, TrainConfig, differences
from cnn_jax.signals import StopSignal
from cnn_jax.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "fashion_mnist.py"
# Small and quick: 2,000 train images, 15 steps per epoch in chunks of 1 (a stop can land anywhere), 3 epochs.
ARGS = ["--epochs", "3", "--limit", "2000", "--val-size", "500", "--steps-per-chunk", "1", "--no-progress"]
TIMING = ("seconds", "images_per_s", "elapsed")


def _env(data_dir: Path, devices: int | None = None) -> dict[str, str]:
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _train(data_dir, workdir, run, *extra, check=True, devices=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *ARGS, "--workdir", str(workdir), "--run", run, *extra]
    out = subprocess.run(cmd, env=_env(data_dir, devices), capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}")
    return out


SPE = 2000 // 128  # steps per epoch


def _interrupt(data_dir, workdir, run, sig, at_step, *extra, command=(str(SCRIPT),)) -> subprocess.CompletedProcess:
    """Run ``python <command> ARGS ...`` until the chunk that reaches global step ``at_step`` is done, where the run
    gets ``sig`` (:func:`hooks.hooked`: the same moment on any machine, however loaded)."""
    cmd = [sys.executable, *command, *ARGS, "--workdir", str(workdir), "--run", run, *extra]
    env = hooked(_env(data_dir), signal_at=f"{at_step}:{sig.name}")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _params(run_dir: Path):
    from cnn_jax.inference import load

    lm = load(run_dir, "latest")
    return lm.step, jax.tree.leaves(lm.variables)


@pytest.fixture(scope="module")
def reference(fashion_tfds_dir, tmp_path_factory):
    """An uninterrupted run, the baseline every interrupted one must reproduce."""
    workdir = tmp_path_factory.mktemp("runs")
    _train(fashion_tfds_dir, workdir, "ref")
    return workdir / "ref"


def _assert_same_run(a: Path, b: Path) -> None:
    (step_a, pa), (step_b, pb) = _params(a), _params(b)
    assert step_a == step_b == 3 * SPE
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True)), "parameters differ"
    assert _history(a) == _history(b)
    assert len(_history(b)) == 3
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra["test_accuracy"] == rb["test_accuracy"]


def test_sigterm_mid_epoch_then_resume_is_bit_identical(fashion_tfds_dir, reference, tmp_path):
    out = _interrupt(fashion_tfds_dir, tmp_path, "run", signal.SIGTERM, SPE + 5)  # mid-epoch 2
    assert out.returncode == 143, out.stderr[-2000:]
    assert "SIGTERM: saved checkpoint at step" in out.stdout and "resume with the same command" in out.stdout
    assert not (tmp_path / "run" / "results.json").exists()
    resumed = _train(fashion_tfds_dir, tmp_path, "run")
    assert "resuming" in resumed.stdout and "mid-epoch" in resumed.stdout
    _assert_same_run(reference, tmp_path / "run")


def test_the_commands_resume_hint_resumes_the_run_bit_identically(fashion_tfds_dir, reference, tmp_path):
    """``cnn-jax train`` (here ``python -m cnn_jax train``) stopped by SIGTERM names the command that resumes it,
    and that command, run as printed, finishes the run as if it had never stopped."""
    import shlex

    out = _interrupt(fashion_tfds_dir, tmp_path, "run", signal.SIGTERM, SPE + 5,
                     command=("-m", "cnn_jax", "train", "--dataset", "fashion_mnist"))
    assert out.returncode == 143, out.stderr[-2000:]
    hint = shlex.split(out.stdout.split("resume with the same command: ")[1].splitlines()[0])
    assert hint[:6] == ["python", "-m", "cnn_jax", "train", "--dataset", "fashion_mnist"], hint
    resumed = subprocess.run([sys.executable, *hint[1:]], env=_env(fashion_tfds_dir), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and "mid-epoch" in resumed.stdout, resumed.stderr[-2000:]
    _assert_same_run(reference, tmp_path / "run")


def test_sigkill_between_saves_then_resume_is_bit_identical(fashion_tfds_dir, reference, tmp_path):
    out = _interrupt(fashion_tfds_dir, tmp_path, "run", signal.SIGKILL, 2 * SPE + 2)  # after 2 saves
    assert out.returncode == -signal.SIGKILL
    resumed = _train(fashion_tfds_dir, tmp_path, "run")
    assert "resuming" in resumed.stdout
    _assert_same_run(reference, tmp_path / "run")


def test_other_config_is_refused_and_nothing_is_overwritten(fashion_tfds_dir, reference, tmp_path):
    run_dir = tmp_path / "ref"
    import shutil

    shutil.copytree(reference, run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    out = _train(fashion_tfds_dir, tmp_path, "ref", "--lr", "0.002", "--model", "bn_cnn", check=False)
    assert out.returncode != 0
    assert "train.lr: saved 0.001, now 0.002" in out.stderr
    assert "model.name: saved 'lab_cnn', now 'bn_cnn'" in out.stderr
    assert "--new-run" in out.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    # how a run is computed (devices, chunks, where the data are) is not what it is
    saved = Config().to_dict()
    assert differences(saved, Config(run=RunConfig(steps_per_chunk=9, parallelism="sharded"))) == []
    assert differences(saved, Config().override({"data.data_dir": "/elsewhere"})) == []
    assert differences(saved, Config().override({"train.seed": 1})) == ["train.seed: saved 0, now 1"]


def test_finished_run_is_reported_not_retrained(fashion_tfds_dir, reference, tmp_path):
    import shutil

    shutil.copytree(reference, tmp_path / "ref")
    before = (tmp_path / "ref" / "results.json").read_bytes()
    out = _train(fashion_tfds_dir, tmp_path, "ref")
    assert "already complete (3 epochs)" in out.stdout
    assert (tmp_path / "ref" / "results.json").read_bytes() == before
    again = _train(fashion_tfds_dir, tmp_path, "ref", "--new-run")
    assert "starting a new run in" in again.stdout and (tmp_path / "ref-2" / "results.json").is_file()


def test_new_run_starts_beside_and_resume_flag_needs_checkpoints(fashion_tfds_dir, tmp_path):
    out = _train(fashion_tfds_dir, tmp_path, "fresh", "--resume", check=False)
    assert out.returncode == 2 and "--resume: no checkpoints" in out.stderr
    assert not (tmp_path / "fresh").exists()


def test_load_and_predict_reproduce_saved_accuracy(fashion_tfds_dir, reference):
    from cnn_jax import load
    from cnn_jax.data import load as load_data

    results = json.loads((reference / "results.json").read_text())
    test = load_data("fashion_mnist", data_dir=str(fashion_tfds_dir), val_size=0).test
    images, labels = test.images[:2000], test.labels[:2000]
    lm = load(reference, "latest")
    pred = lm.predict(images)
    assert pred.shape == (2000,)
    assert float(np.mean(pred == labels)) == pytest.approx(results["test_accuracy"], abs=1e-6)
    np.testing.assert_array_equal(lm.predict(images[:50].astype(np.float32) / 255.0), pred[:50])  # float input
    assert int(lm.predict(images[0, ..., 0])) == pred[0]  # one (H, W) image
    assert lm.logits(images[:3]).shape == (3, 10)
    with pytest.raises(ValueError, match="images must be"):
        lm.predict(np.zeros((2, 32, 32, 1), np.uint8))
    best = load(reference)  # best by validation accuracy
    assert best.meta["metrics"]["val_accuracy"] == max(h["val_accuracy"] for h in _history(reference))


def test_a_dropped_loaded_model_is_freed_with_its_compiled_function(reference):
    """A notebook that loads runs in a loop: each ``LoadedModel`` owns its compiled function, so nothing kept at
    module level holds a model that was dropped; of five loads in a loop, only the last is alive."""
    import gc
    import weakref

    from cnn_jax import load

    refs = []
    for _ in range(5):
        lm = load(reference, "latest")
        assert lm.predict(np.zeros((2, 28, 28), np.uint8)).shape == (2,)
        refs.append(weakref.ref(lm.model))
    gc.collect()
    assert [r() is not None for r in refs] == [False] * 4 + [True]


def test_evaluate_command(fashion_tfds_dir, reference):
    out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(reference), "--which", "latest"],
                         env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["num_test"] == 10000 and 0.6 < report["test_accuracy"] <= 1
    bad = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(reference.parent / "nope")],
                         env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "not a cnn_jax run folder" in bad.stderr


def test_evaluate_damaged_latest_says_it_in_one_line(fashion_tfds_dir, reference, tmp_path):
    """A truncated array file in the newest checkpoint: one warning line, the previous checkpoint evaluated, none
    of the leftovers of the aborted reads (asyncio's unretrieved task errors, TensorStore's callbacks into the
    closed event loop) on the terminal, nothing deleted from a read-only evaluation."""
    run_dir = tmp_path / "ref"
    shutil.copytree(reference, run_dir)
    latest = run_dir / "ckpt" / str(3 * SPE)
    data = max((p for p in (latest / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    out = subprocess.run([sys.executable, "-m", "cnn_jax.inference", str(run_dir), "--which", "latest"],
                         env=_env(fashion_tfds_dir), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("is damaged") == 1, out.stderr[-3000:]
    for noise in ("Traceback", "Event loop is closed", "never retrieved"):
        assert noise not in out.stderr, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2 * SPE
    assert latest.is_dir()


_UNRETRIEVED = """
import asyncio, gc
from cnn_jax.checkpoint import quiet_disk_full

async def fail(message):
    raise ValueError(message)

async def main():
    with quiet_disk_full():
        tasks = [asyncio.ensure_future(fail(m)) for m in (
            "RESOURCE_EXHAUSTED: Error writing local file: No space left on device", "an unrelated failure")]
        await asyncio.sleep(0.01)
    tasks.clear()  # dropped unawaited, as Orbax's other writer tasks are when one meets the full disk
    gc.collect()

asyncio.run(main())
"""


def test_unretrieved_disk_full_writes_are_dropped_and_other_task_errors_kept():
    """Orbax's background writer tasks that meet a full disk are dropped unawaited once the first one's error is
    reported: asyncio's "Task exception was never retrieved" tracebacks of them are not printed (they may come
    after the run's one-line error); those of any other failure still are."""
    out = subprocess.run([sys.executable, "-c", _UNRETRIEVED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("never retrieved") == 1, out.stderr[-3000:]
    assert "an unrelated failure" in out.stderr and "No space left" not in out.stderr, out.stderr[-3000:]


# ----------------------------------------------------------------------------------- RunCheckpointer
def _small_state():
    trainer = Trainer(get_model("lab_cnn", widths=(4, 8), dense=16), Config(train=TrainConfig(batch_size=8)), 64,
                      (28, 28, 1))
    return trainer, trainer.host_state(trainer.init_state())


def test_orbax_best_n_forgets_metrics_on_reopen(tmp_path):
    """Why retention is ours: on the pinned Orbax, its own "latest N + best" preservation policies forget the
    metrics of the checkpoints saved before the manager was reopened (a resumed run) and prune the best one."""
    _, state = _small_state()
    cm = ocp.checkpoint_managers
    policy = cm.AnyPreservationPolicy([cm.LatestN(n=1), cm.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                                                                  keep_checkpoints_without_metrics=False)])
    opts = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=False)
    ours = RunCheckpointer(tmp_path / "ours", keep=1, async_save=False)
    with ocp.CheckpointManager(tmp_path / "orbax", options=opts) as m:
        for step, acc in [(1, 0.9), (2, 0.5)]:
            m.save(step, args=ocp.args.PyTreeSave(state), metrics={"val_accuracy": acc})
            ours.save(step, state, {}, {"val_accuracy": acc})
        assert m.all_steps() == [1, 2]
    ours.close()
    ours = RunCheckpointer(tmp_path / "ours", keep=1, async_save=False)  # the run resumes
    with ocp.CheckpointManager(tmp_path / "orbax", options=opts) as m:
        for step, acc in [(3, 0.6), (4, 0.7)]:
            m.save(step, args=ocp.args.PyTreeSave(state), metrics={"val_accuracy": acc})
            ours.save(step, state, {}, {"val_accuracy": acc})
        orbax_kept = m.all_steps()
    ours.wait()
    assert 1 not in orbax_kept  # Orbax dropped the best (0.9)
    assert ours.steps() == [1, 4] and ours.best_step() == 1  # ours keeps it, and the latest
    ours.close()


def test_retention_keeps_latest_n_and_best(tmp_path):
    trainer, state = _small_state()
    ck = RunCheckpointer(tmp_path / "ck", keep=2)
    for step, acc in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, None)]:
        ck.save(step, state, {"step": step}, {"val_accuracy": acc} if acc is not None else None)
    ck.wait()
    assert ck.steps() == [20, 40, 50]  # best (0.9 at 20) + the latest two
    assert ck.best_step() == 20
    restored = ck.restore(state)
    assert restored.step == 50 and restored.meta["step"] == 50
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state),
                                                    strict=True))
    ck.close()


def test_damaged_latest_falls_back_with_a_warning(tmp_path):
    trainer, state = _small_state()
    ck = RunCheckpointer(tmp_path / "ck", keep=3)
    for step in (1, 2, 3):
        ck.save(step, state, {"step": step})
    ck.wait()
    for f in (tmp_path / "ck" / "3" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=r"ck/3 is damaged .* using the newest good one"):
        assert ck.restore(state).step == 2
    for step in (1, 2):  # every one damaged: a clear error, not a traceback from the depths
        for f in (tmp_path / "ck" / str(step) / "state").rglob("*"):
            if f.is_file():
                f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            ck.restore(state)
    ck.close()


def test_content_that_decodes_but_differs_from_its_digest_is_refused(tmp_path):
    """Data that reads back fine but is not what was saved (two steps' arrays swapped, an edited meta) fails the
    digest written with the checkpoint; nothing else would notice."""
    trainer, state = _small_state()
    other = jax.tree.map(lambda a: a + 1 if np.issubdtype(a.dtype, np.floating) else a, state)
    ck = RunCheckpointer(tmp_path / "ck", keep=3)
    for step, s in ((1, state), (2, other), (3, state)):
        ck.save(step, s, {"step": step})
    ck.wait()
    ck.close()
    a, b = tmp_path / "ck" / "2" / "state", tmp_path / "ck" / "3" / "state"
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    meta = next(p for p in (tmp_path / "ck" / "1" / "meta").iterdir() if p.name != "commit_success.txt")
    meta.write_text(meta.read_text().replace('"step": 1', '"step": 7'))
    ck = RunCheckpointer(tmp_path / "ck", read_only=True)
    for step, what in ((3, "state differs"), (2, "state differs"), (1, "meta differs")):
        with pytest.warns(UserWarning, match=rf"ck/{step} is damaged .*its {what} from when it was saved"):
            with pytest.raises(CheckpointError):
                ck.restore(state, step, exact=True)
    ck.close()


def test_stop_signal_sets_a_flag():
    with StopSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_restore_onto_another_device_count(tmp_path):
    """Saved from 8 (fake CPU) devices, resumed on 1, and the reverse: the same parameters as one device."""
    data = make_data(512, seed=0)
    model = get_model("lab_cnn", widths=(4, 8), dense=16, dropout=0.0)

    def trainer(parallelism):
        return Trainer(model, Config(train=TrainConfig(batch_size=64, epochs=2), run=RunConfig(
            parallelism=parallelism, eval_batch_size=64)), len(data[0]), (28, 28, 1))

    ref = trainer("none")
    expected = ref.host_state(train(ref, data, 2))
    for first, second in (("sharded", "none"), ("none", "sharded"), ("pmap", "none"), ("none", "pmap")):
        a = trainer(first)
        ck = RunCheckpointer(tmp_path / f"{first}-{second}")
        ck.save(8, a.host_state(train(a, data, 1)), {})
        ck.wait()
        b = trainer(second)
        got = b.host_state(train(b, data, 1, b.place_state(ck.restore(b.abstract_state()).state)))
        ck.close()
        assert int(got.step) == int(expected.step) == 16
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), got.params,
                     expected.params)

"""One compiled path on 1..N devices and hosts: the mesh (and pmap) equal one device, in-process on 8 fake CPU
devices; the experiment script on 2 processes (``jax.distributed`` on localhost) and on 8 devices, as users run it."""

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from hooks import hooked
from synthetic import make_data

from cnn_jax.config import Config, RunConfig, TrainConfig
from cnn_jax.models import BNCNN, LabCNN
from cnn_jax.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "fashion_mnist.py"
TRAIN, VAL = make_data(512, seed=0), make_data(100, seed=1)  # eval: 2 batches of 64, the last partial
# micro-batches off: under pmap they would slice each device's batch (see the "auto" test below for the mesh)
CFG = TrainConfig(epochs=1, batch_size=64, lr=3e-3, label_smoothing=0.1, clip=1.0, microbatch=None)
R = nnx.Rngs
# The BN-CNN's init (seed 2) has no Dense_0 weight whose first gradient is ~1e-9: at seed 0, 2 of its 12,544 weights
# have one, and Adam's first step (lr * g / (|g| + 1e-8)) turns the summation order's rounding into 5.8e-4 between
# one device and the mesh (measured), 25x the tolerance below, on a loss equal to 1e-5.
# Built when a test first asks (`_model`), not when pytest collects this file. lab_dropout: no pmap (per-device keys).
MODELS = {
    "lab_dropout": (lambda: LabCNN(widths=(8, 16), dense=32, dropout=0.5, rngs=R(0)), ("sharded",)),
    "lab": (lambda: LabCNN(widths=(8, 16), dense=32, dropout=0.0, rngs=R(0)), ("sharded", "pmap")),
    "bn": (lambda: BNCNN(widths=(8, 16), dense=16, dropout=0.0, conv_dropout=0.0, rngs=R(2)), ("sharded", "pmap")),
}


@functools.cache
def _model(name: str) -> nnx.Module:
    return MODELS[name][0]()


def _run(model, parallelism: str, steps: int = 6, cfg: TrainConfig = CFG):
    trainer = Trainer(model, Config(train=cfg, run=RunConfig(parallelism=parallelism, eval_batch_size=64)),
                      len(TRAIN[0]), TRAIN[0].shape[1:])
    assert len(trainer.devices) == (1 if parallelism == "none" else 8)
    init = trainer.host_state(trainer.init_state())
    state, _ = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=steps)
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    host = trainer.host_state(state)
    assert int(host.step) == steps
    return init, {"params": host.params, "batch_stats": host.batch_stats, "loss": ev["loss"],
                  "confusion": ev["confusion"]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mesh_and_pmap_match_one_device(name):
    assert jax.device_count() == 8  # tests/conftest.py
    model, strategies = _model(name), MODELS[name][1]
    init, ref = _run(model, "none")
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref["params"], init.params)
    assert min(jax.tree.leaves(moved)) > 1e-6  # training moved every parameter: not two initial states compared
    for strategy in strategies:
        _, got = _run(model, strategy)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=f"{strategy} {jax.tree_util.keystr(path)}")


def test_auto_microbatch_on_the_mesh_matches_one_device():
    """The default micro-batches (``"auto"``: 32-image slices of the global batch for a batch-norm model on CPU)
    give the same training on a mesh of 8 devices as on one."""
    model = _model("bn")
    auto = CFG.replace(microbatch="auto")
    trainer = Trainer(model, Config(train=auto), len(TRAIN[0]), TRAIN[0].shape[1:])
    assert trainer.cfg.microbatch == 32
    _, ref = _run(model, "none", cfg=auto)
    _, got = _run(model, "sharded", cfg=auto)
    _, full = _run(model, "none")
    assert not np.allclose(full["batch_stats"]["BatchNorm_0"]["mean"], ref["batch_stats"]["BatchNorm_0"]["mean"])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------ the user's commands
ARGS = ["--epochs", "2", "--limit", "2000", "--val-size", "500", "--batch-size", "64", "--dropout", "0",
        "--steps-per-chunk", "1", "--no-progress"]
TIMING = ("seconds", "images_per_s", "elapsed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path, devices: int = 1, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNN_JAX_")}
    env.update(TFDS_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def _launch(data_dir: Path, workdir: Path, processes: int, *extra: str, signal_at: str | None = None,
            **env: str) -> list[subprocess.Popen]:
    """The README's multi-host command on ``processes`` local processes sharing ``workdir`` (``env``: more
    environment for each; ``signal_at``: :func:`hooks.hooked`'s)."""
    port = _free_port()
    cmd = [sys.executable, str(SCRIPT), *ARGS, "--workdir", str(workdir), *extra]
    if processes > 1:
        cmd += ["--parallelism", "sharded", "--distributed"]
    return [subprocess.Popen(cmd, env=hooked(_env(data_dir, CNN_JAX_COORDINATOR=f"127.0.0.1:{port}",
                                                  CNN_JAX_NUM_PROCESSES=str(processes), CNN_JAX_PROCESS_ID=str(i),
                                                  **env) if processes > 1 else _env(data_dir, **env),
                                         signal_at=signal_at), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _wait(procs: list[subprocess.Popen], codes=(0,)) -> list[tuple[str, str]]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=420))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode in codes, f"exit {p.returncode}:\n{out[-2000:]}\n{err[-3000:]}"
    return outs


def _history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _assert_close(run_dir: Path, ref_dir: Path) -> None:
    a, b = _results(run_dir), _results(ref_dir)
    assert a["epochs"] == b["epochs"] == 2
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.005)  # 5 of 1,000 test images
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=0.01)


@pytest.fixture(scope="module")
def one_device(fashion_tfds_dir, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("one")
    _wait(_launch(fashion_tfds_dir, workdir, 1))
    return workdir / "lab"


@pytest.fixture(scope="module")
def two_processes(fashion_tfds_dir, tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    workdir = tmp_path_factory.mktemp("two")
    return workdir / "lab", _wait(_launch(fashion_tfds_dir, workdir, 2))


def test_script_on_two_processes_shares_one_run_folder(two_processes, one_device):
    run_dir, ((out0, _), (out1, _)) = two_processes
    assert "new run in" in out0 and "test accuracy" in out0
    assert [ln for ln in out1.splitlines() if not ln.startswith("[Gloo]")] == []  # only process 0 prints
    assert len(_history(run_dir)) == 2  # each epoch logged once
    results = _results(run_dir)
    assert results["process_count"] == 2 and results["device_count"] == 2
    assert json.loads((run_dir / "config.json").read_text())["run"]["parallelism"] == "sharded"
    _assert_close(run_dir, one_device)


def test_script_on_two_processes_sigterm_then_relaunch(fashion_tfds_dir, two_processes, one_device, tmp_path):
    # a preempted pod: every host gets SIGTERM, here at a known step (each process sends it to itself after
    # step 5 of 62), whatever the machine's speed; the hosts agree on the next sync point and all save there
    procs = _launch(fashion_tfds_dir, tmp_path, 2, signal_at="5:SIGTERM")
    (out0, _), _ = _wait(procs, codes=(143,))
    assert "SIGTERM: saved checkpoint at step" in out0 and "resume with the same command" in out0
    assert not (tmp_path / "lab" / "results.json").exists()
    (out0, _), _ = _wait(_launch(fashion_tfds_dir, tmp_path, 2))
    assert "resuming" in out0
    reference = two_processes[0]
    assert _history(tmp_path / "lab") == _history(reference)  # as if never stopped
    assert _results(tmp_path / "lab")["test_accuracy"] == _results(reference)["test_accuracy"]
    _assert_close(tmp_path / "lab", one_device)


@pytest.mark.parametrize("parallelism", ["sharded", "pmap"])
def test_script_on_eight_devices(fashion_tfds_dir, one_device, tmp_path, parallelism):
    cmd = [sys.executable, str(SCRIPT), *ARGS, "--workdir", str(tmp_path), "--parallelism", parallelism]
    out = subprocess.run(cmd, env=_env(fashion_tfds_dir, devices=8), capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _results(tmp_path / "lab")["device_count"] == 8
    _assert_close(tmp_path / "lab", one_device)

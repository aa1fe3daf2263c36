"""Data parallelism on 8 fake CPU devices and two-process jax.distributed training (subprocesses)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu", **extra}
    env.pop("XLA_FLAGS", None)
    env.update({k: v for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def device_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("par") / "devices.npz"
    proc = subprocess.run([sys.executable, str(HERE / "parallel_worker.py"), "devices", str(out)],
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(np.load(out))


@pytest.mark.parametrize("model,strategy", [("lab_dropout", "sharded"), ("lab", "sharded"), ("lab", "pmap"),
                                            ("bn", "sharded"), ("bn", "pmap")])
def test_data_parallel_matches_single_device(device_results, model, strategy):
    ref = {k.split(":", 2)[2]: v for k, v in device_results.items() if k.startswith(f"{model}:none:")}
    got = {k.split(":", 2)[2]: v for k, v in device_results.items() if k.startswith(f"{model}:{strategy}:")}
    assert ref.keys() == got.keys() and any(k.startswith("params/") for k in ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=2e-5, err_msg=k)
    # and training did move the params (the comparison is not between two initial states)
    assert "params/Dense_1/kernel" in ref


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_ends_identical(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(CNN_JAX_COORDINATOR=f"127.0.0.1:{port}", CNN_JAX_NUM_PROCESSES="2",
                   CNN_JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "parallel_worker.py"), "multihost", str(tmp_path / f"p{pid}.npz")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process training timed out")
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-4000:]
    a, b = (dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # and equal (float tolerance) to the same run on one device in one process
    sys.path.insert(0, str(HERE))
    import parallel_worker as w

    from cnn_jax.fit import fit
    from cnn_jax.models import LabCNN

    single = fit(LabCNN(widths=(8, 16), dense=32, dropout=0.5), w.CFG.replace(steps_per_chunk=4), w.TRAIN,
                 progress=False)
    ref = w.flat(single.trainer.host_state(single.state).params, "params/")
    for k, v in ref.items():
        np.testing.assert_allclose(a[k], v, rtol=1e-4, atol=2e-5, err_msg=k)

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_train_step_benchmark_smoke():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    script = ROOT / "benchmarks" / "train_step.py"
    args = [sys.executable, str(script), "--smoke", "--impl", "im2col", "--mode", "scan"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("im2col")]
    assert {r[3] for r in rows} == {"scan"} and {r[2] for r in rows} == {"-", "4"}
    assert all(float(r[4].replace(",", "")) > 0 for r in rows)


FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_fmnist_experiment_smoke(tmp_path):
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST IDX files not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    log = tmp_path / "log.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "train_fmnist.py"), "--limit", "512",
                           "--epochs", "1", "--model", "lab_cnn", "--log", str(log)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "final test accuracy" in proc.stdout and len(log.read_text().splitlines()) == 1

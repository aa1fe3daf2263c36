import os
import subprocess
import sys
from pathlib import Path

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

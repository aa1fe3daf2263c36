"""``benchmarks/device_check.py``: its smoke mode run as a user runs it, where tensorflow-datasets and tensorboardX
cannot be imported (as on the GPU machine), and the pieces it rebuilds without TFDS checked against the originals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import device_check as dc  # benchmarks/ (tests/conftest.py puts it on the path)
import jax
import numpy as np
import pytest
from synthetic import make_data, write_idx_gz

from cnn_jax.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"
ABSENT = ("tensorflow_datasets", "tensorboardX", "tensorflow", "array_record")


def _shim(folder: Path) -> Path:
    """A folder whose ``sitecustomize.py`` makes :data:`ABSENT` unimportable in every Python started with it on
    ``PYTHONPATH`` (the check's own pytest child too)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor n in {ABSENT!r}:\n    sys.modules[n] = None\n")
    return folder


def _env(shim: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)]), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user has
    return env


def _fashion_like(folder: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """Small learnable data as Fashion-MNIST's four gzipped IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    (x, y), (tx, ty) = make_data(n_train, seed=0), make_data(n_test, seed=1)
    for name, array in zip(dc.FILES, (x[..., 0], y, tx[..., 0], ty), strict=True):
        write_idx_gz(folder / name, array.astype(np.uint8))
    return folder


def test_smoke_run_without_tfds_writes_its_json_and_table(tmp_path):
    data, out = _fashion_like(tmp_path / "data"), tmp_path / "results"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data", str(data), "--results-dir", str(out)],
                          cwd=ROOT, env=_env(_shim(tmp_path / "shim")), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = out.glob("cpu-*-smoke.json")
    report = json.loads(path.read_text())
    assert report["kind"] == "cnn_jax.device_check" and report["smoke"] and report["errors"] == {}
    assert report["device"]["backend"] == "cpu" and report["device"]["jax"] == jax.__version__
    assert report["rules"]["conv_impl"]["value"] == "im2col" and report["rules"]["precision"]["value"] == "f32"
    assert set(report["matmul_probe"]) == {"cnn_jax_rule", "xla_default"}
    assert report["matmul_probe"]["cnn_jax_rule"] < 1e-5  # float32 on CPU

    tests = report["tests"]  # run by pytest in a child, parsed per test
    assert tests["jax_platforms"] == "cpu" and tests["returncode"] == 0 and not tests["timed_out"]
    assert {r["id"].split("[")[0] for r in tests["results"]} == set(dc.SMOKE_TESTS)
    assert tests["counts"]["passed"] == len(tests["results"]) == 3 and tests["counts"]["failed"] == 0
    assert (out / f"{path.stem}-pytest.log").read_text().count(" PASSED") == 3

    tta = report["time_to_accuracy"]  # the preset through the Trainer API on the IDX files
    assert tta["config"]["train"]["epochs"] == 2 and tta["epochs_run"] == 2 and tta["num_train"] == 256
    best = PRESETS["best"]  # the preset, on CPU
    assert tta["config"]["model"]["name"] == best.model.name and tta["microbatch"] == best.train.microbatch
    assert tta["compile_train_s"] > 0 and tta["step_s"] > 0 and tta["threshold"] == 0.94
    assert [h["epoch"] for h in tta["history"]] == [1, 2] and 0 <= tta["final_test_accuracy"] <= 1
    assert tta["reached"] == (tta["final_test_accuracy"] >= 0.94)
    lp = report["load_predict"]
    assert lp["passed"] and lp["same_weights"] and lp["predict_accuracy"] == pytest.approx(tta["final_test_accuracy"])

    rows = report["peers"]["rows"]
    assert {(r["model"], r["batch"], r["runner"]) for r in rows} == {
        ("lab", 8, r) for r in ("jax_f32", "jax_bf16", "jax_f32_xla_default")}  # smoke: LabCNN only
    assert all(r["images_per_s"] > 0 and r["low"] <= r["images_per_s"] <= r["high"] for r in rows)
    assert any("PyTorch rows skipped" in n for n in report["peers"]["notes"])  # no CUDA here

    table = path.with_suffix(".txt").read_text()
    assert table in proc.stdout  # the printed table is the one written
    for line in ("tests on the device", "3 passed, 0 failed", "time to 94% test accuracy, preset best",
                 "load/predict: passed", "cnn_jax f32, XLA default matmul precision", "rules: conv im2col"):
        assert line in table


def test_the_checks_import_path_needs_no_tfds_or_tensorboardx(tmp_path):
    code = ("import sys; import cnn_jax, cnn_jax.train, cnn_jax.inference, cnn_jax.checkpoint, cnn_jax.backend\n"
            "import cnn_jax.data.sources, cnn_jax.data.idx, cnn_jax.data.augment\n"
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import device_check\n"
            "from cnn_jax.data import normalize, read_idx, DataSourceError\n"
            "try:\n    from cnn_jax.data import load\nexcept ImportError as e:\n    print('load:', e)\n"
            "print('imported', sorted(n for n in " + repr(ABSENT) + " if sys.modules.get(n) is not None))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(_shim(tmp_path / "shim")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported []" in proc.stdout
    assert "load: import of tensorflow_datasets halted" in proc.stdout  # the shim works: TFDS's path fails


def test_bad_input_is_one_line_naming_the_fix(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / dc.FILES[0]).write_bytes(b"")
    cases = {
        ("--data", str(tmp_path / "nowhere")): "no such folder",
        ("--data", str(partial)): "missing train-labels-idx1-ubyte.gz",
        ("--preset", "nope"): f"--preset nope: unknown; choose from {', '.join(sorted(PRESETS))}",
        ("--set", "train.lr=-1"): "--lr must be a finite number > 0",
        ("--set", "train.lr"): "expected KEY=VALUE",
        ("--budget", "0"): "must be > 0 seconds",
    }
    for args, message in cases.items():
        with pytest.raises(dc.CheckError, match=message.replace("(", r"\(")):
            dc.main(["--smoke", *args])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nowhere")], cwd=ROOT,
                          env=_env(_shim(tmp_path / "shim")), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --data ")


def test_read_fashion_splits_and_limits_as_a_run_does(tmp_path):
    folder = _fashion_like(tmp_path)
    data = dc.read_fashion(folder, PRESETS["best"].override({"data.val_size": 200}), verify=False)
    assert {k: len(v[1]) for k, v in data.items()} == {"train": 1000, "val": 200, "test": 300}
    assert all(v[0].shape[1:] == (28, 28, 1) and v[0].dtype == np.uint8 and v[1].dtype == np.int32
               for v in data.values())
    limited = dc.read_fashion(folder, PRESETS["best"].override({"data.val_size": 200, "data.limit": 64}), False)
    assert {k: len(v[1]) for k, v in limited.items()} == {"train": 64, "val": 200, "test": 64}
    np.testing.assert_array_equal(limited["train"][0], data["train"][0][:64])
    with pytest.raises(ValueError, match="checksum mismatch"):  # verified: these are not Fashion-MNIST's files
        dc.read_fashion(folder, PRESETS["best"], verify=True)
    with pytest.raises(dc.CheckError, match=r"must be in \[0, 1200\).*--set data.val_size=N"):
        dc.read_fashion(folder, PRESETS["best"].override({"data.val_size": 1200}), verify=False)


@pytest.mark.skipif(not dc.has_files(dc.DEBIAN_DIR), reason=f"real Fashion-MNIST not in {dc.DEBIAN_DIR}")
def test_real_fashion_mnist_is_read_and_verified():
    data = dc.read_fashion(dc.DEBIAN_DIR, PRESETS["best"], verify=True)
    assert {k: v[0].shape for k, v in data.items()} == {"train": (55000, 28, 28, 1), "val": (5000, 28, 28, 1),
                                                        "test": (10000, 28, 28, 1)}
    assert sorted(np.unique(data["test"][1])) == list(range(10))


def test_copy_data_fills_a_folder_that_find_data_accepts(tmp_path):
    source = _fashion_like(tmp_path / "source", 20, 10)
    dest = dc.copy_data(source, tmp_path / "carried")
    assert dc.find_data(str(dest)) == dest
    assert [(dest / f).read_bytes() for f in dc.FILES] == [(source / f).read_bytes() for f in dc.FILES]
    with pytest.raises(dc.CheckError, match="already where the files are copied to"):
        dc.copy_data(dest, dest)


def test_pytest_output_is_read_per_test_with_and_without_xdist():
    out = "\n".join([
        "tests/test_ops.py::test_pool[(1, 2)-max-native] PASSED                      [ 10%]",
        "tests/test_ops.py::test_b FAILED                                              [ 20%]",
        "tests/test_x.py::test_c SKIPPED (no data)                                     [ 30%]",
        "tests/test_x.py::test_d PASSED                                                [ 40%]",
        "tests/test_x.py::test_d ERROR                                                 [ 40%]",
        "[gw1] [ 50%] PASSED tests/test_train.py::test_e[a b] ",
        "[gw0] [100%] FAILED tests/test_train.py::test_f",
        "FAILED tests/test_ops.py::test_b - AssertionError: x",  # the summary's lines are not results
        "collected 7 items",
    ])
    assert dc.parse_pytest(out) == [
        {"id": "tests/test_ops.py::test_pool[(1, 2)-max-native]", "outcome": "PASSED"},
        {"id": "tests/test_ops.py::test_b", "outcome": "FAILED"},
        {"id": "tests/test_x.py::test_c", "outcome": "SKIPPED"},
        {"id": "tests/test_x.py::test_d", "outcome": "ERROR"},
        {"id": "tests/test_train.py::test_e[a b]", "outcome": "PASSED"},
        {"id": "tests/test_train.py::test_f", "outcome": "FAILED"},
    ]


def _torch_with_cuda() -> bool:
    try:
        import torch
    except Exception:  # noqa: BLE001 - absent or broken: no CUDA runner here
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_torch_with_cuda(), reason="PyTorch with CUDA is here: its runner can run")
def test_a_runner_that_cannot_run_is_skipped_with_its_reason():
    """PyTorch on CUDA where there is none (no torch, or no GPU): peers.measure skips it, the reason is kept."""
    dc.FAILED_RUNNERS.clear()
    with pytest.raises(ImportError) as e:
        dc.FACTORIES["torch_f32"]("lab", 8)
    assert dc.FAILED_RUNNERS == {("lab", 8, "torch_f32"): str(e.value)} and str(e.value)

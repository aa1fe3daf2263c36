"""The ``cnn-jax`` command (``python -m cnn_jax``): each subcommand's help, its errors, and a real install: the
wheel, installed into a fresh virtual environment, trains, evaluates and predicts from a folder outside the
repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import inproc
import jax_cache
import numpy as np
import pytest
from PIL import Image

from cnn_jax.__main__ import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _version(dist: str) -> tuple[int, ...]:
    """``dist``'s installed version as a tuple of its leading numbers, ``()`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(part) for part in version(dist).split(".")[:2] if part.isdigit())
    except PackageNotFoundError:
        return ()


def _command(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnn_jax", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _in_process(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """``python -m cnn_jax ARGS`` as ``main(ARGS)`` in this process."""
    return inproc.command(main, list(args), capsys, monkeypatch, program=str(ROOT / "cnn_jax" / "__main__.py"))


def test_the_command_runs_as_a_process():
    out = _command("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m cnn_jax") and all(name in out.stdout for name in COMMANDS)
    out = _command("trian")
    assert out.returncode == 2 and "invalid choice: 'trian'" in out.stderr.splitlines()[-1]


_HEAVY = ("cnn_jax.train", "cnn_jax.trainer", "orbax.checkpoint", "tensorflow_datasets", "matplotlib")
_LOADED = f"print('loaded:', sorted(m for m in {_HEAVY!r} if m in sys.modules))"


def test_the_package_loads_what_is_used_and_names_its_documented_errors():
    """``import cnn_jax`` (or one primitive from it) and ``cnn-jax --help`` load no training, Orbax, data layer
    or plotting; every public name is there when first used, the errors that ``train_and_evaluate`` and ``load``
    document and ``LoadedModel`` included; the version is the installed package's."""
    code = (f"import sys, runpy\nimport cnn_jax\n{_LOADED}\nfrom cnn_jax import conv2d\n{_LOADED}\n"
            f"sys.argv = ['cnn-jax', '--help']\ntry:\n    runpy.run_module('cnn_jax', run_name='__main__')\n"
            f"except SystemExit:\n    pass\n{_LOADED}\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line for line in out.stdout.splitlines() if line.startswith("loaded:")] == ["loaded: []"] * 3
    import importlib.metadata

    import cnn_jax
    from cnn_jax.checkpoint import IncompatibleCheckpointError
    from cnn_jax.config import ConfigError
    from cnn_jax.inference import LoadedModel
    from cnn_jax.train import StoppedError

    assert all(getattr(cnn_jax, name) is not None for name in cnn_jax.__all__)
    assert (cnn_jax.StoppedError, cnn_jax.IncompatibleCheckpointError, cnn_jax.ConfigError, cnn_jax.LoadedModel) == (
        StoppedError, IncompatibleCheckpointError, ConfigError, LoadedModel)
    assert cnn_jax.__version__ == importlib.metadata.version("cnn_jax")
    with pytest.raises(AttributeError, match="no attribute 'Trainerr'"):
        cnn_jax.Trainerr  # noqa: B018


def test_help_lists_every_command_and_each_has_its_own(capsys, monkeypatch):
    out = _in_process(capsys, monkeypatch, "--help")
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in COMMANDS)
    for name in COMMANDS:
        sub = _in_process(capsys, monkeypatch, name, "--help")
        assert sub.returncode == 0, (name, sub.stderr)
        assert sub.stdout.startswith(f"usage: python -m cnn_jax {name}"), (name, sub.stdout[:200])
    assert "--preset" in _in_process(capsys, monkeypatch, "train", "--help").stdout


def test_bad_command_and_bad_flags_are_one_line_errors(tmp_path, capsys, monkeypatch):
    def command(*args: str) -> subprocess.CompletedProcess:
        return _in_process(capsys, monkeypatch, *args)

    out = command("trian")
    assert out.returncode == 2 and "invalid choice: 'trian'" in out.stderr and "train" in out.stderr
    out = command("train", "--dataset", "cifar10", "--workdir", str(tmp_path))
    assert out.returncode == 2 and "unknown dataset 'cifar10'" in out.stderr.splitlines()[-1]
    out = command("predict", str(tmp_path))  # no --image
    assert out.returncode == 2 and "--image" in out.stderr.splitlines()[-1]
    out = command("evaluate", str(tmp_path / "nothing"))
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "not a cnn_jax run folder" in out.stderr


def test_installed_wheel_trains_evaluates_and_predicts_outside_the_repository(fashion_tfds_dir, tmp_path):
    """``pip wheel`` -> a fresh venv (not editable; the dependencies come from the test's environment, whose own
    cnn_jax is not importable there) -> ``cnn-jax train``, ``evaluate`` and ``predict`` run in another folder."""
    wheels = tmp_path / "wheels"
    # pyproject.toml's build requirement (setuptools >= 77, for its SPDX license): the environment's own when it
    # meets it (offline), else pip's isolated build fetches it from the package index
    isolation = ["--no-build-isolation"] if _version("setuptools") >= (77,) else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *isolation, "-q", "-w",
                            str(wheels)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("cnn_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "test_deps.pth").write_text("\n".join(deps) + "\n")  # plain paths: the editable hook is not run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "TFDS_DATA_DIR": str(fashion_tfds_dir),
           **jax_cache.passed_on()}  # the suite's compilation cache: programs, not code, are shared
    where = subprocess.run([str(python), "-c", "import cnn_jax; print(cnn_jax.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed wheel, not the checkout

    def cnn_jax(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "cnn-jax"), *args], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=600)

    out = cnn_jax("train", "--dataset", "fashion_mnist", "--preset", "lab", "--epochs", "1", "--limit", "1000",
                  "--val-size", "300", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = elsewhere / "checkpoints" / "fashion_mnist" / "lab"  # the default place, under the working folder
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 1
    out = cnn_jax("evaluate", str(run_dir), "--which", "latest")
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads(out.stdout.strip().splitlines()[-1])
    from cnn_jax import load
    from cnn_jax.data import load as load_data

    test = load_data("fashion_mnist", data_dir=str(fashion_tfds_dir), val_size=0).test  # the whole test split
    accuracy = float(np.mean(load(run_dir, "latest").predict(test.images) == test.labels))  # the checkout's code
    assert evaluated["num_test"] == 10_000 and evaluated["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.5  # 1,000 images, one epoch: well above chance
    Image.fromarray(np.asarray(test.images[0, ..., 0])).resize((112, 112)).save(elsewhere / "item.png")
    out = cnn_jax("predict", str(run_dir), "--image", "item.png", "--top", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(s for s in out.stdout.splitlines() if s.startswith("item.png: "))
    assert line.count("%") == 2

"""The experiment scripts end to end with tiny budgets: outputs, consistency, figures, config flags, bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax_cache
import numpy as np
import pytest
from PIL import Image
from test_data import make_emnist_zip

from cnn_jax.cli import main as run
from cnn_jax.cli import parse, resume_command
from cnn_jax.config import PRESETS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--limit", "1000", "--val-size", "300", "--no-progress"]
FIGURES = {"curves.png", "confusion.png", "predictions.png", "filters.png", "feature_maps.png"}


def _check_run(run_dir: Path, epochs: int) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run_dir / "config.json").read_text())
    assert len(history) == results["epochs"] == epochs
    assert results["train_accuracy"] == history[-1]["train_accuracy"]
    assert results["val_accuracy"] == history[-1]["val_accuracy"]
    best = max(history, key=lambda h: h["val_accuracy"])
    assert (results["best_epoch"], results["best_val_accuracy"]) == (best["epoch"], best["val_accuracy"])
    cm = np.array(results["confusion_matrix"])
    assert cm.sum() == results["num_test"]
    assert np.trace(cm) / cm.sum() == pytest.approx(results["test_accuracy"], abs=1e-6)
    per_class = np.diag(cm) / cm.sum(1).clip(1)
    assert list(results["per_class_accuracy"].values()) == pytest.approx(per_class.tolist())
    assert results["device_count"] >= 1 and results["versions"]["jax"]
    assert config["data"]["dataset"] == results["dataset"]
    assert Config.from_dict(config).to_dict() == config
    assert {Path(p).name for p in results["figures"]} == FIGURES
    for name in FIGURES:
        with Image.open(run_dir / "figures" / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    return results


def test_fashion_mnist_lab_end_to_end(fashion_tfds_dir, tmp_path, capsys):
    results = run("fashion_mnist", [*TINY, "--data-dir", str(fashion_tfds_dir), "--workdir", str(tmp_path)])
    assert "new run in" in capsys.readouterr().out
    _check_run(tmp_path / "lab", 2)
    assert results["model"] == "lab_cnn"
    assert 0.5 < results["test_accuracy"] <= 1.0  # 1,000 images x 2 epochs: well above chance (0.1)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_fashion_mnist_bn_cnn_preset_script(fashion_tfds_dir, tmp_path, precision):
    """The 2026-11 `best` (BN-CNN) under its own name, in a run folder named `best`, as its runs of then are."""
    cmd = [sys.executable, str(ROOT / "experiments" / "fashion_mnist.py"), "--preset", "best-2026-11", "--run", "best",
           *TINY, "--widths", "8", "16", "16", "--precision", precision, "--data-dir", str(fashion_tfds_dir),
           "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT),
                                                                               "PATH": "/usr/bin:/bin",
                                                                               **jax_cache.passed_on()})
    assert out.returncode == 0, out.stderr[-3000:]
    results = _check_run(tmp_path / "best", 2)
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["model"]["name"] == "bn_cnn" and config["model"]["widths"] == [8, 16, 16]
    assert config["data"]["augment"] == ["translate", "flip"] and config["data"]["tta"] == ["flip"]
    assert config["train"]["microbatch"] == 32 and config["run"]["steps_per_chunk"] is None  # about a second
    assert config["train"]["precision"] == precision
    # a loaded checkpoint predicts with the same test-time flips, in the same precision and with the same forward-only
    # convolutions (steps.inference_model), as the run's own evaluation
    import jax
    import jax.numpy as jnp

    from cnn_jax import load
    from cnn_jax.data import load as load_data
    from cnn_jax.steps import inference_model
    from cnn_jax.train_state import bind

    test = load_data("fashion_mnist", data_dir=str(fashion_tfds_dir), val_size=0).test
    lm = load(tmp_path / "best", "latest")
    pred = lm.predict(test.images[:1000])
    assert float(np.mean(pred == test.labels[:1000])) == pytest.approx(results["test_accuracy"], abs=1e-6)

    def view_logits(dtype, x):
        params = jax.tree.map(lambda a: a.astype(dtype), lm.variables["params"])
        model = bind(inference_model(lm.model), params, lm.variables.get("batch_stats", {}))
        model.eval()
        return model(x.astype(dtype)).astype(jnp.float32)

    def tta(dtype):  # jitted with the images as an argument, as in the model's own evaluation
        return jax.jit(lambda x, y: (view_logits(dtype, x) + view_logits(dtype, y)) / 2)(
            lm._prepare(test.images[:8])[0], lm._prepare(test.images[:8, :, ::-1])[0])

    logits = lm.logits(test.images[:8], batch_size=8)
    np.testing.assert_allclose(logits, tta(jnp.float32 if precision == "f32" else jnp.bfloat16), rtol=1e-4, atol=1e-4)
    if precision == "bf16":
        assert not np.allclose(logits, tta(jnp.float32), rtol=1e-4, atol=1e-4)
    # an image's logits do not depend on the images beside it: the last partial batch is padded to the one shape
    four = lm.logits(test.images[4:8], batch_size=4)
    np.testing.assert_array_equal(lm.logits(test.images[:7], batch_size=4)[4:], four[:3])
    np.testing.assert_array_equal(lm.logits(test.images[4:5], batch_size=4), four[:1])
    # today's `best` (the ResNet) refuses that folder, naming what differs, and leaves it as it was
    def listing() -> list:
        return sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "best").rglob("*"))

    before = listing()
    with pytest.raises(SystemExit) as refused:
        run("fashion_mnist", ["--preset", "best", "--run", "best", *TINY, "--precision", precision,
                              "--data-dir", str(fashion_tfds_dir), "--workdir", str(tmp_path)])
    assert "model.name: saved 'bn_cnn', now 'resnet'" in str(refused.value.code)
    assert listing() == before


def test_emnist_digits_on_synthetic_nist_zip(tmp_path):
    zip_path = make_emnist_zip(tmp_path / "nist" / "gzip.zip", n_train=300, n_test=100)
    results = run("emnist/digits", ["--epochs", "1", "--batch-size", "32", "--val-size", "50", "--no-progress",
                                    "--source-dir", str(zip_path), "--no-verify", "--data-dir", str(tmp_path / "tfds"),
                                    "--workdir", str(tmp_path / "runs")])
    _check_run(tmp_path / "runs" / "lab", 1)
    assert results["dataset"] == "emnist/digits" and results["num_test"] == 100
    # the presets' flips never apply to digits
    for preset in ("best", "fast"):
        config, _, _ = parse("emnist_digits", ["--preset", preset, "--workdir", str(tmp_path / "runs")])
        assert config.data.augment == ("translate",) and config.data.tta == ()
        assert config.model == PRESETS[preset].model and config.train == PRESETS[preset].train
    # early stopping: a learning rate too small to change the validation accuracy stops after patience + 1 epochs
    stopped = run("emnist/digits", ["--epochs", "4", "--batch-size", "32", "--val-size", "50", "--no-progress",
                                    "--lr", "1e-12", "--early-stopping", "1", "--data-dir", str(tmp_path / "tfds"),
                                    "--workdir", str(tmp_path / "runs"), "--run", "stops"])
    assert stopped["stopped_early"] and stopped["epochs"] == 2
    for flag, flip in (("--augment", "flip"), ("--augment", "altflip"), ("--tta", "flip")):  # refused for digits
        with pytest.raises(SystemExit):
            run("emnist_digits", [flag, flip, "--workdir", str(tmp_path / "runs2")])


def test_dotted_flags_are_the_short_flags_and_presets_are_configs(tmp_path):
    short, run_dir, _ = parse("fashion_mnist", ["--preset", "best", "--lr", "0.002", "--widths", "8", "16",
                                                "--augment", "--epochs", "3", "--workdir", str(tmp_path)])
    dotted, _, _ = parse("fashion_mnist", ["--preset", "best", "--train.lr", "0.002", "--model.widths", "8", "16",
                                           "--data.augment", "--train.epochs=3", "--workdir", str(tmp_path)])
    assert short == dotted == PRESETS["best"].override({"train.lr": 0.002, "model.widths": (8, 16),
                                                        "data.augment": (), "train.epochs": 3})
    assert run_dir == tmp_path / "best"
    other, _, _ = parse("fashion_mnist", ["--model", "bn_cnn", "--workdir", str(tmp_path)])  # lab + another model
    assert other.model.kwargs() == {} and other.train == PRESETS["lab"].train
    assert Config.from_dict(short.to_dict()) == short
    with pytest.raises(ConfigError, match="unknown config field 'train.nope'"):
        Config().override({"train.nope": 1})


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "-1"], "--epochs must be >= 1, got -1"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--early-stopping", "0"], "--early-stopping must be >= 1 (or none: off), got 0"),
    (["--clip", "0"], "--clip must be a finite number > 0 (or none: off), got 0.0"),
    (["--clip", "-1"], "--clip must be a finite number > 0 (or none: off), got -1.0"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--warmup-steps", "-5"], "--warmup-steps must be >= 0, got -5"),
    (["--widths", "0"], "--widths must be one or more numbers >= 1, got (0,)"),
    (["--widths", "32", "-3"], "--widths must be one or more numbers >= 1, got (32, -3)"),
    (["--run", "../victim"], "--run: '../victim' is not a plain name"),
    (["--run", "/abs"], "--run: '/abs' is not a plain name"),
    (["--run", "a/b"], "--run: 'a/b' is not a plain name"),
    (["--preset", "huge"], "--preset: unknown preset 'huge'"),
    (["--model", "resnet9000"], "--model: unknown model 'resnet9000'"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--augment", "rotate"], "--augment: unknown ['rotate']"),
    (["--tta", "rotate"], "--tta: unknown ['rotate']"),
    (["--preset", "best", "--batch-size", "100"], "--microbatch 16 must divide --batch-size 100"),
    (["--workdir", "/etc/hostname/runs"], "is a file, not a folder"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--train.lr", "fast"], "argument --train.lr/--lr: invalid float value: 'fast'"),
    (["--run.keep", "0"], "--keep must be >= 1, got 0"),
    (["--model.conv_dropout", "1.5"], "--conv-dropout must be in [0, 1), got 1.5"),
])
def test_bad_flags_fail_fast_with_one_line(args, message, tmp_path, capsys):
    argv = [*args, *([] if "--workdir" in args else ["--workdir", str(tmp_path)]), "--data-dir", str(tmp_path / "no")]
    with pytest.raises(SystemExit) as info:
        run("fashion_mnist", argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("experiments/fashion_mnist.py: error: ") and message in last
    assert not list(tmp_path.rglob("*"))  # no work started


def test_resume_command_is_the_one_that_resumes_the_run(monkeypatch):
    """A stopped script names its own command; a run started from Python with its own flags (a benchmark,
    the study) names ``python -m cnn_jax train`` with those flags, not the caller's command line."""
    monkeypatch.setattr(sys, "argv", ["experiments/fashion_mnist.py", "--epochs", "2"])
    assert resume_command("fashion_mnist", None) == "python experiments/fashion_mnist.py --epochs 2"
    assert resume_command("fashion_mnist", ["--epochs", "2"]) == "python experiments/fashion_mnist.py --epochs 2"
    monkeypatch.setattr(sys, "argv", ["benchmarks/time_to_accuracy.py", "--seeds", "1"])
    assert resume_command("fashion_mnist", ["--preset", "fast", "--workdir", "/tmp/my runs"]) == \
        "python -m cnn_jax train --dataset fashion_mnist --preset fast --workdir '/tmp/my runs'"
    command = ["cnn-jax", "train", "--dataset", "emnist/digits"]  # cnn-jax train names itself
    assert resume_command("emnist/digits", ["--epochs", "2"], command) == \
        "cnn-jax train --dataset emnist/digits --epochs 2"


def test_unknown_dataset_and_missing_data(tmp_path):
    with pytest.raises(SystemExit) as info:
        run("cifar10", ["--workdir", str(tmp_path)])
    assert info.value.code == 2
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "emnist_digits.py"), "--workdir", str(tmp_path),
                          "--data-dir", str(tmp_path / "empty")], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), **jax_cache.passed_on()})
    assert out.returncode == 1 and "error: " in out.stderr and "gzip.zip" in out.stderr

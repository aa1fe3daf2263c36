"""The recipe search's pieces (issue 22): the residual model, the weights' moving average, validation-only runs,
and the ablation script's smoke mode. Behaviour only: accuracy is measured by the benchmark scripts."""

from __future__ import annotations

import functools
import json
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from synthetic import make_data, train

from cnn_jax.checkpoint import RunCheckpointer
from cnn_jax.config import PRESETS, Config, ConfigError, ModelConfig, RunConfig, TrainConfig, differences
from cnn_jax.models import ResNet
from cnn_jax.train_state import ema_of_params, eval_params
from cnn_jax.trainer import Trainer, build_model, preprocessing

ROOT = Path(__file__).resolve().parents[1]
DATA = make_data(256, seed=0)


@functools.cache
def _tiny() -> ResNet:
    """The tests' small ResNet, built when a test first asks (not when pytest collects this file)."""
    return ResNet(widths=(4, 8, 8, 8), rngs=nnx.Rngs(0))


def _trainer(parallelism: str = "none", ema: float | None = 0.9, model: nnx.Module | None = None) -> Trainer:
    cfg = Config(train=TrainConfig(batch_size=32, epochs=2, lr=3e-3, ema=ema, microbatch=None),
                 run=RunConfig(parallelism=parallelism, eval_batch_size=32))
    return Trainer(model or _tiny(), cfg, len(DATA[0]), (28, 28, 1))


def test_ema_follows_its_formula():
    params = {"w": jnp.zeros(3)}
    tx = optax.chain(optax.sgd(1.0), ema_of_params(0.9))
    state, p, ema = tx.init(params), params, np.zeros(3)
    for t in range(20):
        updates, state = tx.update({"w": jnp.full(3, -1.0)}, state, p)  # each step adds 1
        p = optax.apply_updates(p, updates)
        d = min(0.9, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * np.asarray(p["w"])
    np.testing.assert_allclose(state[-1].ema["w"], ema, rtol=1e-6)
    assert float(p["w"][0]) == 20 and 10 < float(state[-1].ema["w"][0]) < 20  # lags behind the weights
    assert eval_params(p, state) is state[-1].ema and eval_params(p, state[:-1]) is p


def test_evaluation_uses_the_moving_average():
    t = _trainer()
    state = train(t, DATA, 1)
    host, data = t.host_state(state), t.put_data(*DATA, for_eval=True)
    got = t.evaluate(state, data)
    # the params replaced by their average: the same figures; the average replaced by the params: others
    ref = t.evaluate(t.place_state(host.replace(params=host.opt_state[-1].ema)), data)
    raw = t.evaluate(t.place_state(host.replace(
        opt_state=(*host.opt_state[:-1], host.opt_state[-1]._replace(ema=host.params)))), data)
    assert got["loss"] == ref["loss"] and got["loss"] != raw["loss"]
    assert t.trace_counts == {"train_chunk": 1, "evaluate": 1}  # compiled once for all of these


def test_ema_state_survives_a_checkpoint_and_resumes_bit_identically(tmp_path):
    ref = _trainer()
    expected = ref.host_state(train(ref, DATA, 2))
    a = _trainer()
    ck = RunCheckpointer(tmp_path / "ck")
    ck.save(8, a.host_state(train(a, DATA, 1)), {})
    ck.wait()
    b = _trainer()
    got = b.host_state(train(b, DATA, 1, b.place_state(ck.restore(b.abstract_state()).state)))
    ck.close()
    assert int(got.step) == int(expected.step) == 16
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(got.opt_state[-1].ema["Dense_0"]["kernel"], got.params["Dense_0"]["kernel"])


@pytest.mark.parametrize("parallelism", ["sharded", "pmap"])
def test_resnet_with_ema_on_eight_devices_equals_one(parallelism):
    assert jax.device_count() == 8  # tests/conftest.py
    ref = _trainer("none")
    one = ref.host_state(train(ref, DATA, 1))
    t = _trainer(parallelism)
    eight = t.host_state(train(t, DATA, 1))
    for x, y in zip(jax.tree.leaves(eight), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)
    assert t.trace_counts["train_chunk"] == 1


def _fast_trainer(parallelism: str) -> Trainer:
    """The `fast` preset's recipe (augmentations, TTA, optimizer, micro-batches) on a tiny ResNet."""
    preset = PRESETS["fast"]
    micro = preset.train.microbatch
    cfg = preset.override({"model.widths": (4, 8, 8, 8), "train.batch_size": 2 * micro, "train.epochs": 2,
                           "run.parallelism": parallelism, "run.eval_batch_size": 32})
    return Trainer(build_model(cfg, 10, (28, 28, 1)), cfg, len(DATA[0]), (28, 28, 1), *preprocessing(cfg))


def test_fast_preset_on_eight_devices_equals_one_and_resumes_bit_identically(tmp_path):
    assert PRESETS["fast"].model.name == "resnet" and isinstance(PRESETS["fast"].train.microbatch, int)
    ref = _fast_trainer("none")
    one = ref.host_state(train(ref, DATA, 2))
    t = _fast_trainer("sharded")
    eight = t.host_state(train(t, DATA, 2))
    for x, y in zip(jax.tree.leaves(eight), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)
    assert t.trace_counts["train_chunk"] == 1 and ref.trace_counts["train_chunk"] == 1
    a = _fast_trainer("none")
    ck = RunCheckpointer(tmp_path / "ck")
    ck.save(1, a.host_state(train(a, DATA, 1)), {})
    ck.wait()
    b = _fast_trainer("none")
    got = b.host_state(train(b, DATA, 1, b.place_state(ck.restore(b.abstract_state()).state)))
    ck.close()
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(one), strict=True):
        np.testing.assert_array_equal(x, y)


def test_config_checks_and_older_records():
    with pytest.raises(ConfigError, match="--ema must be in"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match="--dense: model 'resnet' has no dense parameter"):
        ModelConfig(name="resnet", dense=128)
    with pytest.raises(ConfigError, match="--no-test needs a validation split"):
        Config(run=RunConfig(test=False)).override({"data.val_size": 0})
    saved = Config().to_dict()
    del saved["train"]["ema"]  # a run recorded before the field existed: its default, no difference
    assert differences(saved, Config()) == []
    assert differences(saved, Config(train=TrainConfig(ema=0.99))) == ["train.ema: saved None, now 0.99"]


def test_ablation_smoke(fashion_tfds_dir, tmp_path, capsys):
    """``--first I --upto J``: variants I..J run (validation only: the test split is never evaluated), each in its
    own run folder with the flags of every variant before it; the table's figures come from the runs' own records.
    Here the last two: the ResNet with the weights' average and label smoothing, then all of that in bf16, which
    predicts with the average."""
    from cnn_jax import load

    mod = runpy.run_path(str(ROOT / "benchmarks" / "ablation.py"), run_name="bench")
    last = len(mod["VARIANTS"]) - 1
    with pytest.raises(SystemExit):
        mod["main"](["--smoke", "--first", str(last), "--upto", str(last - 1)])
    out, md = tmp_path / "ablation.json", tmp_path / "ablation.md"
    report = mod["main"](["--smoke", "--first", str(last - 1), "--seeds", "3", "--target", "0.3", "--json", str(out),
                          "--markdown", str(md), "--workdir", str(tmp_path), "--", "--data-dir", str(fashion_tfds_dir)])
    assert [r["variant"] for r in report["runs"]] == [last - 1, last]
    assert [v["index"] for v in report["variants"]] == [last - 1, last]
    for r in report["runs"]:
        run_dir = Path(r["run_dir"])
        results = json.loads((run_dir / "results.json").read_text())
        assert results["test_accuracy"] is None and results["confusion_split"] == "val"
        history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert r["val_accuracy"] == history[-1]["val_accuracy"] and "test_accuracy" not in history[-1]
        config = json.loads((run_dir / "config.json").read_text())
        assert config["run"]["test"] is False and config["train"]["seed"] == 3
        # every earlier variant's flags kept: the best preset's schedule (0), the ResNet (1), the average (2), ...
        assert config["train"]["schedule"] == "onecycle" and config["model"]["name"] == "resnet"
        assert config["train"]["ema"] == 0.99 and config["train"]["label_smoothing"] == 0.2
    precisions = [json.loads((Path(r["run_dir"]) / "config.json").read_text())["train"]["precision"]
                  for r in report["runs"]]
    assert precisions == ["f32", "bf16"]
    assert [row["variant"] for row in report["table"]] == [last - 1, last]
    assert json.loads(out.read_text())["table"] == report["table"]
    assert md.read_text().count("\n| ") == 4 and "| variant | epochs |" in capsys.readouterr().out
    run_dir = Path(report["runs"][-1]["run_dir"])
    state = RunCheckpointer(run_dir / "ckpt", read_only=True).restore(None).state
    loaded = load(run_dir, "latest").variables["params"]  # predictions use the weights' average
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(state["opt_state"][-1]["ema"]), strict=True):
        np.testing.assert_array_equal(x, y)

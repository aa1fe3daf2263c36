"""The recipe search's pieces (issue 22): the residual model, the weights' moving average, validation-only runs,
and the ablation script's smoke mode. Behaviour only: accuracy is measured by the benchmark scripts."""

from __future__ import annotations

import functools
import json
import runpy
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from synthetic import make_data, train

from cnn_jax.checkpoint import RunCheckpointer
from cnn_jax.config import PRESETS, Config, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, differences
from cnn_jax.models import ResNet
from cnn_jax.train_state import TrainState, eval_params, legacy_layout, lookahead, update_ema
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
    average, expected = {"w": jnp.zeros(3)}, np.zeros(3)
    for t in range(20):
        p = {"w": jnp.full(3, t + 1.0)}  # each step adds 1
        average = update_ema(average, p, jnp.int32(t), 0.9)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * np.asarray(p["w"])
    np.testing.assert_allclose(average["w"], expected, rtol=1e-6)
    assert 10 < float(average["w"][0]) < 20  # lags behind the weights
    state = TrainState(step=jnp.int32(20), params=p, opt_state=(), batch_stats={}, key=jnp.zeros(2, jnp.uint32),
                       ema=average)
    assert eval_params(state) is average and eval_params(state.replace(ema={})) is p
    assert eval_params({"params": p, "ema": average}) is average and eval_params({"params": p, "ema": {}}) is p


def test_a_step_keeps_the_average_in_the_state():
    t = _trainer()
    before = t.host_state(t.init_state())
    after = t.host_state(t.train_chunk(t.init_state(), t.put_data(*DATA), 1)[0])
    expected = update_ema(before.ema, after.params, before.step, 0.9)  # outside jit: rounding may differ
    for x, y in zip(jax.tree.leaves(after.ema), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    moved = zip(jax.tree.leaves(after.ema), jax.tree.leaves(after.params), strict=True)
    assert not all(np.array_equal(x, y) for x, y in moved)  # an average, not the weights
    assert jax.tree.leaves(_trainer(ema=None).init_state().ema) == []  # off: no average kept


def test_evaluation_uses_the_moving_average():
    t = _trainer()
    state = train(t, DATA, 1)
    host, data = t.host_state(state), t.put_data(*DATA, for_eval=True)
    got = t.evaluate(state, data)
    # the params replaced by their average: the same figures; the average replaced by the params: others
    ref = t.evaluate(t.place_state(host.replace(params=host.ema)), data)
    raw = t.evaluate(t.place_state(host.replace(ema=host.params)), data)
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
    assert not np.array_equal(got.ema["Dense_0"]["kernel"], got.params["Dense_0"]["kernel"])


@pytest.mark.parametrize("ema", [0.9, None])
def test_checkpoints_of_the_older_layout_load_and_resume(tmp_path, ema):
    """Before 2026-12-07 the weights' average was the optimizer chain's last state (layout 1). Checkpoints that
    code saved (tests/data/state-layout-1, made by its make.py) restore into today's state, array for array, for
    training and for predictions; one more epoch from them gives what that code gave (bit for bit on the machine
    that made them, with one CPU device; within rounding here, where conftest.py makes 8)."""
    name = "ema" if ema else "no-ema"
    fixture = ROOT / "tests" / "data" / "state-layout-1"
    shutil.copytree(fixture / name, tmp_path / name)  # a writable checkpointer deletes what it cannot read
    ck = RunCheckpointer(tmp_path / name)
    raw = RunCheckpointer(fixture / name, read_only=True)
    t = _trainer(ema=ema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not taken for a damaged checkpoint: read in its own layout
        restored = ck.restore(t.abstract_state())
        as_saved = raw.restore(None).state  # what cnn_jax.load reads: in today's layout too
    assert restored.step == 8 and "state_layout" not in restored.meta
    assert set(as_saved) == {"step", "params", "opt_state", "batch_stats", "key", "ema"}
    for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(
            TrainState(**{k: as_saved[k] for k in ("step", "params", "batch_stats", "key", "ema")},
                       opt_state=jax.tree.unflatten(jax.tree.structure(restored.state.opt_state),
                                                    jax.tree.leaves(as_saved["opt_state"])))), strict=True):
        np.testing.assert_array_equal(x, y)
    assert bool(jax.tree.leaves(restored.state.ema)) == bool(ema)
    got = t.host_state(train(t, DATA, 1, t.place_state(restored.state)))
    saved = np.load(fixture / f"{name}-after-one-more-epoch.npz")  # that code's state's leaves, in its order
    old = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    for x, y in zip(jax.tree.leaves(legacy_layout(got)), old, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    ck.close()
    raw.close()




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


def test_best_is_fast_trained_longer_and_the_2026_11_best_keeps_its_recipe(tmp_path):
    """Issue 38 moved ``best`` to ``fast``'s ResNet at 24 epochs; the BN-CNN recipe it was (the time-to-accuracy
    baseline, pinned flag by flag here as the benchmark pinned it until then) is ``best-2026-11``."""
    from cnn_jax.cli import parse

    flags_2026_11 = ["--preset", "lab", "--model", "bn_cnn", "--widths", "48", "96", "192", "--dropout", "0.2",
                     "--conv-dropout", "0", "--augment", "translate", "flip", "--tta", "flip", "--optimizer", "adamw",
                     "--lr", "3e-3", "--schedule", "onecycle", "--epochs", "24", "--weight-decay", "5e-4",
                     "--label-smoothing", "0.05", "--clip", "1.0", "--microbatch", "32"]
    pinned, _, _ = parse("fashion_mnist", [*flags_2026_11, "--workdir", str(tmp_path)])
    named, run_dir, _ = parse("fashion_mnist", ["--preset", "best-2026-11", "--workdir", str(tmp_path)])
    assert named == pinned and run_dir == tmp_path / "best-2026-11"
    best, fast = PRESETS["best"], PRESETS["fast"]
    assert (best.data, best.model) == (fast.data, fast.model) and best.model.name == "resnet"
    assert best.train == fast.train.replace(epochs=24) and fast.train.epochs == 12
    tta = runpy.run_path(str(ROOT / "benchmarks" / "time_to_accuracy.py"), run_name="bench")
    assert tta["SETTINGS"]["f32"][:2] == ["--preset", "best-2026-11"]


def test_ablation_tables_add_variants_cumulatively_or_one_at_a_time():
    """``--table issue22``: variant i has the flags of variants 0..i; ``issue38``: variant 0's and its own."""
    mod = runpy.run_path(str(ROOT / "benchmarks" / "ablation.py"), run_name="bench")
    cumulative, alone = mod["VARIANTS"], mod["ON_FAST"]
    assert mod["flags_upto"](2) == [*cumulative[0][1], *cumulative[1][1], *cumulative[2][1]]
    assert mod["flags_upto"](0, "issue38") == alone[0][1]
    assert mod["flags_upto"](2, "issue38") == [*alone[0][1], *alone[2][1]]
    with pytest.raises(SystemExit):  # past the table's end
        mod["main"](["--table", "issue38", "--upto", str(len(alone))])


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
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(state["ema"]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_alternating_flips_are_applied_by_the_train_loop():
    """``--augment ... altflip``: the train loop mirrors a seeded half of the examples in epoch 0 and the other half
    in epoch 1 (the step sees them so); the float augmentations never get the name."""
    from cnn_jax.data.augment import AUGMENTATIONS, make_epoch_augment
    from cnn_jax.steps import train_chunk

    cfg = Config(data=DataConfig(augment=("translate", "altflip")))
    assert make_epoch_augment(("translate", "flip")) is None
    preprocess, _ = preprocessing(cfg)  # builds: altflip is not one of the float augmentations
    assert "altflip" not in AUGMENTATIONS and preprocess(jax.random.key(0), DATA[0][:2]).shape == (2, 28, 28, 1)
    n, batch = 64, 16
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, :, 0] = 255  # a white left column: mirrored, it is on the right

    def step_fn(st, x, y):  # counts the mirrored images it is given, as its "loss"
        mirrored = jnp.sum(x[:, 0, -1, 0] == 255).astype(jnp.float32)
        return st.replace(step=st.step + 1), (mirrored, jnp.int32(0), jnp.bool_(True))

    state = TrainState(step=jnp.int32(0), params={}, opt_state=(), batch_stats={}, key=jax.random.PRNGKey(0), ema={})
    counts = []
    for augment in (make_epoch_augment(cfg.data.augment), None):
        st = state
        for _ in range(2):
            st, m = train_chunk(st, jnp.asarray(images), jnp.zeros(n, jnp.int32), step_fn=step_fn, steps=n // batch,
                                steps_per_epoch=n // batch, global_batch=batch, epoch_augment=augment)
            counts.append(int(m["loss_sum"]))
    assert 0 < counts[0] < n and counts[0] + counts[1] == n and counts[2:] == [0, 0]
    trained = []  # and the Trainer hands them to its loop: one step with them differs from one without
    for augment in (("altflip",), ()):
        config = cfg.override({"data.augment": augment, "train.batch_size": 32, "train.microbatch": 0})
        t = Trainer(_tiny(), config, len(DATA[0]), (28, 28, 1), *preprocessing(config))
        trained.append(t.host_state(t.train_chunk(t.init_state(), t.put_data(*DATA), 1)[0]).params)
    assert not all(np.array_equal(a, b) for a, b in zip(*map(jax.tree.leaves, trained), strict=True))


def test_batch_norm_biases_learn_at_their_own_rate():
    """``--bn-bias-lr 8``: one step moves the batch-norm biases 8x as far as ``1`` does, every other weight the
    same; a model without batch norm refuses the flag in one line."""
    moved = []
    for scale in (1.0, 8.0):
        config = Config(train=TrainConfig(batch_size=32, lr=3e-3, microbatch=None, bn_bias_lr=scale))
        t = Trainer(_tiny(), config, len(DATA[0]), (28, 28, 1))
        before = t.host_state(t.init_state()).params
        after = t.host_state(t.train_chunk(t.init_state(), t.put_data(*DATA), 1)[0]).params
        moved.append(jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), before, after))
    biases = [k for k in moved[0] if k.startswith("BatchNorm")]
    assert len(biases) == 8 and all(np.abs(moved[0][k]["bias"]).max() > 0 for k in biases)
    for name, layer in moved[0].items():
        for leaf, delta in layer.items():
            factor = 8.0 if name in biases and leaf == "bias" else 1.0
            np.testing.assert_allclose(moved[1][name][leaf], factor * delta, rtol=1e-5, atol=1e-9)
    with pytest.raises(ConfigError, match=r"^--bn-bias-lr 8: model 'lab_cnn' has no batch norm; drop it, or pick"):
        config = Config(train=TrainConfig(bn_bias_lr=8.0))
        Trainer(build_model(config, 10, (28, 28, 1)), config, len(DATA[0]), (28, 28, 1))
    with pytest.raises(ConfigError, match=r"^--bn-bias-lr must be a finite number in \(0, 1e6\], got 0"):
        TrainConfig(bn_bias_lr=0)


def test_lookahead_is_optaxs_with_the_slow_weights_in_the_optimizer_state():
    """``train.lookahead``: optax's Lookahead step for step (its params pair against our plain params), and
    through the Trainer: right after each sync the weights are the slow ones, between syncs they move on."""
    tx = optax.adam(0.1)
    ours, ref = lookahead(tx, 3), optax.lookahead(tx, 3, 0.5)
    p = {"w": jnp.array([1.0, -2.0])}
    pair = optax.LookaheadParams.init_synced(p)
    mine, theirs = ours.init(p), ref.init(pair)
    loss = lambda q: jnp.sum((q["w"] - 3.0) ** 2)  # noqa: E731
    for _ in range(7):
        u, mine = ours.update(jax.grad(loss)(p), mine, p)
        v, theirs = ref.update(jax.grad(loss)(pair.fast), theirs, pair)
        p, pair = optax.apply_updates(p, u), optax.apply_updates(pair, v)
        np.testing.assert_array_equal(p["w"], pair.fast["w"])
        np.testing.assert_array_equal(mine.slow["w"], pair.slow["w"])
    assert not np.array_equal(p["w"], mine.slow["w"])  # step 7: one past the sync at 6
    config = Config(train=TrainConfig(batch_size=32, lr=3e-3, microbatch=None, lookahead=2))
    t = Trainer(_tiny(), config, len(DATA[0]), (28, 28, 1))
    state, data = t.init_state(), t.put_data(*DATA)
    apart = []  # the weights' largest distance from the slow weights after steps 1, 2, 3
    for _ in range(3):
        state = t.train_chunk(state, data, 1)[0]
        host = t.host_state(state)
        apart.append(max(float(np.abs(a - b).max()) for a, b in zip(
            jax.tree.leaves(host.params), jax.tree.leaves(host.opt_state.slow), strict=True)))
    assert apart[1] < 1e-6 < 1e-4 < min(apart[0], apart[2])  # synced at step 2 (to rounding), not at 1 or 3
    with pytest.raises(ConfigError, match=r"^--lookahead must be >= 1 \(or none: off\), got 0"):
        TrainConfig(lookahead=0)


def test_the_issue38_variants_run_as_the_user_types_them(fashion_tfds_dir, tmp_path):
    """The new flags through the ablation script's command (tiny runs): the 2x2 patch stem and alternating flips,
    recorded in each run's config; the flips' run evaluated with the shifted views too."""
    mod = runpy.run_path(str(ROOT / "benchmarks" / "ablation.py"), run_name="bench")
    names = [n for n, _ in mod["ON_FAST"]]
    first, last = names.index("+ 2x2 patch stem (no 28x28 layer)"), names.index("+ alternating flips (fast: random)")
    report = mod["main"](["--smoke", "--table", "issue38", "--first", str(first), "--upto", str(last), "--seeds", "0",
                          "--workdir", str(tmp_path), "--", "--data-dir", str(fashion_tfds_dir), "--tta", "flip",
                          "shift"])
    configs = [json.loads((Path(r["run_dir"]) / "config.json").read_text()) for r in report["runs"]]
    assert [c["model"]["stem"] for c in configs] == ["patch", "patch", None]
    assert configs[-1]["data"]["augment"] == ["translate", "altflip"]
    assert configs[-1]["data"]["tta"] == ["flip", "shift"]
    assert all(0 <= r["val_accuracy"] <= 1 for r in report["runs"])
    # benchmarks/tta.py on the last run: its validation split rebuilt from the run's config, the test split unread
    tta = runpy.run_path(str(ROOT / "benchmarks" / "tta.py"), run_name="bench")["main"](
        [report["runs"][-1]["run_dir"], "--views", "none", "flip,shift", "--json", str(tmp_path / "tta.json")])
    rows = tta["table"]
    assert [r["views"] for r in rows] == [[], ["flip", "shift"]] and rows[0]["mean_difference"] == 0
    assert rows[1]["val_accuracy"][0] == pytest.approx(report["runs"][-1]["val_accuracy"], abs=1 / 200)
    assert json.loads((tmp_path / "tta.json").read_text())["table"] == rows


def test_the_optimizer_variants_run_and_resume_as_the_user_types_them(fashion_tfds_dir, tmp_path):
    """``--bn-bias-lr`` and ``--lookahead`` through the ablation script's command (tiny runs), recorded in each
    run's config; a lookahead run's state (its slow weights in the optimizer state) saved after one step and
    resumed equals two steps straight."""
    mod = runpy.run_path(str(ROOT / "benchmarks" / "ablation.py"), run_name="bench")
    names = [n for n, _ in mod["ON_FAST"]]
    first = names.index("+ batch-norm biases at 8x the learning rate")
    report = mod["main"](["--smoke", "--table", "issue38", "--first", str(first), "--upto", str(first + 1),
                          "--seeds", "0", "--workdir", str(tmp_path), "--", "--data-dir", str(fashion_tfds_dir)])
    configs = [json.loads((Path(r["run_dir"]) / "config.json").read_text())["train"] for r in report["runs"]]
    assert [(c["bn_bias_lr"], c["lookahead"]) for c in configs] == [(8.0, None), (1.0, 5)]
    assert all(0 <= r["val_accuracy"] <= 1 for r in report["runs"])
    config = Config(train=TrainConfig(batch_size=32, lr=3e-3, microbatch=None, lookahead=3))

    def trainer() -> Trainer:
        return Trainer(_tiny(), config, len(DATA[0]), (28, 28, 1))

    ref = trainer()
    expected = ref.host_state(train(ref, DATA, 2))
    a, ck = trainer(), RunCheckpointer(tmp_path / "ck")
    ck.save(8, a.host_state(train(a, DATA, 1)), {})
    ck.wait()
    b = trainer()
    got = b.host_state(train(b, DATA, 1, b.place_state(ck.restore(b.abstract_state()).state)))
    ck.close()
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(got.opt_state.lookahead.steps_since_sync) == 16 % 3


def test_the_whitening_stem_runs_as_the_user_types_it(fashion_tfds_dir, tmp_path):
    """``--stem whiten`` through the ablation script's command (a tiny run): the run's saved stem is the whitening
    kernel of its first 5,000 standardised training images, unchanged by training (AdamW's decay included)."""
    from cnn_jax.inference import load
    from cnn_jax.models import whitening_kernel
    from cnn_jax.trainer import load_data

    mod = runpy.run_path(str(ROOT / "benchmarks" / "ablation.py"), run_name="bench")
    i = [n for n, _ in mod["ON_FAST"]].index("+ whitening stem (frozen 3x3, no batch norm)")
    report = mod["main"](["--smoke", "--table", "issue38", "--first", str(i), "--upto", str(i), "--seeds", "0",
                          "--workdir", str(tmp_path), "--", "--data-dir", str(fashion_tfds_dir)])
    run = load(report["runs"][0]["run_dir"], "latest")
    assert run.config.model.stem == "whiten" and run.config.train.weight_decay > 0 and run.step > 0
    splits, _, eval_preprocess = load_data(run.config)
    expected = whitening_kernel(np.asarray(eval_preprocess(None, splits.train.images[:5000])), 3,
                                run.config.model.widths[0])
    np.testing.assert_array_equal(run.variables["params"]["Conv_0"]["kernel"], expected)
    assert np.any(run.variables["params"]["Conv_0"]["bias"])  # the bias trains

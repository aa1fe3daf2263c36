import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import make_data

from cnn_jax.config import TrainConfig
from cnn_jax.fit import fit
from cnn_jax.models import LabCNN, get_model
from cnn_jax.steps import default_preprocess
from cnn_jax.train_state import make_optimizer, make_schedule
from cnn_jax.trainer import NonFiniteLossError, Trainer

TINY = dict(widths=(8, 16), dense=32, dropout=0.1)
TRAIN = make_data(1024, seed=0)
VAL = make_data(300, seed=1)  # 300 = 2 full eval batches of 128 + a partial one
BASE = TrainConfig(epochs=2, batch_size=64, eval_batch_size=128, steps_per_chunk=8, lr=3e-3)


def tiny(**kw):
    return LabCNN(**{**TINY, **kw})


def params_of(result):
    return jax.tree.map(np.asarray, result.trainer.host_state(result.state).params)


def test_learns_synthetic_data(tmp_path):
    cfg = BASE.replace(epochs=12, schedule="cosine", warmup_steps=16)  # 16 steps/epoch -> 192 steps
    log = tmp_path / "log.jsonl"
    res = fit(tiny(), cfg, TRAIN, VAL, log_path=log, progress=False)
    hist = res.history
    assert len(hist) == 12
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["val_accuracy"] > 0.6  # chance is 0.1
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == list(range(1, 13))
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s"} <= set(lines[0])
    assert np.asarray(lines[-1]["val_confusion"]).sum() == len(VAL[1])
    assert res.trainer.trace_counts == {"train_chunk": 1, "evaluate": 1}


def test_deterministic_and_no_retrace():
    runs = [fit(tiny(), BASE, TRAIN, progress=False) for _ in range(2)]
    chex.assert_trees_all_equal(params_of(runs[0]), params_of(runs[1]))  # bit-identical
    # 2 epochs x 2 chunks of 8 steps: one trace of the chunk function
    assert runs[0].trainer.trace_counts["train_chunk"] == 1
    other = fit(tiny(), BASE.replace(seed=1), TRAIN, progress=False)
    assert not np.array_equal(params_of(other)["Dense_1"]["kernel"], params_of(runs[0])["Dense_1"]["kernel"])


def test_chunk_function_traced_once_with_chex():
    trainer = Trainer(tiny(), BASE, len(TRAIN[0]), TRAIN[0].shape[1:])
    state, data = trainer.init_state(), trainer.put_data(*TRAIN)
    chunk_fn = trainer._chunk_fns.setdefault(8, trainer._build_chunk(8))
    counted = chex.assert_max_traces(n=1)(chunk_fn.__wrapped__)
    fn = jax.jit(counted, donate_argnums=0)
    for _ in range(2 * trainer.steps_per_epoch // 8):  # two epochs
        state, _ = fn(state, *data)
    assert int(state.step) == 2 * trainer.steps_per_epoch


def test_resume_matches_uninterrupted_run():
    full = fit(tiny(), BASE, TRAIN, progress=False)
    first = fit(tiny(), BASE, TRAIN, progress=False, callbacks=[lambda e, s, m: True])  # stop after epoch 1
    assert len(first.history) == 1
    resumed = fit(tiny(), BASE, TRAIN, progress=False, state=first.state)
    assert [h["epoch"] for h in resumed.history] == [2]
    chex.assert_trees_all_equal(params_of(full), params_of(resumed))


def test_non_finite_loss_stops_with_last_good_state():
    cfg = BASE.replace(optimizer="sgd", lr=1e30, momentum=0.0, steps_per_chunk=4)
    with pytest.raises(NonFiniteLossError, match=r"step \d+") as info:
        fit(tiny(dropout=0.0), cfg, TRAIN, progress=False)
    err = info.value
    assert 1 <= err.step < 2 * (len(TRAIN[0]) // 64)
    assert int(err.state.step) == err.step
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(err.state.params))
    # the kept state is exactly what training for err.step steps gives
    trainer = Trainer(tiny(dropout=0.0), cfg, len(TRAIN[0]), TRAIN[0].shape[1:])
    state, _ = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=err.step)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), err.state.params)


def test_evaluate_partial_batch_and_confusion():
    cfg = BASE.replace(eval_batch_size=128)
    trainer = Trainer(tiny(), cfg, len(TRAIN[0]), TRAIN[0].shape[1:])
    state = trainer.init_state()
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    logits = trainer.model.apply({"params": state.params}, default_preprocess(None, jnp.asarray(VAL[0])))
    pred = np.asarray(jnp.argmax(logits, -1))
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (VAL[1], pred), 1)
    np.testing.assert_array_equal(ev["confusion"], expected)
    assert ev["accuracy"] == pytest.approx(np.mean(pred == VAL[1]), abs=1e-6)
    lse = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, VAL[1][:, None], -1)[:, 0]
    assert ev["loss"] == pytest.approx(float(lse.mean()), rel=1e-4)


def test_evaluate_with_flip_tta_averages_mirrored_logits():
    trainer = Trainer(tiny(), BASE, len(TRAIN[0]), TRAIN[0].shape[1:], tta=("flip",))
    state = trainer.init_state()
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    x = default_preprocess(None, jnp.asarray(VAL[0]))
    apply = lambda v: trainer.model.apply({"params": state.params}, v)  # noqa: E731
    logits = (apply(x) + apply(x[:, :, ::-1])) / 2
    pred = np.asarray(jnp.argmax(logits, -1))
    assert not np.array_equal(pred, np.asarray(jnp.argmax(apply(x), -1)))  # the views change predictions
    assert ev["accuracy"] == pytest.approx(np.mean(pred == VAL[1]), abs=1e-6)
    lse = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, VAL[1][:, None], -1)[:, 0]
    assert ev["loss"] == pytest.approx(float(lse.mean()), rel=1e-4)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        Trainer(tiny(), BASE, len(TRAIN[0]), TRAIN[0].shape[1:], tta=("rotate",))


@pytest.mark.parametrize("opt,schedule", [("adamw", "onecycle"), ("sgd", "cosine"), ("adam", "constant")])
def test_optimizers_schedules_regularisers(opt, schedule):
    cfg = BASE.replace(optimizer=opt, schedule=schedule, weight_decay=1e-4, clip=1.0, label_smoothing=0.1,
                       warmup_steps=4, epochs=1, lr=1e-2)
    res = fit(tiny(), cfg, TRAIN, VAL, progress=False)
    assert np.isfinite(res.history[0]["train_loss"])
    sched = make_schedule(cfg, 100)
    assert float(sched(0)) < cfg.lr + 1e-12
    make_optimizer(cfg, 100)  # builds


def test_bf16_mixed_precision_keeps_f32_master_weights():
    cfg = BASE.replace(precision="bf16")
    trainer = Trainer(get_model("bn_cnn", widths=(8, 16), dense=16), cfg, len(TRAIN[0]), TRAIN[0].shape[1:])
    state, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=4)
    state = trainer.host_state(state)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(state.params))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(state.batch_stats))
    assert np.isfinite(float(m["loss_sum"])) and int(m["bad_step"]) == -1
    losses = {}
    for precision in ("f32", "bf16"):  # bf16 compute tracks f32 closely over a few steps
        trainer = Trainer(tiny(), BASE.replace(precision=precision), len(TRAIN[0]), TRAIN[0].shape[1:])
        _, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=8)
        losses[precision] = float(m["loss_sum"]) / 8
    assert losses["bf16"] == pytest.approx(losses["f32"], abs=0.03)


def test_early_stopping_and_config_validation():
    cfg = BASE.replace(lr=0.0, epochs=5, early_stopping_patience=1)  # val accuracy never improves
    res = fit(tiny(), cfg, TRAIN, VAL, progress=False)
    assert res.stopped_early and len(res.history) == 2
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="larger than the training set"):
        Trainer(tiny(), BASE.replace(batch_size=4096), 1024, (28, 28, 1))


def test_microbatch_accumulation_matches_full_batch():
    model = tiny(dropout=0.0)
    cfg = BASE.replace(optimizer="sgd", lr=0.05, momentum=0.0)  # plain SGD: params move by the gradient
    out = {}
    for micro in (None, 16):
        trainer = Trainer(model, cfg.replace(microbatch=micro), len(TRAIN[0]), TRAIN[0].shape[1:])
        state, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=4)
        out[micro] = (jax.tree.map(np.asarray, state.params), float(m["loss_sum"]), int(m["correct"]))
    chex.assert_trees_all_close(out[None][0], out[16][0], rtol=1e-4, atol=1e-6)
    assert out[None][1] == pytest.approx(out[16][1], rel=1e-5) and out[None][2] == out[16][2]
    with pytest.raises(ValueError, match="must divide"):
        Trainer(model, cfg.replace(microbatch=24), len(TRAIN[0]), TRAIN[0].shape[1:])  # 64 % 24: at construction

"""The compiled train/eval functions (:class:`cnn_jax.trainer.Trainer`) on synthetic data, one device."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from synthetic import make_data, train

from cnn_jax.backend import INFERENCE_IMPL
from cnn_jax.config import Config, ConfigError, DataConfig, RunConfig, TrainConfig
from cnn_jax.models import LabCNN, get_model
from cnn_jax.steps import default_preprocess, evaluate, inference_model
from cnn_jax.train_state import bind, make_schedule
from cnn_jax.trainer import NonFiniteLossError, Trainer

TINY = dict(widths=(8, 16), dense=32, dropout=0.1)
TRAIN = make_data(1024, seed=0)
VAL = make_data(300, seed=1)  # 300 = 2 full eval batches of 128 + a partial one
BASE = TrainConfig(epochs=2, batch_size=64, lr=3e-3)


def tiny(**kw):
    return LabCNN(**{**TINY, **kw}, rngs=nnx.Rngs(0))


def eval_apply(model, params, x):
    """Evaluation-mode logits of ``model`` holding ``params``."""
    m = bind(model, params, {})
    m.eval()
    return m(x)


def trainer_for(model=None, cfg=BASE, tta=(), **run):
    config = Config(data=DataConfig(tta=tta), train=cfg, run=RunConfig(eval_batch_size=128, **run))
    return Trainer(model or tiny(), config, len(TRAIN[0]), TRAIN[0].shape[1:])


def params_of(trainer, state):
    return trainer.host_state(state).params


def test_learns_and_each_function_compiles_once():
    trainer = trainer_for(cfg=BASE.replace(epochs=12, schedule="cosine", warmup_steps=16))  # 16 steps/epoch
    val = trainer.put_data(*VAL, for_eval=True)
    before = trainer.evaluate(trainer.init_state(), val)
    state = None
    for _ in range(12):  # an epoch in two chunks of 8 steps, then an evaluation, as the loop does
        state = train(trainer, TRAIN, 1, state, chunk=8)
        ev = trainer.evaluate(state, val)
    assert ev["loss"] < 0.5 * before["loss"]
    assert ev["accuracy"] > 0.6  # chance is 0.1
    assert int(trainer.host_state(state).step) == 12 * 16
    assert trainer.trace_counts == {"train_chunk": 1, "evaluate": 1}  # the Trainer's own traces


def test_deterministic_by_seed():
    runs = [(t := trainer_for(), train(t, TRAIN, 2)) for _ in range(2)]
    chex.assert_trees_all_equal(*(params_of(t, s) for t, s in runs))  # bit-identical
    other = trainer_for(cfg=BASE.replace(seed=1))
    a, b = params_of(other, train(other, TRAIN, 2))["Dense_1"]["kernel"], params_of(*runs[0])["Dense_1"]["kernel"]
    assert not np.array_equal(a, b)


def test_resume_from_host_state_matches_uninterrupted_run():
    full = trainer_for()
    expected = params_of(full, train(full, TRAIN, 2))
    first = trainer_for()
    host = first.host_state(train(first, TRAIN, 1))  # what a checkpoint holds
    second = trainer_for()
    resumed = train(second, TRAIN, 1, second.place_state(host))
    chex.assert_trees_all_equal(expected, params_of(second, resumed))


def test_non_finite_loss_stops_with_last_good_state():
    cfg = BASE.replace(optimizer="sgd", lr=1e30, momentum=0.0)
    trainer = trainer_for(tiny(dropout=0.0), cfg)
    with pytest.raises(NonFiniteLossError, match=r"step \d+") as info:
        train(trainer, TRAIN, 2, chunk=4)
    err = info.value
    assert 1 <= err.step < 2 * (len(TRAIN[0]) // 64)
    assert int(err.state.step) == err.step
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(err.state.params))
    # the kept state is exactly what training for err.step steps gives
    again = trainer_for(tiny(dropout=0.0), cfg)
    state, _ = again.train_chunk(again.init_state(), again.put_data(*TRAIN), steps=err.step)
    chex.assert_trees_all_equal(params_of(again, state), err.state.params)


def test_evaluate_partial_batch_and_confusion():
    trainer = trainer_for()
    state = trainer.init_state()
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    logits = eval_apply(trainer.model, state.params, default_preprocess(None, jnp.asarray(VAL[0])))
    pred = np.asarray(jnp.argmax(logits, -1))
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (VAL[1], pred), 1)
    np.testing.assert_array_equal(ev["confusion"], expected)
    assert ev["accuracy"] == pytest.approx(np.mean(pred == VAL[1]), abs=1e-6)
    lse = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, VAL[1][:, None], -1)[:, 0]
    assert ev["loss"] == pytest.approx(float(lse.mean()), rel=1e-4)


def test_evaluate_with_flip_tta_averages_mirrored_logits():
    trainer = trainer_for(tta=("flip",))
    state = trainer.init_state()
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    x = default_preprocess(None, jnp.asarray(VAL[0]))
    apply = lambda v: eval_apply(trainer.model, state.params, v)  # noqa: E731
    logits = (apply(x) + apply(x[:, :, ::-1])) / 2
    pred = np.asarray(jnp.argmax(logits, -1))
    assert not np.array_equal(pred, np.asarray(jnp.argmax(apply(x), -1)))  # the views change predictions
    assert ev["accuracy"] == pytest.approx(np.mean(pred == VAL[1]), abs=1e-6)
    lse = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, VAL[1][:, None], -1)[:, 0]
    assert ev["loss"] == pytest.approx(float(lse.mean()), rel=1e-4)
    with pytest.raises(ConfigError, match=r"--tta: unknown \['rotate'\]"):
        DataConfig(tta=("rotate",))


@pytest.mark.parametrize("opt,schedule", [("adamw", "onecycle"), ("sgd", "cosine"), ("adam", "constant")])
def test_optimizers_schedules_regularisers(opt, schedule):
    cfg = BASE.replace(optimizer=opt, schedule=schedule, weight_decay=1e-4, clip=1.0, label_smoothing=0.1,
                       warmup_steps=4, epochs=1, lr=1e-2)
    trainer = trainer_for(cfg=cfg)
    state, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=8)
    assert int(m["bad_step"]) == -1 and int(m["good_steps"]) == 8 and np.isfinite(float(m["loss_sum"]))
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params_of(trainer, state),
                         params_of(trainer, trainer.init_state()))
    assert min(jax.tree.leaves(moved)) > 0  # every parameter was updated
    sched = make_schedule(cfg, 100)
    lrs = np.array([float(sched(i)) for i in range(100)])
    assert lrs[0] < cfg.lr and lrs.max() == pytest.approx(cfg.lr, rel=1e-3) and (lrs <= cfg.lr * (1 + 1e-6)).all()
    if schedule != "constant":
        assert lrs[-1] < 0.05 * cfg.lr  # decays


def test_bf16_mixed_precision_keeps_f32_master_weights():
    trainer = trainer_for(get_model("bn_cnn", widths=(8, 16), dense=16), BASE.replace(precision="bf16"))
    state, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=4)
    state = trainer.host_state(state)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(state.params))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(state.batch_stats))
    assert np.isfinite(float(m["loss_sum"])) and int(m["bad_step"]) == -1
    losses = {}
    for precision in ("f32", "bf16"):  # bf16 compute tracks f32 closely over a few steps
        trainer = trainer_for(cfg=BASE.replace(precision=precision))
        _, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=8)
        losses[precision] = float(m["loss_sum"]) / 8
    assert losses["bf16"] == pytest.approx(losses["f32"], abs=0.03)


def test_bf16_runs_evaluate_in_bf16():
    """A bf16 run evaluates as it trains, in bfloat16 (:func:`cnn_jax.steps.eval_logits`), not in float32."""
    model = get_model("bn_cnn", widths=(8, 16), dense=16)
    trainer = trainer_for(model, BASE.replace(precision="bf16"), tta=("flip",))
    state, _ = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=4)
    val = trainer.put_data(*VAL, for_eval=True)
    got = trainer.evaluate(state, val)
    want = {p: jax.jit(functools.partial(evaluate, model=model, batch=128, tta=("flip",), compute_dtype=d))(state, *val)
            for p, d in (("bf16", jnp.bfloat16), ("f32", jnp.float32))}
    assert float(got["loss"]) == pytest.approx(float(want["bf16"]["loss"]), abs=1e-6)
    np.testing.assert_array_equal(got["confusion"], want["bf16"]["confusion"])
    assert abs(float(want["bf16"]["loss"]) - float(want["f32"]["loss"])) > 1e-5  # the precision is visible


def test_evaluation_takes_the_native_ops_and_training_the_backends():
    """Evaluation runs the forward-only rule (:data:`cnn_jax.backend.INFERENCE_IMPL`: XLA's own convolution and
    pooling) on the parameters training made with the backend's (im2col on CPU); a model whose ``impl`` is set
    keeps it. Both give the same evaluation to rounding."""
    model = get_model("resnet", widths=(8, 8, 16, 16))
    native = inference_model(model)
    assert model.impl is model.Conv_0.impl is None  # unchanged
    assert native.impl == native.Conv_0.impl == INFERENCE_IMPL == "native"
    assert inference_model(nnx.with_attributes(model, impl="im2col")).Conv_3.impl == "im2col"
    im2col = tiny(impl="im2col")
    assert inference_model(im2col) is im2col
    trainer = trainer_for(model, tta=("flip",))
    data = trainer.put_data(*TRAIN)
    state, _ = trainer.train_chunk(trainer.init_state(), data, steps=4)
    val = trainer.put_data(*VAL, for_eval=True)
    evaluation = trainer._eval_fn.lower(state, *val).as_text()
    training = trainer._chunk_fn.lower(state, *data, np.int32(4), (np.float32(0), np.int32(0))).as_text()
    assert "convolution" in evaluation and "reduce_window" in evaluation
    assert ("convolution" in training) == (jax.default_backend() != "cpu")  # CPU trains with im2col
    got = trainer.evaluate(state, val)
    want = {impl: jax.jit(functools.partial(evaluate, model=nnx.with_attributes(model, impl=impl), batch=128,
                                            tta=("flip",)))(state, *val) for impl in ("native", "im2col")}
    assert float(got["loss"]) == float(want["native"]["loss"])
    np.testing.assert_array_equal(got["confusion"], want["native"]["confusion"])
    assert float(want["im2col"]["loss"]) == pytest.approx(float(got["loss"]), rel=1e-5)
    assert float(want["im2col"]["accuracy"]) == pytest.approx(float(got["accuracy"]), abs=2 / len(VAL[0]))


def test_trainer_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="larger than the training set"):
        Trainer(tiny(), Config(train=BASE.replace(batch_size=4096)), 1024, (28, 28, 1))


def test_microbatch_accumulation_matches_full_batch():
    model = tiny(dropout=0.0)
    cfg = BASE.replace(optimizer="sgd", lr=0.05, momentum=0.0)  # plain SGD: params move by the gradient
    out = {}
    for micro in (None, 16):
        trainer = trainer_for(model, cfg.replace(microbatch=micro))
        state, m = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=4)
        out[micro] = (params_of(trainer, state), float(m["loss_sum"]), int(m["correct"]))
    chex.assert_trees_all_close(out[None][0], out[16][0], rtol=1e-4, atol=1e-6)
    assert out[None][1] == pytest.approx(out[16][1], rel=1e-5) and out[None][2] == out[16][2]
    with pytest.raises(ConfigError, match="--microbatch 24 must divide --batch-size 64"):
        cfg.replace(microbatch=24)  # checked where the config is built
    with pytest.raises(ValueError, match="must divide the per-device batch 12"):  # pmap: 96 / 8 devices
        trainer_for(model, cfg.replace(batch_size=96, microbatch=8), parallelism="pmap")


def test_evaluate_with_flip_and_shift_tta_averages_six_views():
    """``("flip", "shift")``: the image, its mirror, and each moved one pixel up-left and down-right (edges
    repeated), six views averaged."""
    trainer = trainer_for(tta=("flip", "shift"))
    state = trainer.init_state()
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    x = np.asarray(default_preprocess(None, jnp.asarray(VAL[0])))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    shifted = lambda v: [v[:, 2:, 2:][:, :28, :28], v[:, :28, :28]]  # noqa: E731
    mirror = x[:, :, ::-1]
    views = [x, mirror, *shifted(padded), *shifted(np.pad(mirror, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"))]
    logits = sum(eval_apply(trainer.model, state.params, jnp.asarray(v)) for v in views) / 6
    assert ev["accuracy"] == pytest.approx(np.mean(np.asarray(jnp.argmax(logits, -1)) == VAL[1]), abs=1e-6)
    lse = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, VAL[1][:, None], -1)[:, 0]
    assert ev["loss"] == pytest.approx(float(lse.mean()), rel=1e-4)

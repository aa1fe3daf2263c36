"""The per-backend rules (:mod:`cnn_jax.backend`): each backend's branch is taken when JAX's default backend says
so (patched here), where the package makes the decision (ops, Trainer, config). Every test names the backend it
pretends to be on, so that they also hold on a GPU (``benchmarks/device_check.py`` runs them there)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from cnn_jax import backend, conv2d, default_impl
from cnn_jax.config import Config, RunConfig, TrainConfig
from cnn_jax.models import BNCNN, LabCNN
from cnn_jax.ops import dot_general
from cnn_jax.train_state import bind, model_state
from cnn_jax.trainer import Trainer, resolve_microbatch

X = jnp.ones((2, 8, 8, 3))
K = jnp.ones((3, 3, 3, 4))
SHAPE = (28, 28, 1)


@pytest.fixture
def on(monkeypatch):
    """``on("gpu")``: JAX's default backend reads as "gpu" from now on in this test."""
    def set_backend(name: str) -> None:
        monkeypatch.setattr(jax, "default_backend", lambda: name)
    return set_backend


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (custom_vjp, scan, pjit bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _precisions(fn, *args) -> dict[str, set]:
    """``{primitive: {precision params}}`` of the conv and dot equations ``fn`` traces to."""
    out: dict[str, set] = {}
    for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr):
        if e.primitive.name in ("conv_general_dilated", "dot_general"):
            p = e.params["precision"]
            out.setdefault(e.primitive.name, set()).add(None if p is None else tuple(p))
    return out


HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)


# ------------------------------------------------------------------------------------------ conv impl
def test_conv_impl_follows_the_backend(on):
    on("cpu")
    assert backend.conv_impl() == default_impl() == "im2col"
    assert "conv_general_dilated" not in _precisions(lambda x, k: conv2d(x, k), X, K)
    for name in ("gpu", "tpu"):
        on(name)
        assert backend.conv_impl() == default_impl() == "native"
        assert "conv_general_dilated" in _precisions(lambda x, k: conv2d(x, k), X, K)  # conv2d takes that branch
    assert backend.conv_impl("cpu") == default_impl("cpu") == "im2col"  # a backend given wins


# ----------------------------------------------------------------------------------------- microbatch
@pytest.mark.parametrize("make,value", [(lambda: LabCNN(rngs=nnx.Rngs(0)), 16),
                                        (lambda: BNCNN(widths=(8, 16), rngs=nnx.Rngs(0)), 32)])
def test_auto_microbatch_on_cpu_and_off_on_gpu_tpu(on, make, value):
    model = nnx.eval_shape(make)  # its layers, no weights computed
    on("cpu")
    config = Config(train=TrainConfig(batch_size=128))
    assert resolve_microbatch(config, model).train.microbatch == value
    assert resolve_microbatch(config.replace(run=RunConfig(parallelism="pmap")), model).train.microbatch is None
    for name in ("gpu", "tpu"):
        on(name)
        assert resolve_microbatch(config, model).train.microbatch is None
    assert backend.auto_microbatch(True, 128, "none", "cpu") == 32  # the rule itself, backend given
    assert backend.auto_microbatch(False, 24, "none", "cpu") is None  # 16 does not divide 24
    assert backend.auto_microbatch(False, 16, "none", "cpu") is None  # not smaller than the batch


def test_a_trainer_built_on_gpu_records_no_microbatch(on):
    on("cpu")
    config = Config(train=TrainConfig(batch_size=64))
    assert Trainer(LabCNN(widths=(4, 8), dense=8, rngs=nnx.Rngs(0)), config, 256, SHAPE).cfg.microbatch == 16
    on("gpu")
    assert Trainer(LabCNN(widths=(4, 8), dense=8, rngs=nnx.Rngs(0)), config, 256, SHAPE).cfg.microbatch is None


# ---------------------------------------------------------------------------------- precision default
def test_precision_default_is_float32_on_every_backend(on):
    for name in ("cpu", "gpu", "tpu"):
        on(name)
        assert TrainConfig().precision == Config().train.precision == backend.DEFAULT_PRECISION == "f32"
        assert backend.describe()["precision"]["value"] == "f32"


# ------------------------------------------------------------------------------ float32 matmul precision
@pytest.mark.parametrize("impl", ["native", "im2col"])
def test_float32_convs_and_matmuls_are_full_precision_on_gpu_tpu(on, impl):
    on("cpu")
    conv = _precisions(lambda x, k: conv2d(x, k, impl=impl), X, K)
    assert set().union(*conv.values()) == {None}  # CPU: XLA's default, as before the rule
    for name in ("gpu", "tpu"):
        on(name)
        assert backend.matmul_precision(jnp.float32) == lax.Precision.HIGHEST
        conv = _precisions(lambda x, k: conv2d(x, k, impl=impl), X, K)
        assert conv and set().union(*conv.values()) == {HIGHEST}
        # a precision the caller gives is kept
        given = _precisions(lambda x, k: conv2d(x, k, impl=impl, precision="default"), X, K)
        assert HIGHEST not in set().union(*given.values())


def test_dense_layers_and_gradients_are_full_precision_on_gpu(on):
    model = LabCNN(widths=(4, 8), dense=8, impl="native", rngs=nnx.Rngs(0))
    x = jnp.ones((2, *SHAPE))
    params, _ = model_state(model)

    def loss(p):
        m = bind(model, p, {})
        m.eval()
        return m(x).sum()

    on("cpu")
    assert set().union(*_precisions(jax.grad(loss), params).values()) == {None}
    on("gpu")
    found = _precisions(jax.grad(loss), params)
    assert set(found) == {"conv_general_dilated", "dot_general"}  # forward and backward, convs and dense layers
    assert set().union(*found.values()) == {HIGHEST}


def test_low_precision_and_user_settings_are_left_alone_on_gpu(on):
    on("gpu")
    a = jnp.ones((4, 8), jnp.bfloat16)
    assert backend.matmul_precision(jnp.bfloat16) is None
    bf16 = _precisions(lambda a: dot_general(a, a.T, (((1,), (0,)), ((), ()))), a)
    assert set().union(*bf16.values()) == {None}
    with jax.default_matmul_precision("tensorfloat32"):  # the user's choice wins: nothing set by us
        assert backend.matmul_precision(jnp.float32) is None
        ours = _precisions(lambda x, k: conv2d(x, k), X, K)["conv_general_dilated"]
        plain = _precisions(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")), X, K)
        assert ours == plain["conv_general_dilated"] and HIGHEST not in ours  # what JAX makes of the user's setting


def test_describe_names_each_rule_its_value_and_reason(on):
    on("gpu")
    d = backend.describe()
    assert d["backend"] == "gpu"
    assert d["conv_impl"]["value"] == "native" and d["precision"]["value"] == "f32"
    assert d["matmul_precision"]["value"] == "highest"
    assert set(d["auto_microbatch"]["value"].values()) == {None}
    assert all(d[k]["reason"] for k in ("conv_impl", "auto_microbatch", "precision", "matmul_precision"))
    cpu = backend.describe("cpu")
    assert cpu["conv_impl"]["value"] == "im2col" and cpu["matmul_precision"]["value"] == "xla default"
    assert cpu["auto_microbatch"]["value"] == {"no batch norm, batch 128": 16, "batch norm, batch 128": 32}

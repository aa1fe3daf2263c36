import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.models import BNCNN, MODELS, Conv, LabCNN, get_model, register_model


def test_lab_cnn_shapes_match_keras_layout():
    model = LabCNN()
    x = jnp.zeros((3, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    shapes = jax.tree.map(lambda a: a.shape, variables["params"])
    assert shapes["Conv_0"]["kernel"] == (3, 3, 1, 32)
    assert shapes["Conv_1"]["kernel"] == (3, 3, 32, 64)
    assert shapes["Dense_0"]["kernel"] == (1600, 128)  # 28 -> 26 -> 13 -> 11 -> 5: 5*5*64
    assert shapes["Dense_1"]["kernel"] == (128, 10)
    assert model.apply(variables, x).shape == (3, 10)
    out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert out.shape == (3, 10)


def test_bn_cnn_shapes_and_batch_stats():
    model = BNCNN(widths=(8, 16, 32), dense=32)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert "batch_stats" in variables
    logits, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                                                   mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (4, 10)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"], variables["batch_stats"])
    assert any(jax.tree.leaves(changed))
    assert variables["params"]["Dense_0"]["kernel"].shape == (3 * 3 * 32, 32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_impls_agree(name):
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1))
    kw = {"lab_cnn": {"widths": (4, 8)}, "resnet": {"widths": (4, 8, 8, 8)}}.get(name, {"widths": (4, 8), "dense": 16})
    a, b = get_model(name, impl="native", **kw), get_model(name, impl="im2col", **kw)
    variables = a.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(a.apply(variables, x), b.apply(variables, x), rtol=1e-4, atol=1e-5)


def test_conv_module_matches_flax_conv():
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
    ours = Conv(5, padding="SAME")
    variables = ours.init(jax.random.PRNGKey(1), x)
    ref = nn.Conv(5, (3, 3), padding="SAME").apply(variables, x)
    np.testing.assert_allclose(ours.apply(variables, x), ref, rtol=1e-5, atol=1e-5)


def test_registry():
    assert get_model("lab_cnn", dropout=0.1).dropout == 0.1
    assert get_model("bn_cnn", widths=(16, 32)).widths == (16, 32)
    with pytest.raises(ValueError, match="unknown model"):
        get_model("resnet9000")
    register_model("tiny_lab", lambda **kw: LabCNN(widths=(2, 2), dense=4, **kw))
    try:
        assert get_model("tiny_lab").dense == 4
    finally:
        MODELS.pop("tiny_lab")


@pytest.mark.parametrize("impl", ["native", "im2col"])
def test_pools_differentiable_under_jit(impl):
    # regression: native max/avg pool used a traced init value, which broke reverse-mode AD under jit
    from cnn_jax.ops import avg_pool, max_pool

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
    for pool in (max_pool, avg_pool):
        for kw in ({"window": 2}, {"window": 3, "stride": 1, "padding": "SAME"}):
            g = jax.jit(jax.grad(lambda v, pool=pool, kw=kw: pool(v, impl=impl, **kw).sum()))(x)
            assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))

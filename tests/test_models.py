import jax
import jax.numpy as jnp
import linen_models  # the Linen models of every checkpoint saved before NNX
import numpy as np
import pytest
from flax import nnx

from cnn_jax.models import BNCNN, MODELS, Conv, LabCNN, get_model, register_model
from cnn_jax.train_state import bind, model_state

SMALL = {"lab_cnn": {"widths": (4, 8), "dense": 16}, "bn_cnn": {"widths": (4, 8), "dense": 16},
         "resnet": {"widths": (4, 8, 8, 8)}}


def test_lab_cnn_shapes_match_keras_layout():
    model = LabCNN(rngs=nnx.Rngs(0))
    x = jnp.zeros((3, 28, 28, 1))
    params, stats = model_state(model)
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes["Conv_0"]["kernel"] == (3, 3, 1, 32)
    assert shapes["Conv_1"]["kernel"] == (3, 3, 32, 64)
    assert shapes["Dense_0"]["kernel"] == (1600, 128)  # 28 -> 26 -> 13 -> 11 -> 5: 5*5*64
    assert shapes["Dense_1"]["kernel"] == (128, 10)
    assert stats == {}
    assert model(x).shape == (3, 10)
    assert LabCNN(input_shape=(32, 32, 3), rngs=nnx.Rngs(0))(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_train_and_eval_modes_switch_dropout_and_batch_norm():
    model = BNCNN(widths=(8, 16, 32), dense=32, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    assert model.Dropout_0.deterministic is False and model.BatchNorm_0.use_running_average is False
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    a, b = model(x), model(x)  # training mode: new dropout masks each call, running averages updated
    assert a.shape == (4, 10) and bool(jnp.any(a != b))
    moved = jax.tree.map(lambda u, v: bool(jnp.any(u != v)), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), stats)
    assert all(jax.tree.leaves(moved))
    np.testing.assert_array_equal(model(x, rngs=jax.random.key(3)), model(x, rngs=jax.random.key(3)))
    model.eval()
    assert model.Dropout_3.deterministic is True and model.BatchNorm_3.use_running_average is True
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    np.testing.assert_array_equal(model(x), model(x))
    same = jax.tree.map(lambda u, v: bool(jnp.all(u == v)), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), stats)
    assert all(jax.tree.leaves(same))
    assert model(x[:1]).shape == (1, 10)  # running averages: one image is enough


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reads_the_linen_variables_and_computes_the_same(name):
    """Runs saved before NNX hold the Linen models' variables: the NNX model's trees are the same (names, shapes)
    and, holding them, it computes the same logits, batch statistics and gradients."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    kw = {**SMALL[name], "dropout": 0.0, **({"conv_dropout": 0.0} if name == "bn_cnn" else {})}
    old = linen_models.get_model(name, **kw)
    variables = old.init(jax.random.PRNGKey(1), x)
    model = get_model(name, **kw)
    params, stats = model_state(model)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, variables["params"])
    assert jax.tree.map(jnp.shape, stats) == jax.tree.map(jnp.shape, variables.get("batch_stats", {}))
    new = bind(model, variables["params"], variables.get("batch_stats", {}))
    new.eval()
    np.testing.assert_array_equal(new(x), old.apply(variables, x))
    new.train()

    def linen_loss(p):
        out, upd = old.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
        return out.sum(), upd.get("batch_stats", {})

    def nnx_loss(p):
        m = bind(model, p, variables.get("batch_stats", {}))
        m.train()
        return m(x).sum(), nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

    (_, want_stats), want = jax.jit(jax.value_and_grad(linen_loss, has_aux=True))(variables["params"])
    (_, got_stats), got = jax.jit(jax.value_and_grad(nnx_loss, has_aux=True))(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got_stats, want_stats)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_impls_agree(name):
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1))
    a, b = get_model(name, impl="native", **SMALL[name]), get_model(name, impl="im2col", **SMALL[name])
    a.eval(), b.eval()
    np.testing.assert_allclose(a(x), b(x), rtol=1e-4, atol=1e-5)  # same rngs: same parameters


def test_conv_module_matches_flax_conv():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
    ours = Conv(3, 5, padding="SAME", rngs=nnx.Rngs(1))
    ref = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=nnx.Rngs(2))
    ref.kernel[...], ref.bias[...] = ours.kernel[...], jax.random.normal(jax.random.PRNGKey(3), (5,))
    ours.bias[...] = ref.bias[...]
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bf16_parameters_compute_in_bf16():
    model = get_model("bn_cnn", **SMALL["bn_cnn"])
    params, stats = model_state(model)
    m = bind(model, jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), stats)
    m.eval()
    assert m(jnp.zeros((2, 28, 28, 1), jnp.bfloat16)).dtype == jnp.bfloat16


def test_registry():
    assert get_model("lab_cnn", dropout=0.1).dropout == 0.1
    assert get_model("bn_cnn", widths=(16, 32)).widths == (16, 32)
    first, again, other = (model_state(get_model("lab_cnn", rngs=nnx.Rngs(s)))[0] for s in (0, 0, 1))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), first, again))
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), first, other))
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


def test_lecun_normal_is_flax_bit_for_bit_and_compiles_once_per_power_of_two():
    """cnn_jax's initializer draws what Flax's ``lecun_normal()`` draws, for convolution (HWIO) and dense kernels of
    every size, and compiles its draw once per power-of-two size (not once per shape)."""
    from cnn_jax.models import _truncated_normal_draws, lecun_normal

    flax_init = nnx.initializers.lecun_normal()
    shapes = [(3, 3, 1, 32), (3, 3, 4, 8), (1600, 128), (3, 3, 16, 16), (128, 10), (1, 1), (5, 7), (3, 3, 1, 5)]
    _truncated_normal_draws.clear_cache()  # what earlier tests in this process compiled does not count
    for i, shape in enumerate(shapes):
        key = jax.random.key(i)
        np.testing.assert_array_equal(lecun_normal(key, shape), flax_init(key, shape, jnp.float32), err_msg=str(shape))
    buckets = {1 << (int(np.prod(s)) - 1).bit_length() for s in shapes}
    assert _truncated_normal_draws._cache_size() == len(buckets) < len(shapes)


def test_resnet_patch_stem_runs_no_layer_at_full_resolution(monkeypatch):
    """``stem="patch"``: a 2x2 stride-2 convolution takes 28x28 to 14x14 and every later convolution sees at most
    14x14; ``stem="pool"``: the default stem, pooled; the default convolves the full image twice (the stem, then
    stage 1 before its pool)."""
    import cnn_jax.models as models

    def inputs(stem: str) -> list[tuple[int, ...]]:
        seen = []

        def conv2d(x, kernel, *args, **kw):
            seen.append((x.shape[1:3], kernel.shape[:2], kw.get("stride", 1)))
            return real(x, kernel, *args, **kw)

        real = models.conv2d
        monkeypatch.setattr(models, "conv2d", conv2d)
        model = models.ResNet(widths=(4, 8, 8, 8), stem=stem, rngs=nnx.Rngs(0))
        assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
        monkeypatch.setattr(models, "conv2d", real)
        return seen

    patch, conv, pool = inputs("patch"), inputs("conv"), inputs("pool")
    assert patch[0] == ((28, 28), (2, 2), 2) and max(s[0][0] for s in patch[1:]) == 14
    assert [s[0] for s in conv[:2]] == [(28, 28)] * 2 and conv[0][1:] == pool[0][1:] == ((3, 3), 1)
    assert pool[0][0] == (28, 28) and max(s[0][0] for s in pool[1:]) == 14
    assert len(patch) == len(conv) == len(pool)
    assert [s[0] for s in patch[1:]] == [s[0] for s in pool[1:]]  # the same from stage 1 on
    assert [s[0] for s in patch[2:]] == [s[0] for s in conv[2:]]  # the same after stage 1
    with pytest.raises(ValueError, match="unknown stem"):
        models.ResNet(stem="pixel", rngs=nnx.Rngs(0))


def test_dirac_init_starts_the_convolutions_after_the_stem_as_the_identity():
    from cnn_jax.models import ResNet, dirac

    k = np.asarray(dirac(jax.random.key(0), (3, 3, 4, 6)))
    x = np.asarray(jax.random.normal(jax.random.key(1), (1, 5, 5, 4)))
    y = np.asarray(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # the first filters copy their channel
    assert np.abs(k[..., 4:]).min() > 0 and np.asarray(dirac(jax.random.key(0), (3, 3, 6, 4)))[1, 1, :, :].trace() == 4
    model, plain = (ResNet(widths=(4, 8, 8, 8), init=init, rngs=nnx.Rngs(0)) for init in ("dirac", "lecun"))
    kernels = [np.asarray(model.Conv_0.kernel[...]), *(np.asarray(getattr(model, f"Conv_{i}").kernel[...])
                                                       for i in range(1, 8))]
    np.testing.assert_array_equal(kernels[0], plain.Conv_0.kernel[...])  # the stem as before
    for k in kernels[1:]:
        m = min(k.shape[2:])
        np.testing.assert_array_equal(k[1, 1, :m, :m], np.eye(m))
    with pytest.raises(ValueError, match="unknown init"):
        ResNet(init="zeros", rngs=nnx.Rngs(0))


def test_whitening_stem_decorrelates_the_patches_and_is_frozen():
    """``stem="whiten"``: the stem's kernel, set from data by ``init_from_data``, maps the images' 3x3 patches to
    unit, uncorrelated second moments (each direction and its negative); it is the model's only frozen parameter
    and no gradient reaches it."""
    from cnn_jax.models import ResNet, frozen_params, whitening_kernel
    from cnn_jax.ops import conv2d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1))
    x = ((x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3).astype(np.float32)  # neighbouring pixels correlated
    model = ResNet(widths=(8, 8, 8, 8), stem="whiten", rngs=nnx.Rngs(0))
    model.init_from_data(x)
    kernel = np.asarray(model.Conv_0.kernel[...])
    np.testing.assert_array_equal(kernel, whitening_kernel(x, 3, 8))
    np.testing.assert_array_equal(kernel[..., 1::2], -kernel[..., ::2])
    y = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(kernel), None, padding="VALID"))[..., ::2].reshape(-1, 4)
    np.testing.assert_allclose(y.T @ y / len(y), np.eye(4), atol=0.01)
    marks = frozen_params(model)
    assert [k for k, v in marks.items() if any(jax.tree.leaves(v))] == ["Conv_0"] and marks["Conv_0"] == {
        "kernel": True, "bias": False}
    assert "BatchNorm_0" in marks and model(jnp.asarray(x[:2])).shape == (2, 10)  # the stages' batch norms only
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x[:4])) ** 2))(model)
    assert not np.any(grads["Conv_0"]["kernel"][...]) and np.any(grads["Conv_0"]["bias"][...])
    with pytest.raises(ValueError, match=r"^stem 'whiten': a whitening layer of 3x3 patches of 1 channel\(s\) has an "
                       r"even number of filters up to 18 \(each direction and its negative\), got 20; pick another "
                       r"first --widths"):
        ResNet(widths=(20, 8, 8, 8), stem="whiten", rngs=nnx.Rngs(0))

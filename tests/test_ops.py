"""conv2d / max_pool / avg_pool against a direct numpy sliding-window oracle, and against each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from jax.test_util import check_grads

from cnn_jax import IMPLS, avg_pool, conv2d, conv_output_shape, default_impl, max_pool


# ------------------------------------------------------------------------------------------- oracles
def _pads(padding, size, window, stride, dilation):
    """TF/XLA SAME rule, computed independently of cnn_jax."""
    if padding == "VALID":
        return [(0, 0), (0, 0)]
    if padding == "SAME":
        out = []
        for n, k, s, d in zip(size, window, stride, dilation, strict=True):
            eff = d * (k - 1) + 1
            total = max((int(np.ceil(n / s)) - 1) * s + eff - n, 0)
            out.append((total // 2, total - total // 2))
        return out
    return [tuple(p) for p in padding]


def conv_oracle(x, k, b, stride, padding, dilation, groups):
    """Direct loop over output pixels (float64)."""
    n, h, w, c = x.shape
    kh, kw, ki, o = k.shape
    (pt, pb), (pl, pr) = _pads(padding, (h, w), (kh, kw), stride, dilation)
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    y = np.zeros((n, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride[0], j * stride[1]
            win = xp[:, r0: r0 + dilation[0] * (kh - 1) + 1: dilation[0], c0: c0 + dilation[1] * (kw - 1) + 1:
                     dilation[1], :]  # (n, kh, kw, c)
            for g in range(groups):
                y[:, i, j, g * og:(g + 1) * og] = np.einsum(
                    "nhwc,hwco->no", win[..., g * ki:(g + 1) * ki], k[..., g * og:(g + 1) * og])
    return y + (0 if b is None else b)


def pool_oracle(x, window, stride, padding, op):
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = _pads(padding, (h, w), window, stride, (1, 1))
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=np.nan)
    ho = (h + pt + pb - window[0]) // stride[0] + 1
    wo = (w + pl + pr - window[1]) // stride[1] + 1
    y = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride[0]: i * stride[0] + window[0], j * stride[1]: j * stride[1] + window[1]]
            y[:, i, j] = (np.nanmax if op == "max" else np.nanmean)(win, axis=(1, 2))
    return y


def _conv_cases(count=40, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        groups = int(rng.choice([1, 1, 2, 3]))
        c = groups * int(rng.integers(1, 4))
        o = groups * int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
        padding = rng.choice(["VALID", "SAME", "explicit"])
        if padding == "explicit":
            padding = tuple(tuple(int(v) for v in rng.integers(0, 3, size=2)) for _ in range(2))
        h = int(rng.integers(dilation[0] * (kh - 1) + 1, 13))
        w = int(rng.integers(dilation[1] * (kw - 1) + 1, 13))
        batched = bool(rng.integers(0, 2))
        bias = bool(rng.integers(0, 2))
        cases.append((int(rng.integers(1, 4)), h, w, c, kh, kw, o, stride, padding, dilation, groups, batched, bias))
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", _conv_cases(), ids=lambda c: str(c).replace(" ", ""))
def test_conv2d_matches_oracle(case, impl):
    n, h, w, c, kh, kw, o, stride, padding, dilation, groups, batched, use_bias = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((kh, kw, c // groups, o)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if use_bias else None
    want = conv_oracle(x, k, b, stride, padding, dilation, groups)
    got = conv2d(x if batched else x[0], k, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 impl=impl)
    if not batched:
        want = want[0]
    assert got.shape == want.shape == conv_output_shape(x.shape if batched else x.shape[1:], k.shape, stride,
                                                        padding, dilation)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_matches_scipy_correlate(impl):
    """A second, library oracle: scipy's 2D cross-correlation summed over input channels."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((15, 17, 3)).astype(np.float32)
    k = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    want = np.stack([sum(scipy.signal.correlate2d(x[..., ci], k[..., ci, co], mode="valid") for ci in range(3))
                     for co in range(2)], axis=-1)
    np.testing.assert_allclose(np.asarray(conv2d(x, k, impl=impl)), want, rtol=1e-4, atol=1e-4)


def _pool_cases(count=30, seed=3):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        window = tuple(int(v) for v in rng.integers(1, 4, size=2))
        stride = None if rng.integers(0, 2) else tuple(int(v) for v in rng.integers(1, 4, size=2))
        padding = str(rng.choice(["VALID", "SAME"]))
        h, w = (int(v) for v in rng.integers(3, 11, size=2))
        cases.append((int(rng.integers(1, 3)), h, w, int(rng.integers(1, 4)), window, stride, padding,
                      bool(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("case", _pool_cases(), ids=str)
def test_pool_matches_oracle(case, op, impl):
    n, h, w, c, window, stride, padding, batched = case
    x = np.random.default_rng(4).standard_normal((n, h, w, c)).astype(np.float32)
    want = pool_oracle(x, window, stride or window, padding, op)
    fn = max_pool if op == "max" else avg_pool
    got = fn(x if batched else x[0], window, stride, padding, impl=impl)
    np.testing.assert_allclose(np.asarray(got), want if batched else want[0], rtol=1e-5, atol=1e-6)


def test_avg_pool_same_does_not_count_padding():
    x = jnp.ones((1, 5, 5, 1))
    for impl in IMPLS:
        np.testing.assert_allclose(avg_pool(x, 2, padding="SAME", impl=impl), 1.0)  # padding does not dilute
        y = avg_pool(x, 2, padding="SAME", count_include_pad=True, impl=impl)
        assert float(y[0, -1, -1, 0]) == pytest.approx(0.25)


def test_max_pool_integer_input_and_padding_never_wins():
    x = -jnp.arange(1, 26, dtype=jnp.int32).reshape(1, 5, 5, 1)
    for impl in IMPLS:
        y = max_pool(x, 2, padding="SAME", impl=impl)
        assert y.dtype == jnp.int32
        assert int(y[0, -1, -1, 0]) == -25  # the corner window holds only padding and -25


# ------------------------------------------------------------------------------------- transformations
def _gradient_inputs():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 2, 2, 6)) * 0.5, jnp.float32)
    b = jnp.asarray(rng.standard_normal(6), jnp.float32)
    return x, k, b


@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads(impl):
    x, k, b = _gradient_inputs()

    def f(x, k, b):
        y = conv2d(x, k, b, stride=(1, 2), padding="SAME", dilation=(2, 1), groups=2, impl=impl)
        return avg_pool(jnp.tanh(y), 2, padding="SAME", impl=impl) + max_pool(y, 2, impl=impl).mean()

    check_grads(jax.jit(f), (x, k, b), order=2, modes=["fwd", "rev"], atol=5e-2, rtol=5e-2, eps=1e-2)


def test_implementations_agree_on_values_and_gradients():
    x, k, b = _gradient_inputs()

    def loss(params, x, impl):
        k, b = params
        y = jax.nn.relu(conv2d(x, k, b, padding="SAME", groups=2, impl=impl))
        y = max_pool(y, 2, impl=impl)
        return jnp.sum(avg_pool(y, (1, 3), stride=1, padding="SAME", impl=impl) ** 2)

    outs = {impl: jax.jit(jax.value_and_grad(loss), static_argnums=2)((k, b), x, impl) for impl in IMPLS}
    (v0, g0), (v1, g1) = outs.values()
    np.testing.assert_allclose(v0, v1, rtol=1e-5)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_matches_batched_call_and_works_in_scan(impl):
    x, k, b = _gradient_inputs()
    batched = conv2d(x, k, b, padding="SAME", groups=2, impl=impl)
    mapped = jax.vmap(lambda xi: conv2d(xi, k, b, padding="SAME", groups=2, impl=impl))(x)
    np.testing.assert_allclose(batched, mapped, rtol=1e-5, atol=1e-5)

    def body(carry, xi):
        return carry + max_pool(conv2d(xi, k, b, padding="SAME", groups=2, impl=impl), 2).sum(), None

    total, _ = jax.lax.scan(body, jnp.zeros(()), x[:, None])
    np.testing.assert_allclose(total, max_pool(batched, 2).sum(), rtol=1e-4)


def test_default_impl_per_backend():
    assert default_impl("cpu") == "im2col"
    assert default_impl("gpu") == default_impl("tpu") == "native"
    assert default_impl() in IMPLS


# ------------------------------------------------------------------------------------------ bad input
X = jnp.zeros((2, 8, 8, 3))
K = jnp.zeros((3, 3, 3, 4))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: conv2d(jnp.zeros((8, 8)), K), ValueError, r"x must be NHWC \(rank 4\) or HWC"),
        (lambda: conv2d(jnp.zeros((1, 2, 8, 8, 3)), K), ValueError, "x must be NHWC"),
        (lambda: conv2d(X, jnp.zeros((3, 3, 3))), ValueError, "kernel must be HWIO"),
        (lambda: conv2d(X, jnp.zeros((3, 3, 2, 4))), ValueError, "channel mismatch: x has 3 channels"),
        (lambda: conv2d(X, K, groups=2), ValueError, "channel mismatch"),
        (lambda: conv2d(jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 2, 3)), groups=2), ValueError,
         "out_channels 3 must be divisible by groups 2"),
        (lambda: conv2d(X, K, groups=0), ValueError, "groups must be a positive int"),
        (lambda: conv2d(X, jnp.zeros((9, 3, 3, 4))), ValueError, "kernel height 9 .* larger than the padded input"),
        (lambda: conv2d(X, K, dilation=(1, 5)), ValueError, "kernel width 11 .*dilation 5"),
        (lambda: conv2d(X, K, stride=0), ValueError, "stride must be positive"),
        (lambda: conv2d(X, K, stride=(1, -2)), ValueError, "stride must be positive"),
        (lambda: conv2d(X, K, stride=1.5), TypeError, "stride must be an int or a pair"),
        (lambda: conv2d(X, K, padding="FULL"), ValueError, "padding must be 'SAME', 'VALID'"),
        (lambda: conv2d(X, K, padding=((1, 1),)), ValueError, "padding must be"),
        (lambda: conv2d(X, K, padding=-1), ValueError, "padding must be non-negative"),
        (lambda: conv2d(X, K, bias=jnp.zeros(3)), ValueError, r"bias must have shape \(4,\)"),
        (lambda: conv2d(X, K, impl="cudnn"), ValueError, "impl must be one of"),
        (lambda: conv2d(X.astype(bool), K), TypeError, "x must have a float or integer dtype"),
        (lambda: max_pool(X, 0), ValueError, "window must be positive"),
        (lambda: max_pool(X, 9), ValueError, "max_pool: window height 9 is larger"),
        (lambda: avg_pool(X, 2, stride=0), ValueError, "stride must be positive"),
        (lambda: avg_pool(X, 2, padding="same-ish"), ValueError, "padding must be"),
        (lambda: max_pool(jnp.zeros((8, 8)), 2), ValueError, "max_pool: x must be NHWC"),
    ],
)
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_raises_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="channel mismatch"):
        jax.jit(lambda x: conv2d(x, jnp.zeros((3, 3, 5, 4))))(X)


# ------------------------------------------------------------------------------- low-precision matmuls
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dot_accumulates_in_float32_forward_and_backward(dtype):
    """bf16/f16 operands: the product and both gradients equal float32 arithmetic on the rounded operands,
    rounded once at the end (the plain low-precision dot rounds along the way); float32 is lax.dot_general."""
    from cnn_jax.ops import dot_general

    ka, kb, kg = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(ka, (4, 6, 640)).astype(dtype)
    b = jax.random.normal(kb, (640, 24)).astype(dtype)
    g = jax.random.normal(kg, (4, 6, 24)).astype(dtype)
    dims = (((2,), (0,)), ((), ()))
    f32 = [x.astype(jnp.float32) for x in (a, b, g)]
    ref_y = jnp.einsum("nhk,km->nhm", f32[0], f32[1], precision="highest")
    ref_da = jnp.einsum("nhm,km->nhk", f32[2], f32[1], precision="highest")
    ref_db = jnp.einsum("nhk,nhm->km", f32[0], f32[2], precision="highest")
    y, vjp = jax.vjp(lambda a, b: dot_general(a, b, dims), a, b)
    da, db = vjp(g)
    assert y.dtype == da.dtype == db.dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    for got, ref in ((y, ref_y), (da, ref_da), (db, ref_db)):  # one rounding: within half an ulp (+ sum order)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), rtol=eps, atol=eps * 0.1)
    # the general path (other dimension numbers) accumulates in float32 too
    bt = b.T
    y2 = dot_general(a, bt, (((2,), (1,)), ((), ())))
    np.testing.assert_allclose(np.asarray(y2, np.float32), np.asarray(ref_y), rtol=eps, atol=eps * 0.1)
    x32, w32 = jax.random.normal(ka, (5, 7)), jax.random.normal(kb, (7, 3))
    plain = (((1,), (0,)), ((), ()))
    np.testing.assert_array_equal(dot_general(x32, w32, plain), jax.lax.dot_general(x32, w32, plain))


def test_bf16_im2col_conv_matches_float32_on_rounded_inputs():
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 13, 13, 32)).astype(jnp.bfloat16)
    k = (jax.random.normal(kk, (3, 3, 32, 64)) * 0.1).astype(jnp.bfloat16)
    y = conv2d(x, k, impl="im2col")
    ref = conv2d(x.astype(jnp.float32), k.astype(jnp.float32), impl="native", precision="highest")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), rtol=2 ** -8, atol=1e-3)
    gx, gk = jax.grad(lambda x, k: conv2d(x, k, impl="im2col").astype(jnp.float32).sum(), (0, 1))(x, k)
    rx, rk = jax.grad(lambda x, k: conv2d(x, k, impl="native", precision="highest").sum(), (0, 1))(
        x.astype(jnp.float32), k.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(rx), rtol=2 ** -7, atol=2e-2)
    np.testing.assert_allclose(np.asarray(gk, np.float32), np.asarray(rk), rtol=2 ** -7, atol=2e-1)


@pytest.mark.parametrize("kw", [{}, {"padding": "SAME"}, {"stride": 2, "padding": 1, "dilation": (1, 2)}])
def test_bf16_conv_gradients_are_rounded_once(kw):
    """The bf16 im2col conv's custom VJP: value, input, kernel and bias gradients equal float32 arithmetic on
    the rounded operands, rounded once (summation order aside: within one ulp); autodiff of the plain
    patches-and-matmul (what it replaced) rounds each of the nine taps' partial sums and misses that."""
    from cnn_jax import ops

    kx, kk, kb, kg = jax.random.split(jax.random.key(2), 4)
    x = jax.random.normal(kx, (3, 14, 15, 24)).astype(jnp.bfloat16)
    k = (jax.random.normal(kk, (3, 3, 24, 40)) * 0.1).astype(jnp.bfloat16)
    b = jax.random.normal(kb, (40,)).astype(jnp.bfloat16)
    g = jax.random.normal(kg, ops.conv_output_shape(x.shape, k.shape, **kw)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, k, b: conv2d(x, k, b, impl="im2col", **kw), x, k, b)
    got = (y, *vjp(g))
    f32 = [v.astype(jnp.float32) for v in (x, k, b, g)]
    ref_y, ref_vjp = jax.vjp(lambda x, k, b: conv2d(x, k, b, impl="native", precision="highest", **kw), *f32[:3])
    ref = (ref_y, *ref_vjp(f32[3]))
    assert all(v.dtype == jnp.bfloat16 for v in got)
    eps = 2.0 ** -7  # bfloat16: one ulp relative
    for name, a, r in zip(("y", "dx", "dk", "db"), got, ref, strict=True):
        a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
        np.testing.assert_array_less(np.abs(a - r), eps * np.abs(r) + 1e-6, err_msg=name)

    s, d = ops._pair(kw.get("stride", 1), "s"), ops._pair(kw.get("dilation", 1), "d")
    pads = ops._resolve_padding(kw.get("padding", "VALID"), x.shape[1:3], k.shape[:2], s, d)

    def plain(x, k):
        p = ops._patch_matrix(x, k.shape[:2], s, pads, d)
        return ops._matmul(p, k.reshape(-1, k.shape[-1]), None)

    (plain_dx, _) = jax.vjp(plain, x, k)[1](g)
    err = np.abs(np.asarray(plain_dx, np.float32) - np.asarray(ref[1]))
    assert (err > eps * np.abs(np.asarray(ref[1])) + 1e-6).any()  # the test would catch the plain rule


# ---------------------------------------------------------------------------------- max-pool gradient
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_im2col_max_pool_gradient_follows_the_first_maximum_like_xla(dtype):
    """Ties (repeated values, ReLU zeros): the im2col pool's gradient goes to each tile's first maximum in
    row-major order, exactly as XLA's native pooling does; values equal; forward mode agrees. (Locating the
    maximum by equality with a separately computed max broke the BN-CNN's 8-device match with one device:
    ``tests/test_parallel.py::test_mesh_and_pmap_match_one_device[bn]`` fails with such a mask.)"""
    x = jax.random.randint(jax.random.key(3), (2, 8, 10, 3), 0, 3).astype(dtype)  # many ties
    g = jax.random.normal(jax.random.key(4), (2, 4, 5, 3)).astype(dtype)
    y, vjp = jax.vjp(lambda x: max_pool(x, 2, impl="im2col"), x)
    y_native, vjp_native = jax.vjp(lambda x: max_pool(x, 2, impl="native"), x)
    np.testing.assert_array_equal(y, y_native)
    (dx,), (dx_native,) = vjp(g), vjp_native(g)
    np.testing.assert_array_equal(dx, dx_native)
    tiles = np.asarray(dx).reshape(2, 4, 2, 5, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert ((tiles != 0).sum(1) <= 1).all()  # one element per tile takes the whole gradient
    np.testing.assert_array_equal(tiles.sum(1), np.asarray(g).reshape(-1))
    t = jax.random.normal(jax.random.key(5), x.shape).astype(dtype)
    _, tangent = jax.jvp(lambda x: max_pool(x, 2, impl="im2col"), (x,), (t,))
    _, tangent_native = jax.jvp(lambda x: max_pool(x, 2, impl="native"), (x,), (t,))
    np.testing.assert_array_equal(tangent, tangent_native)


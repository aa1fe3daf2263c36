"""Pure functional convolution and pooling: NHWC activations, HWIO kernels.

Every function works on batched ``(N, H, W, C)`` or unbatched ``(H, W, C)`` input and is usable under
``jit``, ``grad`` and ``vmap``. Two implementations sit behind each call:

* ``"native"``: XLA's own ``conv_general_dilated`` / ``reduce_window``.
* ``"im2col"``: convolution as shifted slices (patch extraction) plus one matmul; pooling by reshape
  where the window tiles the input (stride == window), else ``reduce_window``. On CPU this is the
  faster path, and it stays fast inside ``lax.scan`` where XLA-CPU's native conv does not (jax#12868).

``impl=None`` picks :func:`default_impl` for the default backend. Shapes are checked at trace time and
bad arguments raise ``ValueError``/``TypeError`` naming the argument. Matmuls go through :func:`dot_general`:
bfloat16/float16 operands accumulate in float32 (forward and backward), float32 is ``lax.dot_general``.
A call without ``precision`` gets :func:`cnn_jax.backend.matmul_precision` (full float32 on GPU/TPU).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax import backend as _backend

Impl = Literal["native", "im2col"]
Padding = str | int | Sequence[tuple[int, int]]
IMPLS: tuple[str, ...] = ("native", "im2col")

__all__ = ["conv2d", "max_pool", "avg_pool", "dot_general", "default_impl", "conv_output_shape", "IMPLS"]


def default_impl(backend: str | None = None) -> Impl:
    """The faster implementation for ``backend`` (default: JAX's default backend): the rule
    :func:`cnn_jax.backend.conv_impl` (im2col + matmul on CPU, the native conv elsewhere), with its reason."""
    return _backend.conv_impl(backend)


# ----------------------------------------------------------------------------------------- validation
def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _check_impl(impl: str | None) -> Impl:
    impl = impl or default_impl()
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    return impl  # type: ignore[return-value]


def _check_array(x: jax.Array, name: str) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} must have a float or integer dtype, got {dtype}")


def _as_nhwc(x: jax.Array, fn: str) -> tuple[jax.Array, bool]:
    x = jnp.asarray(x) if not hasattr(x, "ndim") else x
    _check_array(x, "x")
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(
        f"{fn}: x must be NHWC (rank 4) or HWC (rank 3), got shape {tuple(x.shape)}; "
        "add a channel axis for a single grayscale image, e.g. x[..., None]"
    )


def _resolve_padding(
    padding: Padding, size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ((top, bottom), (left, right)) padding, XLA's SAME/VALID rules."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            pads = []
            for n, k, s, d in zip(size, window, stride, dilation, strict=True):
                eff = (k - 1) * d + 1
                out = -(-n // s)
                total = max((out - 1) * s + eff - n, 0)
                pads.append((total // 2, total - total // 2))
            return pads[0], pads[1]
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)), got {padding!r}")
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        return (int(padding), int(padding)), (int(padding), int(padding))
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        raise ValueError(
            f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, right)) of non-negative ints, "
            f"got {padding!r}"
        )
    return pads[0], pads[1]


def _out_size(n: int, pad: tuple[int, int], k: int, s: int, d: int) -> int:
    return (n + pad[0] + pad[1] - ((k - 1) * d + 1)) // s + 1


def _check_fits(fn: str, size, pads, window, dilation, what: str) -> None:
    for axis, n, pad, k, d in zip(("height", "width"), size, pads, window, dilation, strict=True):
        eff = (k - 1) * d + 1
        if eff > n + pad[0] + pad[1]:
            size = f"{eff} (size {k}, dilation {d})" if d > 1 else f"{k}"
            raise ValueError(
                f"{fn}: {what} {axis} {size} is larger than the padded input {axis} "
                f"{n + pad[0] + pad[1]}; use padding='SAME', a smaller {what} or a larger input"
            )


def conv_output_shape(
    input_shape: Sequence[int], kernel_shape: Sequence[int], stride: int | Sequence[int] = 1,
    padding: Padding = "VALID", dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Output shape of :func:`conv2d` for an NHWC/HWC ``input_shape`` and HWIO ``kernel_shape``."""
    *lead, h, w, _ = input_shape
    kh, kw, _, o = kernel_shape
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    pads = _resolve_padding(padding, (h, w), (kh, kw), s, d)
    return (*lead, _out_size(h, pads[0], kh, s[0], d[0]), _out_size(w, pads[1], kw, s[1], d[1]), o)


# ------------------------------------------------------------------------------------------- matmul
_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def _acc32(a: jax.Array, b: jax.Array, dims, precision) -> jax.Array:
    """A low-precision dot with float32 accumulation, rounded to the operands' dtype once."""
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32).astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_lowp(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    return _acc32(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision)


def _matmul_lowp_fwd(a, b, precision):
    return _matmul_lowp(a, b, precision), (a, b)


def _matmul_lowp_bwd(precision, res, g):
    """Both gradients as low-precision dots with float32 accumulation too (autodiff would multiply the
    float32 cotangent in float32)."""
    a, b = res
    g = g.astype(a.dtype)
    da = _acc32(g, b, (((g.ndim - 1,), (1,)), ((), ())), precision)  # g @ b.T
    lead = tuple(range(a.ndim - 1))
    db = _acc32(a, g, ((lead, lead), ((), ())), precision)  # a.T @ g over all leading axes
    return da, db


_matmul_lowp.defvjp(_matmul_lowp_fwd, _matmul_lowp_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision: lax.PrecisionLike = None,
                preferred_element_type=None, out_sharding=None) -> jax.Array:
    """``lax.dot_general``, except that bfloat16/float16 operands multiply with float32 accumulation, in the
    forward and the backward pass, each result rounded to their dtype once (XLA:CPU's fast low-precision
    path; bf16 -> bf16 dots take a slow one). Flax's ``dot_general`` signature (``nnx.Linear(dot_general=...)``);
    an ``out_sharding`` goes to ``lax.dot_general`` as it is."""
    precision = _backend.matmul_precision(lhs.dtype) if precision is None else precision
    low = (preferred_element_type is None and out_sharding is None and lhs.dtype == rhs.dtype
           and lhs.dtype in _LOW_PRECISION)
    if low and rhs.ndim == 2 and tuple(map(tuple, dimension_numbers[0])) == ((lhs.ndim - 1,), (0,)) \
            and not any(dimension_numbers[1]):
        return _matmul_lowp(lhs, rhs, precision)
    if low:
        return _acc32(lhs, rhs, dimension_numbers, precision)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def _matmul(a: jax.Array, b: jax.Array, precision: lax.PrecisionLike) -> jax.Array:
    """``a (..., K) @ b (K, M)`` through :func:`dot_general`."""
    return dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision)


# ---------------------------------------------------------------------------------------- convolution
def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    stride: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: Impl | None = None,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """2D cross-correlation (what deep learning calls convolution).

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      kernel: ``(KH, KW, C // groups, O)`` (HWIO); ``O`` divisible by ``groups``.
      bias: ``(O,)`` or None.
      stride, dilation: int or ``(sh, sw)``, positive.
      padding: ``"VALID"``, ``"SAME"``, an int, or ``((top, bottom), (left, right))``.
      groups: feature groups (``groups == C`` with ``O == C`` is a depthwise conv).
      impl: ``"native"``, ``"im2col"`` or None for :func:`default_impl`.
    Returns:
      ``(N, H', W', O)`` (or ``(H', W', O)`` for unbatched input), dtype of ``x``/``kernel`` promoted.
    """
    x, unbatched = _as_nhwc(x, "conv2d")
    kernel = jnp.asarray(kernel) if not hasattr(kernel, "ndim") else kernel
    _check_array(kernel, "kernel")
    if kernel.ndim != 4:
        raise ValueError(
            f"conv2d: kernel must be HWIO (rank 4: height, width, in_channels // groups, out_channels), "
            f"got shape {tuple(kernel.shape)}"
        )
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    n, h, w, c = x.shape
    kh, kw, ki, o = kernel.shape
    if c % groups or ki * groups != c:
        raise ValueError(
            f"conv2d: channel mismatch: x has {c} channels, kernel expects in_channels * groups = "
            f"{ki} * {groups} = {ki * groups}; give the kernel shape (KH, KW, C // groups, O)"
        )
    if o % groups:
        raise ValueError(f"conv2d: kernel out_channels {o} must be divisible by groups {groups}")
    if bias is not None:
        bias = jnp.asarray(bias) if not hasattr(bias, "ndim") else bias
        _check_array(bias, "bias")
        if tuple(bias.shape) != (o,):
            raise ValueError(f"conv2d: bias must have shape ({o},) to match the kernel, got {tuple(bias.shape)}")
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    pads = _resolve_padding(padding, (h, w), (kh, kw), s, d)
    _check_fits("conv2d", (h, w), pads, (kh, kw), d, "kernel")
    impl = _check_impl(impl)

    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    precision = _backend.matmul_precision(dtype) if precision is None else precision
    if impl == "im2col" and groups == 1 and dtype in _LOW_PRECISION:
        bias = None if bias is None else bias.astype(dtype)
        y = _conv_lowp(x, kernel, bias, s, pads, d, precision, x.shape)
        return y[0] if unbatched else y
    if impl == "native":
        y = lax.conv_general_dilated(
            x, kernel, window_strides=s, padding=pads, rhs_dilation=d,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups, precision=precision,
        )
    else:
        y = _conv_im2col(x, kernel, s, pads, d, groups, precision)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y[0] if unbatched else y


def _patches(x: jax.Array, window, stride, pads, dilation) -> jax.Array:
    """``(N, H', W', KH*KW, C)``: the input under each kernel tap, by shifted strided slices."""
    n, h, w, c = x.shape
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = _out_size(h, pads[0], window[0], stride[0], dilation[0])
    wo = _out_size(w, pads[1], window[1], stride[1], dilation[1])
    taps = []
    for i in range(window[0]):
        for j in range(window[1]):
            r, q = i * dilation[0], j * dilation[1]
            taps.append(
                lax.slice(
                    x, (0, r, q, 0), (n, r + (ho - 1) * stride[0] + 1, q + (wo - 1) * stride[1] + 1, c),
                    (1, stride[0], stride[1], 1),
                )
            )
    return jnp.stack(taps, axis=3)


def _conv_im2col(x, kernel, stride, pads, dilation, groups, precision) -> jax.Array:
    kh, kw, ki, o = kernel.shape
    if kh == kw == 1 and groups == 1:  # a 1x1 conv is a matmul over channels
        p = x
        if any(v for pair in pads for v in pair):
            p = jnp.pad(p, ((0, 0), pads[0], pads[1], (0, 0)))
        p = p[:, :: stride[0], :: stride[1], :]
        return _matmul(p, kernel.reshape(ki, o), precision)
    p = _patches(x, (kh, kw), stride, pads, dilation)  # (N, H', W', K, C)
    n, ho, wo, k, c = p.shape
    if groups == 1:
        return _matmul(p.reshape(n, ho, wo, k * c), kernel.reshape(k * c, o), precision)
    p = p.reshape(n, ho, wo, k, groups, ki)
    kg = kernel.reshape(k, ki, groups, o // groups)
    y = jnp.einsum("nhwkgc,kcgo->nhwgo", p, kg, precision=precision)
    return y.reshape(n, ho, wo, o)


def _patch_matrix(x, window, stride, pads, dilation) -> jax.Array:
    """``(N, H', W', KH*KW*C)``: :func:`_patches` flattened to the matmul's rows."""
    p = _patches(x, window, stride, pads, dilation)
    return p.reshape(*p.shape[:3], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _conv_lowp(x, kernel, bias, stride, pads, dilation, precision, x_shape) -> jax.Array:
    """A bfloat16/float16 im2col convolution (plus ``bias``, or None) accumulating in float32, rounded once,
    forward and backward.

    Autodiff of patches + matmul would round the matmul's input gradient and then each of the KH*KW partial
    sums that fold it back onto the input (col2im), every one a convert pair that XLA:CPU emulates element by
    element; and it would sum the bias gradient element by element in low precision. Here col2im runs in
    float32 and the bias gradient is a matmul with a ones vector.
    """
    return _conv_lowp_fwd(x, kernel, bias, stride, pads, dilation, precision, x_shape)[0]


def _conv_lowp_fwd(x, kernel, bias, stride, pads, dilation, precision, x_shape):
    kh, kw, c, o = kernel.shape
    p = _patch_matrix(x, (kh, kw), stride, pads, dilation)  # (N, H', W', KH*KW*C)
    y = lax.dot_general(p, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype), (p, kernel, bias)


def _conv_lowp_bwd(stride, pads, dilation, precision, x_shape, res, g):
    p, kernel, bias = res
    kh, kw, c, o = kernel.shape
    g = g.astype(p.dtype)
    dp = lax.dot_general(g, kernel.reshape(kh * kw * c, o), (((3,), (1,)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)  # (N, H', W', KH*KW*C), not rounded
    col2im = jax.linear_transpose(lambda v: _patch_matrix(v, (kh, kw), stride, pads, dilation),
                                  jax.ShapeDtypeStruct(x_shape, jnp.float32))
    (dx,) = col2im(dp)
    dk = _acc32(p, g, (((0, 1, 2), (0, 1, 2)), ((), ())), precision).reshape(kernel.shape)
    db = None if bias is None else _acc32(jnp.ones(g.shape[:3], g.dtype), g, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                          precision)
    return dx.astype(p.dtype), dk, db


_conv_lowp.defvjp(_conv_lowp_fwd, _conv_lowp_bwd)


# -------------------------------------------------------------------------------------------- pooling
def _pool_args(fn: str, x, window, stride, padding):
    x, unbatched = _as_nhwc(x, fn)
    win = _pair(window, "window")
    s = win if stride is None else _pair(stride, "stride")
    pads = _resolve_padding(padding, x.shape[1:3], win, s)
    _check_fits(fn, x.shape[1:3], pads, win, (1, 1), "window")
    return x, unbatched, win, s, pads


def _tiled(x: jax.Array, win, pads, fill) -> jax.Array | None:
    """``(N, H'', KH, W'', KW, C)`` view of the padded input when stride == window, else None."""
    n, h, w, c = x.shape
    ho = (h + pads[0][0] + pads[0][1] - win[0]) // win[0] + 1
    wo = (w + pads[1][0] + pads[1][1] - win[1]) // win[1] + 1
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    x = x[:, : ho * win[0], : wo * win[1], :]
    return x.reshape(n, ho, win[0], wo, win[1], c)


def _first_max(t: jax.Array) -> jax.Array:
    """Boolean ``t.shape``: True at the first maximum of each ``(KH, KW)`` tile of ``t`` in row-major order.

    Found by a running strict comparison over the tile's positions, from ``t`` alone: a mask made by comparing
    ``t`` with a separately computed max can come out all False where XLA evaluates the two in different
    fusions (a last-bit difference), which silently drops that tile's gradient.
    """
    kh, kw = t.shape[2], t.shape[4]
    if t.dtype in _LOW_PRECISION:  # exact; spares XLA:CPU a convert pair around every low-precision select
        t = t.astype(jnp.float32)
    best, where = t[:, :, 0, :, 0, :], jnp.zeros(t[:, :, 0, :, 0, :].shape, jnp.int32)
    for p in range(1, kh * kw):
        v = t[:, :, p // kw, :, p % kw, :]
        better = v > best
        best, where = jnp.where(better, v, best), jnp.where(better, p, where)
    rows = [jnp.stack([where == i * kw + j for j in range(kw)], axis=3) for i in range(kh)]  # (N, H', W', KW, C)
    return jnp.stack(rows, axis=2)  # (N, H', KH, W', KW, C)


@jax.custom_jvp
def _max_tiles(t: jax.Array) -> jax.Array:
    """``(N, H', KH, W', KW, C) -> (N, H', W', C)``: the max of each tile. Its derivative follows the tile's
    first maximum (XLA's and PyTorch's rule), where autodiff of ``max`` splits it over ties (a count and a
    division more in the backward pass)."""
    return t.max(axis=(2, 4))


@_max_tiles.defjvp
def _max_tiles_jvp(primals, tangents):
    (t,), (dt,) = primals, tangents
    return t.max(axis=(2, 4)), jnp.sum(jnp.where(_first_max(t), dt, jnp.zeros_like(dt)), axis=(2, 4))


def max_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    impl: Impl | None = None,
) -> jax.Array:
    """Max over ``window`` patches; ``stride`` defaults to ``window``. ``(N, H, W, C) -> (N, H', W', C)``.

    Padding never wins the max (it is ``-inf``, or the dtype's minimum for integers).
    """
    x, unbatched, win, s, pads = _pool_args("max_pool", x, window, stride, padding)
    impl = _check_impl(impl)
    fill = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    if impl == "im2col" and s == win:
        y = _max_tiles(_tiled(x, win, pads, fill))
    else:
        y = lax.reduce_window(
            x, np.array(fill, x.dtype), lax.max, (1, *win, 1), (1, *s, 1), ((0, 0), *pads, (0, 0))
        )
    return y[0] if unbatched else y


def avg_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = False,
    impl: Impl | None = None,
) -> jax.Array:
    """Mean over ``window`` patches; ``stride`` defaults to ``window``. ``(N, H, W, C) -> (N, H', W', C)``.

    With padding, each output is the mean of the real (unpadded) inputs under its window unless
    ``count_include_pad=True``. Integer inputs are averaged in float32.
    """
    x, unbatched, win, s, pads = _pool_args("avg_pool", x, window, stride, padding)
    impl = _check_impl(impl)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    padded = any(p for pair in pads for p in pair)
    if impl == "im2col" and s == win:
        total = _tiled(x, win, pads, 0).sum(axis=(2, 4))
        count = None
        if padded and not count_include_pad:
            ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
            count = _tiled(ones, win, pads, 0).sum(axis=(2, 4))
    else:
        def window_sum(v):
            return lax.reduce_window(v, np.array(0, v.dtype), lax.add, (1, *win, 1), (1, *s, 1),
                                     ((0, 0), *pads, (0, 0)))
        total = window_sum(x)
        count = None
        if padded and not count_include_pad:
            count = window_sum(jnp.ones((1, *x.shape[1:3], 1), x.dtype))
    y = total / (win[0] * win[1]) if count is None else total / count
    return y[0] if unbatched else y

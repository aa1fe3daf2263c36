"""Pure train/eval steps and their loop-fused chunk/epoch versions.

Everything here is a pure function of explicit arguments, to be compiled by :mod:`cnn_jax.parallel`. The
``model`` argument is an NNX module used as a template only: its graph and settings, with the state's
params and batch statistics put in (:func:`cnn_jax.train_state.bind`); its own arrays are not read.
Data are device-resident uint8 images ``(N, H, W, C)`` (NHWC) and int32 labels ``(N,)``; batches are
gathered by index from an on-device permutation and turned into floats by ``preprocess(key, uint8_batch)``
inside the compiled function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from cnn_jax.backend import INFERENCE_IMPL
from cnn_jax.config import PRECISIONS, TTA_NAMES
from cnn_jax.train_state import TrainState, bind, update_ema

__all__ = ["Preprocess", "default_preprocess", "train_step", "train_chunk", "evaluate", "step_keys", "TTA_VIEWS",
           "tta_logits", "COMPUTE_DTYPES", "cast_params", "inference_model", "eval_logits"]

Preprocess = Callable[[jax.Array, jax.Array], jax.Array]


def default_preprocess(key: jax.Array, images: jax.Array) -> jax.Array:
    """uint8 ``(B, H, W, C)`` -> float32 in ``[0, 1]``; ``key`` unused."""
    del key
    return images.astype(jnp.float32) * (1.0 / 255.0)


def _shifts(x: jax.Array) -> list[jax.Array]:
    """``x`` ``(B, H, W, C)`` moved one pixel up-left and one down-right, edges repeated."""
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return [padded[:, 2:h + 2, 2:w + 2], padded[:, :h, :w]]


#: Test-time augmentation: name -> the extra views of an NHWC batch. The views of several names multiply:
#: ``("flip", "shift")`` is the image, its mirror, and both moved a pixel each way (6). Logits are averaged.
TTA_VIEWS: dict[str, Callable[[jax.Array], list[jax.Array]]] = dict(zip(
    TTA_NAMES, (lambda x: [x[:, :, ::-1, :]], _shifts), strict=True))


def tta_logits(apply: Callable[[jax.Array], jax.Array], x: jax.Array, tta: Sequence[str] = ()) -> jax.Array:
    """Mean of ``apply`` over ``x`` ``(B, H, W, C)`` and its ``tta`` views (:data:`TTA_VIEWS`; e.g.
    ``("flip",)``: the mirror image too); ``apply(x)`` returns logits ``(B, num_classes)``. No views: ``apply(x)``."""
    views = [x]
    for t in tta:
        views += [v for view in views for v in TTA_VIEWS[t](view)]
    out = apply(views[0]).astype(jnp.float32)
    for v in views[1:]:
        out = out + apply(v).astype(jnp.float32)
    return out / len(views)


#: ``train.precision`` -> the dtype activations and (cast copies of the) params are computed in. Master weights,
#: optimizer state, batch-norm statistics, losses and logits averaged over views stay float32.
COMPUTE_DTYPES: dict[str, Any] = dict(zip(PRECISIONS, (jnp.float32, jnp.bfloat16), strict=True))


def cast_params(params: Any, dtype: Any) -> Any:
    """``params`` cast to the compute ``dtype`` (unchanged for float32)."""
    return params if dtype == jnp.float32 else jax.tree.map(lambda a: a.astype(dtype), params)


def _default_impl(path: Any, node: Any) -> bool:
    return isinstance(node, nnx.Module) and getattr(node, "impl", "") is None


def inference_model(model: nnx.Module) -> nnx.Module:
    """``model`` as evaluation and prediction run it: its layers whose ``impl`` is left to the default (None)
    with :data:`cnn_jax.backend.INFERENCE_IMPL` (the native convolution and pooling), the rest as they are.
    The parameters are the same arrays; ``model`` is unchanged."""
    if not any(_default_impl(p, m) for p, m in nnx.iter_modules(model)):
        return model
    return nnx.with_attributes(model, only=_default_impl, impl=INFERENCE_IMPL)


def eval_logits(model: nnx.Module, params: Any, batch_stats: Any, x: jax.Array, tta: Sequence[str] = (),
                compute_dtype: Any = jnp.float32) -> jax.Array:
    """Inference-mode float32 logits ``(B, num_classes)`` for float NHWC ``x``, computed in ``compute_dtype``
    as in training (:func:`cast_params`; batch statistics stay float32) by :func:`inference_model`, and
    averaged over ``tta`` views."""
    p, model = cast_params(params, compute_dtype), inference_model(model)
    return tta_logits(lambda v: _apply(model, p, batch_stats, v, False)[0], x.astype(compute_dtype), tta)


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(shuffle_root, preprocess_key, dropout_key)`` for the state's current step."""
    shuffle_root, step_root = jax.random.split(state.key)
    pre_key, drop_key = jax.random.split(jax.random.fold_in(step_root, state.step))
    return shuffle_root, pre_key, drop_key


def _apply(model: nnx.Module, params, batch_stats, x, train: bool, drop_key=None):
    """Logits (and new batch stats when training a model that has them): ``model``'s graph holding ``params``
    and ``batch_stats``, in training (dropout keys from ``drop_key``) or evaluation mode."""
    m = bind(model, params, batch_stats)
    if train:
        m.train()
    else:
        m.eval()
    with jax.named_scope(type(m).__name__):  # profiles charge the model's own ops (pooling, ReLU) to it
        logits = m(x, rngs=None if drop_key is None else nnx.Rngs(dropout=drop_key))
    return logits, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)) if train and batch_stats else batch_stats


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, *, model: nnx.Module,
    tx: optax.GradientTransformation, preprocess: Preprocess = default_preprocess,
    label_smoothing: float = 0.0, compute_dtype: Any = jnp.float32, axis_name: str | None = None,
    microbatch: int | None = None, ema: float | None = None,
) -> tuple[TrainState, tuple[jax.Array, jax.Array, jax.Array]]:
    """One optimizer step on a uint8 batch ``(B, H, W, C)`` with labels ``(B,)``; ``ema``: the decay of the
    weights' moving average kept in ``state.ema`` (:func:`~cnn_jax.train_state.update_ema`).

    Returns ``(new_state, (loss, n_correct, finite))``. If the loss or the gradients are not finite the
    returned state *is* the input state (step not advanced), so the caller keeps the last good state.
    Under ``pmap`` (``axis_name`` set) gradients, loss and counts are reduced over the axis.
    ``microbatch`` (dividing B): gradients accumulated over ``B // microbatch`` sequential slices (same
    mean gradient without dropout/batch norm; batch norm then sees micro-batch statistics), which keeps
    the im2col buffers cache-sized on CPU.
    """
    _, pre_key, drop_key = step_keys(state)
    if axis_name is not None:  # pmap: independent augmentation/dropout per device
        pre_key, drop_key = (jax.random.fold_in(k, lax.axis_index(axis_name)) for k in (pre_key, drop_key))

    def loss_fn(params, batch_stats, x_u8, y, key):
        p = cast_params(params, compute_dtype)
        pkey, dkey = (pre_key, drop_key) if key is None else \
            (jax.random.fold_in(pre_key, key), jax.random.fold_in(drop_key, key))
        x = preprocess(pkey, x_u8)
        logits, new_stats = _apply(model, p, batch_stats, x.astype(compute_dtype), True, dkey)
        logits = logits.astype(jnp.float32)
        targets = jax.nn.one_hot(y, logits.shape[-1])
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (jnp.sum(jnp.argmax(logits, -1) == y), new_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    b = images.shape[0]
    if microbatch is None or microbatch >= b:
        (loss, (correct, new_stats)), grads = grad_fn(state.params, state.batch_stats, images, labels, None)
    else:
        if b % microbatch:
            raise ValueError(f"microbatch {microbatch} must divide the (per-device) batch {b}")
        k = b // microbatch
        xs = images.reshape(k, microbatch, *images.shape[1:])
        ys = labels.reshape(k, microbatch)

        def body(carry, inp):
            g_acc, loss_acc, correct_acc, stats = carry
            i, x, y = inp
            (loss, (correct, stats)), g = grad_fn(state.params, stats, x, y, i)
            return (jax.tree.map(jnp.add, g_acc, g), loss_acc + loss, correct_acc + correct, stats), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), state.batch_stats)
        (grads, loss, correct, new_stats), _ = lax.scan(body, init, (jnp.arange(k), xs, ys))
        grads = jax.tree.map(lambda g: g / k, grads)
        loss = loss / k
    if axis_name is not None:
        grads, loss = lax.pmean((grads, loss), axis_name)
        correct = lax.psum(correct, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=new_stats,
                        ema=state.ema if ema is None else update_ema(state.ema, params, state.step, ema))
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, (loss, correct, finite)


def train_chunk(
    state: TrainState, images: jax.Array, labels: jax.Array, *, step_fn: Callable, steps: int | jax.Array,
    steps_per_epoch: int, global_batch: int, local_batch: int | None = None, axis_name: str | None = None,
    batch_sharding: Any = None, totals: tuple[jax.Array, jax.Array] | None = None,
    epoch_augment: Callable[..., jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``steps`` train steps fused in one loop, all within the epoch ``state.step // steps_per_epoch``.

    ``steps`` may be traced (an int32 scalar argument): one compiled function then runs chunks of any
    length, with the same values as fusing them all (the loop body is the same step). The epoch's shuffle is
    ``permutation(fold_in(shuffle_root, epoch), N)``; step ``s`` uses batch ``s % steps_per_epoch`` of it (a
    final partial batch is dropped). Under ``pmap`` each device takes its ``local_batch`` slice of the global
    batch; under sharded ``jit`` the batch is constrained to ``batch_sharding``. Returns the new state and
    summed metrics: ``loss_sum`` (float32, over good steps), ``correct``, ``good_steps``, ``bad_step`` (first
    non-finite step, or -1). ``totals``: the epoch's ``(loss_sum, correct)`` so far, carried on: the sum is
    then the same sequence of float32 additions however the epoch is cut into chunks (or resumed).
    ``epoch_augment``: ``fn(key, uint8 batch, example indices, epoch)`` applied to each batch before the step
    (:data:`cnn_jax.data.augment.EPOCH_AUGMENTATIONS`), its key the same for the whole run.
    """
    n = images.shape[0]
    local_batch = local_batch or global_batch
    shuffle_root, _, _ = step_keys(state)
    epoch = state.step // steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(shuffle_root, epoch), n)
    if epoch_augment is not None:
        epoch_key = jax.random.split(shuffle_root)[0]  # not a fold_in(shuffle_root, epoch) of the shuffles
    offset = lax.axis_index(axis_name) * local_batch if axis_name is not None else 0

    def body(_, carry):
        st, loss_sum, correct, good, bad = carry
        start = (st.step % steps_per_epoch) * global_batch + offset
        idx = lax.dynamic_slice(perm, (start,), (local_batch,))
        x, y = jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)
        if epoch_augment is not None:
            x = epoch_augment(epoch_key, x, idx, epoch)
        if batch_sharding is not None:
            x, y = lax.with_sharding_constraint((x, y), batch_sharding)
        new, (loss, c, ok) = step_fn(st, x, y)
        bad = jnp.where((bad < 0) & ~ok, st.step, bad)
        zero = jnp.zeros_like(loss)
        return new, loss_sum + jnp.where(ok, loss, zero), correct + jnp.where(ok, c, 0), good + ok, bad

    loss0, correct0 = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)) if totals is None else totals
    init = (state, jnp.asarray(loss0, jnp.float32), jnp.asarray(correct0, jnp.int32), jnp.zeros((), jnp.int32),
            jnp.full((), -1, jnp.int32))
    state, loss_sum, correct, good, bad = lax.fori_loop(0, steps, body, init)
    return state, {"loss_sum": loss_sum, "correct": correct, "good_steps": good, "bad_step": bad}


def evaluate(
    state: TrainState, images: jax.Array, labels: jax.Array, *, model: nnx.Module, batch: int,
    preprocess: Preprocess = default_preprocess, batch_sharding: Any = None, tta: Sequence[str] = (),
    compute_dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Mean cross-entropy, accuracy and confusion matrix ``(C, C)`` (rows: true, cols: predicted) on all
    ``N`` examples; the last partial batch is padded (index clamped) and masked out. Logits from
    :func:`eval_logits` (``tta`` views, ``compute_dtype``)."""
    n = images.shape[0]
    num_batches = -(-n // batch)
    key = jax.random.PRNGKey(0)
    x_shape = jax.ShapeDtypeStruct((batch, *images.shape[1:]), jnp.float32)
    num_classes = jax.eval_shape(lambda x: _apply(model, state.params, state.batch_stats, x, False)[0],
                                 x_shape).shape[-1]

    def body(carry, i):
        loss_sum, correct, cm = carry
        idx = i * batch + jnp.arange(batch)
        mask = idx < n
        idx = jnp.minimum(idx, n - 1)
        x, y = jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)
        if batch_sharding is not None:
            x, y, mask = lax.with_sharding_constraint((x, y, mask), batch_sharding)
        logits = eval_logits(model, state.params, state.batch_stats, preprocess(key, x), tta, compute_dtype)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        pred = jnp.argmax(logits, -1)
        m = mask.astype(jnp.float32)
        cm = cm + jax.nn.one_hot(y, num_classes, dtype=jnp.int32).T @ (
            jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * mask[:, None])
        return (loss_sum + jnp.sum(losses * m), correct + jnp.sum((pred == y) & mask), cm), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((num_classes,) * 2, jnp.int32))
    (loss_sum, correct, cm), _ = lax.scan(body, init, jnp.arange(num_batches))
    return {"loss": loss_sum / n, "accuracy": correct / n, "confusion": cm}

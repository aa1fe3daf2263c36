"""The training state pytree, the optax optimizer chain and its learning-rate schedule, and the bridge between an
NNX model and that state.

:class:`TrainState` holds only arrays (no functions, no modules), so one value can be jitted, donated, sharded
and checkpointed as is; the model and optimizer are kept by the code that steps it (:mod:`cnn_jax.steps`).
A model's ``nnx.Param`` and ``nnx.BatchStat`` variables live in it as pure dicts (:func:`model_state`); a
compiled step puts them back into a copy of the model's graph (:func:`bind`), as Flax's performance guide
does with ``nnx.split``/``nnx.merge``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cnn_jax.config import TrainConfig

__all__ = ["TrainState", "make_schedule", "make_optimizer", "lookahead", "LookaheadState",
           "create_train_state", "model_variables", "update_ema", "eval_params", "seed_keys", "model_state", "bind",
           "STATE_LAYOUT", "LegacyTrainState", "legacy_layout", "from_legacy", "upgrade_saved"]


@flax.struct.dataclass
class TrainState:
    """``step``: int32 scalar (global train step); ``params``/``batch_stats``: model variables (f32 master
    weights; ``batch_stats`` is ``{}`` for models without batch norm); ``opt_state``: optax state;
    ``key``: the run's root PRNG key (``uint32[2]``); ``ema``: the weights' moving average (``train.ema``,
    :func:`update_ema`; ``{}`` when off). Per-step dropout/augment keys and per-epoch shuffles are derived from
    ``key`` with ``fold_in(step or epoch)``, so a state resumes deterministically."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    key: jax.Array
    ema: Any = flax.struct.field(default_factory=dict)


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """``constant`` (after optional linear warmup), ``cosine`` (warmup + cosine decay to 0), ``onecycle``."""
    total = max(int(total_steps), 1)
    warm = min(cfg.warmup_steps, total - 1) if total > 1 else 0
    if cfg.schedule == "constant":
        if warm == 0:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warm), optax.constant_schedule(cfg.lr)], [warm]
        )
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, total, end_value=0.0)
    pct = warm / total if warm else 0.25
    return optax.cosine_onecycle_schedule(total, cfg.lr, pct_start=pct)


def update_ema(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """The weights' moving average after update ``step`` (0-based) gave ``params``: ``d * ema + (1 - d) * params``
    with ``d = min(decay, (1 + step) / (10 + step))``, so early averages are not dominated by the initial
    weights."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)


def eval_params(state: TrainState | Mapping[str, Any]) -> Any:
    """The weights to evaluate and predict with: the moving average when the run keeps one (``train.ema``),
    else the params. ``state``: a :class:`TrainState`, or one restored as saved (a dict, :func:`upgrade_saved`)."""
    params, ema = (state.params, state.ema) if isinstance(state, TrainState) else (state["params"], state.get("ema"))
    return ema if ema else params


def make_optimizer(cfg: TrainConfig, total_steps: int, *, schedule: optax.Schedule | None = None,
                   frozen: Any = None, bn_biases: Any = None) -> optax.GradientTransformation:
    """Optional global-norm clipping, then Adam / AdamW (decoupled decay) / SGD+Nesterov momentum at the learning
    rate ``schedule`` (default :func:`make_schedule` over ``total_steps``; a caller that logs the rate passes the
    one it built). The weights' average (``cfg.ema``) is the state's own field (:func:`update_ema`).

    For ``adam`` and ``sgd``, ``weight_decay`` is L2 added to the gradient (``add_decayed_weights``
    before the optimizer); for ``adamw`` it is decoupled. ``bn_bias_lr`` scales the updates of the batch-norm
    biases, the True leaves of ``bn_biases`` (:func:`cnn_jax.models.batch_norm_biases`), last, so it multiplies
    their learning rate (and, for ``adamw``, their decoupled decay). ``frozen``: the params' tree of booleans
    (:func:`cnn_jax.models.frozen_params`); the True ones get zero updates (``optax.multi_transform``).
    """
    lr = make_schedule(cfg, total_steps) if schedule is None else schedule
    parts = []
    if cfg.clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip))
    if cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay))
    else:
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        if cfg.optimizer == "adam":
            parts.append(optax.adam(lr))
        else:
            parts.append(optax.sgd(lr, momentum=cfg.momentum, nesterov=True))
    if cfg.bn_bias_lr != 1:
        parts.append(optax.masked(optax.scale(cfg.bn_bias_lr), bn_biases))
    tx = optax.chain(*parts)
    if frozen is not None and any(jax.tree.leaves(frozen)):
        labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return lookahead(tx, cfg.lookahead) if cfg.lookahead else tx


class LookaheadState(NamedTuple):
    """:func:`lookahead`'s state: optax's, and the slow weights."""

    lookahead: optax.LookaheadState
    slow: Any


def lookahead(tx: optax.GradientTransformation, sync_period: int, slow_step: float = 0.5
              ) -> optax.GradientTransformation:
    """``optax.lookahead(tx, sync_period, slow_step)`` on plain params: the slow weights live in the optimizer
    state, so the train state's params stay the fast weights the model trains and evaluates with (right after a
    sync they are the slow ones). Every ``sync_period`` steps the slow weights move ``slow_step`` of the way to
    the fast, which restart from them; batch-norm statistics follow the fast weights."""
    inner = optax.lookahead(tx, sync_period, slow_step)

    def init(params: Any) -> LookaheadState:
        slow = jax.tree.map(lambda p: jnp.array(p, copy=True), params)  # own buffers (donation)
        return LookaheadState(inner.init(optax.LookaheadParams.init_synced(params)), slow)

    def update(updates: Any, state: LookaheadState, params: Any = None) -> tuple[Any, LookaheadState]:
        both, inner_state = inner.update(updates, state.lookahead, optax.LookaheadParams(fast=params, slow=state.slow))
        return both.fast, LookaheadState(inner_state, optax.apply_updates(state.slow, both.slow))

    return optax.GradientTransformation(init, update)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, run_key)`` of a run's ``train.seed``: the model's initialisation (``nnx.Rngs(init_key)``)
    and :attr:`TrainState.key`."""
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, run_key


def model_state(model: nnx.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, batch_stats)``: the model's ``nnx.Param`` and ``nnx.BatchStat`` values as pure dicts (new
    buffers, so a step may donate them), keyed by submodule (``{"Conv_0": {"kernel", "bias"}, ...}``);
    ``batch_stats`` is ``{}`` for a model without batch norm."""
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    copy = functools.partial(jax.tree.map, lambda a: jnp.array(a, copy=True))
    return copy(nnx.to_pure_dict(params)), copy(nnx.to_pure_dict(stats))


def bind(model: nnx.Module, params: Any, batch_stats: Any) -> nnx.Module:
    """A new module of ``model``'s graph and settings holding ``params`` and ``batch_stats`` (pure dicts as
    :func:`model_state` gives; any dtype, e.g. bf16 copies); ``model`` itself is unchanged. Inside ``jit`` the
    split and merge are trace-time Python only."""
    graphdef, p, s, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    nnx.replace_by_pure_dict(p, params)
    if batch_stats:
        nnx.replace_by_pure_dict(s, batch_stats)
    return nnx.merge(graphdef, p, s, rest)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int, ema: bool = False
                       ) -> TrainState:
    """The model's variables (:func:`model_state`), their optimizer state, step 0 and the run key of ``seed``
    (:func:`seed_keys`; the model was initialised from its ``init_key`` when built from a config); ``ema``: a
    moving average of the weights, starting at them."""
    params, batch_stats = model_state(model)
    average = jax.tree.map(lambda p: jnp.array(p, copy=True), params) if ema else {}  # own buffers (donation)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      batch_stats=batch_stats, key=seed_keys(seed)[1], ema=average)


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` (``batch_stats`` only when the model has any): a model's state in one dict."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


# ------------------------------------------------------------------------------- older checkpoints
#: The layout of the state in a checkpoint (its meta's ``state_layout``): 2 since 2026-12-07, the weights'
#: average the field ``ema``; 1 (no ``state_layout``) before, the average the optimizer chain's last state,
#: ``{"count", "ema"}`` (``count`` = ``step``).
STATE_LAYOUT = 2


@flax.struct.dataclass
class LegacyTrainState:
    """:class:`TrainState` as layout 1 saved it: no ``ema`` field."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    key: jax.Array


class _LegacyEma(NamedTuple):
    count: jax.Array
    ema: Any


def legacy_layout(state: TrainState) -> LegacyTrainState:
    """``state`` (arrays or shapes) as layout 1 held it: the restore target of an older checkpoint."""
    opt_state = state.opt_state
    if state.ema:
        opt_state = (*opt_state, _LegacyEma(state.step, state.ema))  # its count: an int32 scalar, the step
    return LegacyTrainState(state.step, state.params, opt_state, state.batch_stats, state.key)


def from_legacy(old: LegacyTrainState) -> TrainState:
    """A layout-1 state (:func:`legacy_layout`'s structure) as a :class:`TrainState`."""
    opt_state, ema = old.opt_state, {}
    if opt_state and isinstance(opt_state[-1], _LegacyEma):
        opt_state, ema = tuple(opt_state[:-1]), opt_state[-1].ema
    return TrainState(old.step, old.params, opt_state, old.batch_stats, old.key, ema)


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A state restored as saved (nested dicts and lists), in today's layout: a layout-1 average (the optimizer
    state's last entry ``{"count", "ema"}``) moved to ``ema``."""
    if "ema" in saved:
        return saved
    opt_state, ema = saved.get("opt_state"), {}
    if isinstance(opt_state, list | tuple) and opt_state and isinstance(opt_state[-1], dict) and set(
            opt_state[-1]) == {"count", "ema"}:
        opt_state, ema = list(opt_state[:-1]), opt_state[-1]["ema"]
    return {**saved, "opt_state": opt_state, "ema": ema}

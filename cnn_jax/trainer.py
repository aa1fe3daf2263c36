"""The :class:`Trainer`: a config's compiled train and evaluation functions on 1..N devices (``jit`` over a
:class:`~jax.sharding.Mesh`, or ``pmap``), and what they take: the model (:func:`build_model`), the micro-batch
choice (:func:`resolve_microbatch`), the data and its preprocessing (:func:`load_data`, :func:`preprocessing`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from cnn_jax import parallel
from cnn_jax.backend import auto_microbatch
from cnn_jax.config import AUTO, Config, ConfigError
from cnn_jax.models import batch_norm_biases, frozen_params, get_model
from cnn_jax.steps import COMPUTE_DTYPES, Preprocess, default_preprocess, evaluate, train_chunk, train_step
from cnn_jax.train_state import (
    TrainState,
    create_train_state,
    eval_params,
    make_optimizer,
    make_schedule,
    seed_keys,
)

__all__ = ["Trainer", "NonFiniteLossError", "build_model", "resolve_microbatch", "load_data", "preprocessing"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient at global step ``step``; ``state`` is the last good
    state (all updates up to step ``step - 1``), as host arrays."""

    def __init__(self, step: int, state: TrainState):
        super().__init__(f"non-finite loss or gradient at train step {step}; last good state is at step {step}")
        self.step = step
        self.state = state


def build_model(config: Config, num_classes: int, input_shape: Sequence[int]) -> nnx.Module:
    """The run's model (``config.model``) for one example shape ``(H, W, C)``, initialised from ``train.seed``
    (:func:`cnn_jax.train_state.seed_keys`)."""
    return get_model(config.model.name, num_classes=num_classes, input_shape=tuple(input_shape),
                     rngs=nnx.Rngs(seed_keys(config.train.seed)[0]), **config.model.kwargs())


def resolve_microbatch(config: Config, model: nnx.Module | None, saved: dict[str, Any] | None = None) -> Config:
    """``train.microbatch="auto"`` made concrete: a resumed run's recorded choice (``saved``, its config dict);
    else the backend's rule, :func:`cnn_jax.backend.auto_microbatch` (on CPU 16-image slices, 32 for a model
    with batch norm, when they divide the global batch; off on other backends and under ``pmap``). Other values
    are returned as they are."""
    if config.train.microbatch != AUTO:
        return config
    if saved is not None:
        value = saved.get("train", {}).get("microbatch")  # runs from before "auto" recorded None
    else:
        has_bn = bool(jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
        value = auto_microbatch(has_bn, config.train.batch_size, config.run.parallelism)
    return config.replace(train=config.train.replace(microbatch=value))


class Trainer:
    """The compiled train/eval functions for one model and config (each traced once, for chunks of any length;
    counted in ``trace_counts``); state and data go in and out explicitly.

    Args:
      model: an NNX module called as ``model(x, rngs=...)`` (:mod:`cnn_jax.models`); its variables are the
        initial state (:func:`~cnn_jax.train_state.create_train_state`), its graph the compiled steps' template.
      config: the run's :class:`~cnn_jax.config.Config` (``train``, ``run.parallelism``, ``data.tta``).
      num_train: training-set size N (steps per epoch = ``N // batch_size``, the schedule length).
      input_shape: one example ``(H, W, C)``.
      preprocess / eval_preprocess: ``(key, uint8 (B,H,W,C)) -> float (B,H,W,C)`` inside the compiled step.
      devices: default: every device of every process (``sharded``, ``pmap``: this host's), the first for ``none``.
    """

    def __init__(self, model: nnx.Module, config: Config, num_train: int, input_shape: Sequence[int],
                 preprocess: Preprocess | None = None, eval_preprocess: Preprocess | None = None,
                 devices: Sequence[jax.Device] | None = None):
        config = resolve_microbatch(config, model)
        cfg, run = config.train, config.run
        bn_biases = batch_norm_biases(model)
        if cfg.bn_bias_lr != 1 and not any(jax.tree.leaves(bn_biases)):
            raise ConfigError(f"--bn-bias-lr {cfg.bn_bias_lr:g}: model {config.model.name!r} has no batch norm; drop "
                              "it, or pick a model with batch norm (--model bn_cnn or resnet)")
        self.config, self.cfg, self.input_shape = config, cfg, tuple(input_shape)
        self.steps_per_epoch = num_train // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({num_train})")
        self.preprocess = preprocess or default_preprocess
        self.eval_preprocess = eval_preprocess or self.preprocess
        total = self.steps_per_epoch * max(cfg.epochs, 1)
        self.schedule = make_schedule(cfg, total)  # the learning rate by step: the optimizer's, and logged
        self.tx = make_optimizer(cfg, total, schedule=self.schedule, frozen=frozen_params(model), bn_biases=bn_biases)
        self.pmap = run.parallelism == "pmap"
        devices = list(devices) if devices is not None else (jax.local_devices() if self.pmap else jax.devices())
        self.devices = devices[:1] if run.parallelism == "none" else devices
        n = len(self.devices)
        if cfg.batch_size % n or run.eval_batch_size % n:
            raise ValueError(f"batch sizes ({cfg.batch_size}, {run.eval_batch_size}) must divide evenly over {n} "
                             "devices")
        local = cfg.batch_size // n if self.pmap else cfg.batch_size
        if cfg.microbatch and local > cfg.microbatch and local % cfg.microbatch:
            raise ValueError(f"--microbatch {cfg.microbatch} must divide the per-device batch {local}")
        self.model = model
        self.mesh = parallel.make_mesh(self.devices[:1] if self.pmap else self.devices)  # pmap evaluates here
        self.trace_counts: Counter[str] = Counter()
        self._chunk_fn = self._build_chunk()
        self._eval_fn = self._build_eval()

    # ------------------------------------------------------------------------------------ placement
    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of the state (no compute): the target of a checkpoint restore."""
        return jax.eval_shape(lambda: create_train_state(self.model, self.tx, self.cfg.seed, self.cfg.ema is not None))

    def init_state(self) -> TrainState:
        """Fresh state: the model's initial variables and the run key of ``train.seed``, placed."""
        return self.place_state(create_train_state(self.model, self.tx, self.cfg.seed, self.cfg.ema is not None))

    def place_state(self, state: TrainState) -> TrainState:
        """Host (or device) state -> replicated on the mesh, or stacked per device for ``pmap``."""
        if self.pmap:
            return parallel.put_pmap_replicated(state, self.devices)
        return parallel.put_replicated(state, self.mesh)

    def host_state(self, state: TrainState) -> TrainState:
        """A numpy copy of the (unreplicated) state."""
        return parallel.to_host(parallel.unreplicate(state) if self.pmap else state)

    def put_data(self, images: np.ndarray, labels: np.ndarray, for_eval: bool = False) -> tuple[Any, Any]:
        """Device-resident ``(uint8 (N,H,W,C), int32 (N,))``: replicated on the mesh (stacked per device for
        ``pmap`` training)."""
        data = (np.asarray(images), np.asarray(labels, np.int32))
        if self.pmap and not for_eval:
            return parallel.put_pmap_replicated(data, self.devices)
        return parallel.put_replicated(data, self.mesh)

    # ------------------------------------------------------------------------------------- compiled
    def _build_chunk(self):
        from cnn_jax.data.augment import make_epoch_augment

        cfg = self.cfg
        axis = parallel.PMAP_AXIS if self.pmap else None
        model = self.model
        if self.pmap and any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(model)):
            model = nnx.with_attributes(model, only=nnx.BatchNorm, axis_name=axis)  # statistics over all devices
        step_fn = functools.partial(
            train_step, model=model, tx=self.tx, preprocess=self.preprocess, label_smoothing=cfg.label_smoothing,
            compute_dtype=COMPUTE_DTYPES[cfg.precision], axis_name=axis,
            microbatch=cfg.microbatch, ema=cfg.ema)
        kw = dict(step_fn=step_fn, steps_per_epoch=self.steps_per_epoch, global_batch=cfg.batch_size,
                  epoch_augment=make_epoch_augment(self.config.data.augment))
        if self.pmap:
            kw.update(local_batch=cfg.batch_size // len(self.devices), axis_name=axis)
        else:
            kw.update(batch_sharding=parallel.data_sharded(self.mesh))

        def fn(state, images, labels, steps, totals):
            self.trace_counts["train_chunk"] += 1
            return train_chunk(state, images, labels, steps=steps, totals=totals, **kw)

        if self.pmap:
            return jax.pmap(fn, axis_name=axis, devices=self.devices, donate_argnums=0,
                            in_axes=(0, 0, 0, None, None))
        rep = parallel.replicated(self.mesh)
        return jax.jit(fn, donate_argnums=0, in_shardings=(rep,) * 5, out_shardings=(rep, rep))

    def _build_eval(self):
        kw = dict(model=self.model, batch=self.config.run.eval_batch_size, preprocess=self.eval_preprocess,
                  batch_sharding=parallel.data_sharded(self.mesh), tta=self.config.data.tta,
                  compute_dtype=COMPUTE_DTYPES[self.cfg.precision])

        def fn(state, images, labels):
            self.trace_counts["evaluate"] += 1
            state = state.replace(params=eval_params(state))  # the weights' average, when kept
            return evaluate(state, images, labels, **kw)

        rep = parallel.replicated(self.mesh)
        return jax.jit(fn, in_shardings=(rep, rep, rep), out_shardings=rep)

    def train_chunk(self, state: TrainState, data: tuple[Any, Any], steps: int | None = None,
                    totals: tuple[float, int] = (0.0, 0)) -> tuple[TrainState, dict[str, Any]]:
        """``steps`` (default ``run.steps_per_chunk`` or an epoch) fused steps, within one epoch; ``state`` is
        donated. One compiled function serves every length. ``totals``: the epoch's ``(loss_sum, correct)``
        so far, added on to (epoch metrics independent of chunking). Returns the new state and device metrics
        (:func:`cnn_jax.steps.train_chunk`), not synced."""
        steps = steps or self.config.run.steps_per_chunk or self.steps_per_epoch
        state, metrics = self._chunk_fn(state, *data, np.int32(steps),
                                        (np.float32(totals[0]), np.int32(totals[1])))
        return state, parallel.unreplicate(metrics) if self.pmap else metrics

    def check_finite(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Raise :class:`NonFiniteLossError` (host sync) if the chunk hit a non-finite step."""
        bad = int(parallel.to_host(metrics["bad_step"]))
        if bad >= 0:
            raise NonFiniteLossError(bad, self.host_state(state))

    def evaluate(self, state: TrainState, data: tuple[Any, Any]) -> dict[str, Any]:
        """``{"loss", "accuracy", "confusion"}`` as numpy, on ``put_data(..., for_eval=True)`` data."""
        if self.pmap:
            state = parallel.put_replicated(parallel.unreplicate(state), self.mesh)
        return parallel.to_host(self._eval_fn(state, *data))


# ---------------------------------------------------------------------------------------------- data
def load_data(config: Config):
    """The run's splits (``config.data``; ``limit`` cuts train and test) and its train/eval preprocessing."""
    from cnn_jax.data import load

    d = config.data
    splits = load(d.dataset, data_dir=d.data_dir, source_dir=d.source_dir, val_size=d.val_size,
                  seed=config.train.seed, download=d.download, verify=d.verify,
                  progress=config.run.progress and sys.stderr.isatty())  # as the training bar
    if d.limit:
        splits = dataclasses.replace(splits, **{s: dataclasses.replace(
            getattr(splits, s), images=getattr(splits, s).images[:d.limit], labels=getattr(splits, s).labels[:d.limit])
            for s in ("train", "test")})
    return splits, *preprocessing(config)


def preprocessing(config: Config) -> tuple[Preprocess, Preprocess]:
    """``(preprocess, eval_preprocess)`` of a run of ``config``: uint8 NHWC batches to float, augmented in [0, 1]
    (shifts fill with black, the background) then standardised for training; standardised only for evaluation.
    (The ``data.augment`` names that need the example's index are the train loop's:
    :func:`~cnn_jax.data.augment.make_epoch_augment`.)"""
    from cnn_jax.data.augment import EPOCH_AUGMENTATIONS, NORM_STATS, augment_for, normalize

    d = config.data
    names = tuple(n for n in d.augment if n not in EPOCH_AUGMENTATIONS)
    aug = augment_for(d.dataset, names) if names else None
    stats = NORM_STATS.get(d.dataset)

    def preprocess(key, x):
        x = normalize(x)
        x = aug(key, x) if aug is not None else x
        return x if stats is None else (x - stats[0]) / stats[1]

    def eval_preprocess(key, x):
        return normalize(x, d.dataset)

    return preprocess, eval_preprocess

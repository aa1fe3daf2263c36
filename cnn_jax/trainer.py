"""Compiled train/eval functions for one model + config, on one device, a sharded mesh, or ``pmap``.

:class:`Trainer` owns the model, the optax chain and the compiled functions (one trace per distinct chunk
length, counted in ``trace_counts``); state and data go in and out explicitly.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import parallel
from cnn_jax.config import TrainConfig
from cnn_jax.steps import Preprocess, check_tta, default_preprocess, evaluate, train_chunk, train_step
from cnn_jax.train_state import TrainState, create_train_state, make_optimizer

__all__ = ["Trainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient at global step ``step``; ``state`` is the last good
    state (all updates up to step ``step - 1``), unreplicated."""

    def __init__(self, step: int, state: TrainState):
        super().__init__(f"non-finite loss or gradient at train step {step}; "
                         f"last good state is at step {step}")
        self.step = step
        self.state = state


class Trainer:
    """Builds the state and the compiled functions for ``cfg.parallelism``.

    Args:
      model: a Flax module called as ``model.apply(vars, x, train=...)``.
      cfg: the run's :class:`TrainConfig`.
      num_train: training-set size N (fixes steps per epoch = ``N // batch_size``, the schedule length).
      input_shape: one example ``(H, W, C)``.
      preprocess: ``(key, uint8 (B,H,W,C)) -> float (B,H,W,C)`` for training (augmentation goes here).
      eval_preprocess: same signature, for evaluation (called with a fixed key); default ``preprocess``.
      devices: devices to use (default: all global devices for sharded/pmap, the first for "none").
      tta: test-time augmentation views for evaluation (:data:`cnn_jax.steps.TTA_VIEWS`), e.g. ``("flip",)``.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, num_train: int, input_shape: tuple[int, ...],
        preprocess: Preprocess | None = None, eval_preprocess: Preprocess | None = None,
        devices: Sequence[jax.Device] | None = None, tta: Sequence[str] = (),
    ):
        self.cfg = cfg
        self.tta = check_tta(tta)
        self.input_shape = tuple(input_shape)
        self.steps_per_epoch = num_train // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({num_train})")
        self.preprocess = preprocess or default_preprocess
        self.eval_preprocess = eval_preprocess or self.preprocess
        self.tx = make_optimizer(cfg, self.steps_per_epoch * max(cfg.epochs, 1))
        self.strategy = cfg.parallelism
        self.devices = list(devices) if devices is not None else jax.devices()
        self.trace_counts: Counter[str] = Counter()
        self._chunk_fns: dict[int, Any] = {}
        n_dev = len(self.devices)
        if self.strategy != "none" and (cfg.batch_size % n_dev or cfg.eval_batch_size % n_dev):
            raise ValueError(f"batch sizes ({cfg.batch_size}, {cfg.eval_batch_size}) must divide evenly over "
                             f"{n_dev} devices")
        if self.strategy == "none":
            self.devices = self.devices[:1]
        local = cfg.batch_size // len(self.devices) if self.strategy == "pmap" else cfg.batch_size
        if cfg.microbatch and local > cfg.microbatch and local % cfg.microbatch:
            raise ValueError(f"microbatch {cfg.microbatch} must divide the per-device batch {local}")
        if self.strategy == "pmap" and "bn_axis_name" in getattr(model, "__dataclass_fields__", {}):
            self.pmap_model = model.clone(bn_axis_name=parallel.PMAP_AXIS)
        else:
            self.pmap_model = model
        self.model = model
        self.mesh = parallel.make_mesh(self.devices) if self.strategy == "sharded" else None
        self.compute_dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
        self._eval_fn = self._build_eval()

    # ------------------------------------------------------------------------------------ placement
    def init_state(self) -> TrainState:
        """Fresh state from ``cfg.seed``, placed for the strategy."""
        return self.place_state(create_train_state(self.model, self.tx, self.input_shape, self.cfg.seed))

    def place_state(self, state: TrainState) -> TrainState:
        if self.strategy == "sharded":
            return parallel.put_replicated(state, self.mesh)
        if self.strategy == "pmap":
            return parallel.put_pmap_replicated(state, self.devices)
        return jax.device_put(state, self.devices[0])

    def host_state(self, state: TrainState) -> TrainState:
        """A numpy copy of the (unreplicated) state."""
        if self.strategy == "pmap":
            state = parallel.unreplicate(state)
        return parallel.to_host(state)

    def put_data(self, images: np.ndarray, labels: np.ndarray, for_eval: bool = False) -> tuple[Any, Any]:
        """Device-resident ``(uint8 (N,H,W,C), int32 (N,))``: replicated on the mesh, stacked per device for
        ``pmap`` training, on the first device for ``pmap`` evaluation and the single-device strategy."""
        data = (np.asarray(images), np.asarray(labels, np.int32))
        if self.strategy == "sharded":
            return parallel.put_replicated(data, self.mesh)
        if self.strategy == "pmap" and not for_eval:
            return parallel.put_pmap_replicated(data, self.devices)
        return jax.device_put(data, self.devices[0])

    # ------------------------------------------------------------------------------------- compiled
    def _step_fn(self, axis_name: str | None):
        model = self.pmap_model if axis_name else self.model
        return functools.partial(
            train_step, model=model, tx=self.tx, preprocess=self.preprocess,
            label_smoothing=self.cfg.label_smoothing, compute_dtype=self.compute_dtype, axis_name=axis_name,
            microbatch=self.cfg.microbatch,
        )

    def _build_chunk(self, steps: int):
        cfg, spe = self.cfg, self.steps_per_epoch
        axis = parallel.PMAP_AXIS if self.strategy == "pmap" else None
        kw = dict(step_fn=self._step_fn(axis), steps=steps, steps_per_epoch=spe, global_batch=cfg.batch_size)
        if self.strategy == "pmap":
            kw.update(local_batch=cfg.batch_size // len(self.devices), axis_name=axis)
        if self.strategy == "sharded":
            kw.update(batch_sharding=parallel.data_sharded(self.mesh))

        def fn(state, images, labels):
            self.trace_counts["train_chunk"] += 1
            return train_chunk(state, images, labels, **kw)

        if self.strategy == "pmap":
            return jax.pmap(fn, axis_name=axis, devices=self.devices, donate_argnums=0)
        if self.strategy == "sharded":
            rep = parallel.replicated(self.mesh)
            return jax.jit(fn, donate_argnums=0, in_shardings=(rep, rep, rep), out_shardings=(rep, rep))
        return jax.jit(fn, donate_argnums=0)

    def _build_eval(self):
        sharding = parallel.data_sharded(self.mesh) if self.strategy == "sharded" else None
        kw = dict(model=self.model, batch=self.cfg.eval_batch_size, preprocess=self.eval_preprocess,
                  batch_sharding=sharding, tta=self.tta)

        def fn(state, images, labels):
            self.trace_counts["evaluate"] += 1
            return evaluate(state, images, labels, **kw)

        if self.strategy == "sharded":
            rep = parallel.replicated(self.mesh)
            return jax.jit(fn, in_shardings=(rep, rep, rep), out_shardings=rep)
        return jax.jit(fn)

    def train_chunk(self, state: TrainState, data: tuple[Any, Any], steps: int | None = None
                    ) -> tuple[TrainState, dict[str, Any]]:
        """Run ``steps`` (default ``cfg.steps_per_chunk`` or a whole epoch) fused steps; ``state`` is donated.

        Returns the new state and device metrics (see :func:`cnn_jax.steps.train_chunk`), not synced.
        """
        steps = steps or self.cfg.steps_per_chunk or self.steps_per_epoch
        if steps not in self._chunk_fns:
            self._chunk_fns[steps] = self._build_chunk(steps)
        state, metrics = self._chunk_fns[steps](state, *data)
        if self.strategy == "pmap":
            metrics = parallel.unreplicate(metrics)
        return state, metrics

    def check_finite(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Raise :class:`NonFiniteLossError` (host sync) if the chunk hit a non-finite step."""
        bad = int(parallel.to_host(metrics["bad_step"]))
        if bad >= 0:
            raise NonFiniteLossError(bad, self.host_state(state))

    def evaluate(self, state: TrainState, data: tuple[Any, Any]) -> dict[str, Any]:
        """``{"loss", "accuracy", "confusion"}`` as numpy, on ``put_data(..., for_eval=True)`` data."""
        if self.strategy == "pmap":
            state = jax.device_put(parallel.unreplicate(state), self.devices[0])
        return parallel.to_host(self._eval_fn(state, *data))

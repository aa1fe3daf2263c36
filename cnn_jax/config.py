"""Training configuration: a frozen dataclass, kept apart from the code that uses it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("f32", "bf16")
PARALLELISMS = ("none", "sharded", "pmap")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, except model, data and preprocessing.

    ``batch_size`` is the global batch (split over devices). ``steps_per_chunk``: train steps fused in
    one compiled ``lax.scan`` call (None: a whole epoch). ``microbatch``: per-device gradient accumulation
    slice (None: the whole batch at once; see :func:`cnn_jax.steps.train_step`; 16 or 32 is fastest for
    LabCNN on CPU). ``parallelism``: ``"none"`` (one device),
    ``"sharded"`` (``jit`` over a ``Mesh`` data axis) or ``"pmap"``. ``distributed``: call
    ``jax.distributed.initialize`` first (also enabled by env ``CNN_JAX_DISTRIBUTED=1``).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    momentum: float = 0.9
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    clip: float | None = None
    precision: str = "f32"
    seed: int = 0
    parallelism: str = "none"
    steps_per_chunk: int | None = None
    microbatch: int | None = None
    early_stopping_patience: int | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("parallelism", PARALLELISMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size <= 0 or self.eval_batch_size <= 0 or self.epochs < 0:
            raise ValueError("TrainConfig: batch sizes must be positive and epochs non-negative")
        if self.microbatch is not None and self.microbatch <= 0:
            raise ValueError(f"TrainConfig.microbatch must be positive or None, got {self.microbatch}")
        if self.steps_per_chunk is not None and self.steps_per_chunk <= 0:
            raise ValueError(f"TrainConfig.steps_per_chunk must be positive or None, "
                             f"got {self.steps_per_chunk}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""Decisions that depend on the backend (CPU, GPU, TPU), each made here, once, with its reason.

Every rule reads the backend through :func:`name` (JAX's default backend, or the ``backend`` it is given), so a
test can take another backend's branch by patching ``jax.default_backend``. The rules are read when a function is
traced or a run starts, never at import (``jax.distributed`` must start before anything touches a device).

* :func:`conv_impl` (``ops.default_impl``): im2col on CPU, the native convolution elsewhere.
* :data:`INFERENCE_IMPL` (evaluation and prediction, :func:`cnn_jax.steps.inference_model`): the native
  convolution and pooling on every backend.
* :func:`auto_microbatch` (``train.microbatch="auto"``): 16/32-image slices on CPU, off elsewhere.
* :data:`DEFAULT_PRECISION` (``train.precision``): float32 on every backend; bf16 is asked for.
* :func:`matmul_precision` (float32 matmuls and convolutions): full float32 (``HIGHEST``) on GPU and TPU.

:func:`describe` lists them, with their reasons, for reports (``benchmarks/device_check.py``).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["name", "conv_impl", "INFERENCE_IMPL", "auto_microbatch", "DEFAULT_PRECISION", "matmul_precision",
           "user_matmul_precision", "describe", "REASONS"]

Impl = Literal["native", "im2col"]

#: Why each rule is what it is (shown by :func:`describe`).
REASONS: dict[str, str] = {
    "conv_impl": "CPU: im2col + one matmul, several times XLA:CPU's convolution and fast inside lax.scan where "
                 "XLA:CPU's is not (benchmarks/primitives.py); GPU/TPU: the native convolution, which XLA hands "
                 "to cuDNN or the TPU's matrix unit",
    "inference_impl": "forward passes without gradients (evaluation, prediction): XLA's own convolution and "
                      "pooling on every backend; on CPU its forward pass (YNNPACK) evaluated the presets' networks "
                      "1.8-3.7x faster than im2col (f32 and bf16, benchmarks/results/eval-speed-cpu-2026-12-02."
                      "txt); only its backward pass is slow there, which evaluation does not take",
    "auto_microbatch": "CPU: gradient accumulation over 16-image slices (32 with batch norm) keeps im2col buffers "
                       "cache-sized, measured 1.2-1.5x the unsliced step (benchmarks/peers.py); GPU/TPU: off, a "
                       "whole batch is what keeps the device busy, and pmap's slices would be per device",
    "precision": "float32 on every backend: precision is part of what a run is (recorded, compared on resume), "
                 "so the same command must be the same run on any machine; bf16 is asked for (--precision bf16)",
    "matmul_precision": "float32 means float32: XLA's DEFAULT rounds float32 matmul and convolution operands to "
                        "TF32 on recent NVIDIA GPUs (10-bit mantissa) and to one bf16 pass on TPU, which would "
                        "break the exactness the tests hold the ops to and make 'f32 against bf16' compare two "
                        "low precisions; HIGHEST keeps full float32. Speed is asked for with --precision bf16 (or "
                        "a jax.default_matmul_precision of your own, which wins). CPU: XLA:CPU computes float32 "
                        "exactly by default, nothing set",
}


def name(backend: str | None = None) -> str:
    """``backend`` if given, else JAX's default backend (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    return backend or jax.default_backend()


def conv_impl(backend: str | None = None) -> Impl:
    """The convolution and pooling implementation for ``backend``: ``"im2col"`` on CPU, ``"native"`` elsewhere."""
    return "im2col" if name(backend) == "cpu" else "native"


#: The convolution and pooling implementation of forward-only passes (see :data:`REASONS`).
INFERENCE_IMPL: Impl = "native"


def auto_microbatch(batch_norm: bool, batch_size: int, parallelism: str, backend: str | None = None) -> int | None:
    """``train.microbatch="auto"`` for a new run: on CPU (not under ``pmap``), 16-image slices, or 32 for a model
    with batch norm (whose statistics then come from 32 images), when they divide the batch and are smaller than
    it; else None (off)."""
    value = 32 if batch_norm else 16
    if name(backend) != "cpu" or parallelism == "pmap" or batch_size <= value or batch_size % value:
        return None
    return value


#: ``train.precision``'s default: the same on every backend (see :data:`REASONS`).
DEFAULT_PRECISION = "f32"


def matmul_precision(dtype: Any, backend: str | None = None) -> lax.Precision | None:
    """The ``precision`` of a matmul or convolution whose caller gave none: ``HIGHEST`` for float32 operands on
    GPU and TPU; None (XLA's default) on CPU, for other dtypes (bf16 is exact in one pass), and whenever
    ``jax.default_matmul_precision`` is set (that choice wins)."""
    if user_matmul_precision() is not None or jnp.dtype(dtype) != jnp.float32:
        return None
    return None if name(backend) == "cpu" else lax.Precision.HIGHEST


def user_matmul_precision() -> str | None:
    """``jax.default_matmul_precision`` as set by the user (flag, environment or context), or None."""
    return getattr(jax.config, "jax_default_matmul_precision", None)


def describe(backend: str | None = None) -> dict[str, Any]:
    """Each rule's value on ``backend`` (default: JAX's) and its reason, as plain data."""
    b = name(backend)
    mm = matmul_precision(jnp.float32, b)
    return {
        "backend": b,
        "conv_impl": {"value": conv_impl(b), "reason": REASONS["conv_impl"]},
        "inference_impl": {"value": INFERENCE_IMPL, "reason": REASONS["inference_impl"]},
        "auto_microbatch": {"value": {"no batch norm, batch 128": auto_microbatch(False, 128, "none", b),
                                      "batch norm, batch 128": auto_microbatch(True, 128, "none", b)},
                            "reason": REASONS["auto_microbatch"]},
        "precision": {"value": DEFAULT_PRECISION, "reason": REASONS["precision"]},
        "matmul_precision": {"value": "xla default" if mm is None else mm.name.lower(),
                             "user_setting": user_matmul_precision(),
                             "reason": REASONS["matmul_precision"]},
    }

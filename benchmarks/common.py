"""Helpers shared by the benchmark scripts: FLOP counts of the package's CNNs, measured GEMM peaks and the
machine a figure came from."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp


def cnn_forward_flops(size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64), dense: int = 128,
                      classes: int = 10, padding: str = "VALID") -> dict[str, float]:
    """Forward FLOPs per image (multiply-adds x 2) of a conv stack (3x3 convs, each followed by a 2x2 pool:
    LabCNN with ``VALID``, BNCNN with ``SAME``): ``conv1``, ``conv2``, ... and ``dense`` (both dense layers)."""
    out, h, c = {}, size, channels
    for i, w in enumerate(widths):
        h = h - 2 if padding == "VALID" else h
        out[f"conv{i + 1}"] = 2.0 * h * h * 9 * c * w
        h, c = h // 2, w
    out["dense"] = 2.0 * (h * h * c * dense + dense * classes)
    return out


def resnet_forward_flops(size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64, 128, 256),
                         residual: Sequence[int] = (1, 3), classes: int = 10) -> dict[str, float]:
    """Forward FLOPs per image of :class:`cnn_jax.models.ResNet` (3x3 SAME convs): ``stem``, ``stage1``, ...
    (each stage's conv before its pool, plus its residual block's two convs after it) and ``dense``."""
    out, h, c = {"stem": 2.0 * size * size * 9 * channels * widths[0]}, size, widths[0]
    for i, w in enumerate(widths[1:], start=1):
        flops = 2.0 * h * h * 9 * c * w
        h, c = h // 2, w
        out[f"stage{i}"] = flops + (2 * 2.0 * h * h * 9 * w * w if i in residual else 0.0)
    out["dense"] = 2.0 * c * classes
    return out


def lab_cnn_forward_flops(**kwargs) -> dict[str, float]:
    """:func:`cnn_forward_flops` of LabCNN (VALID convs 32, 64; dense 128)."""
    return cnn_forward_flops(**kwargs)


def lab_cnn_train_flops(**kwargs) -> float:
    """FLOPs per trained image: 3x the forward FLOPs (~15.8 MFLOP for LabCNN on 28x28x1); kwargs as
    :func:`cnn_forward_flops`."""
    return 3.0 * sum(cnn_forward_flops(**kwargs).values())


def gemm_peak_gflops(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """GFLOP/s of the fastest of ``repeats`` jitted ``n x n`` matmuls: the reference for "% of peak".
    ``dtype=jnp.bfloat16``: bfloat16 inputs, float32 accumulation and output (``preferred_element_type``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def cpu_flags() -> str:
    """The CPU flags that decide matmul speed (AVX2/FMA, AVX-512, bf16 dot products, AMX), from /proc/cpuinfo."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f" {f}" in flags)


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """The machine a measurement ran on: CPU model and flags, core count and the preloaded allocator (the GEMM
    peak, which drifts, each script measures beside its figures: :func:`gemm_peak_gflops`)."""
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
            "ld_preload": os.environ.get("LD_PRELOAD", "")}


def emit(text: str, report: dict, json_path: str | None = None, markdown_path: str | None = None) -> dict:
    """Print a script's table ``text``; write ``report`` to ``json_path`` and ``text`` to ``markdown_path`` when
    given (atomically). Returns ``report``."""
    from cnn_jax.files import write_json, write_text

    print(text)
    if json_path:
        write_json(json_path, report)
    if markdown_path:
        write_text(markdown_path, text)
    return report

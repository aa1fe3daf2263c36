"""The suite's persistent compilation cache (``jax_cache.py``, set up in ``conftest.py``): every Python a test starts
inherits it, and a program one process compiled is loaded, not compiled again, by the next."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jax_cache
import pytest

HIT = "Persistent compilation cache hit for 'jit__lambda'"


@pytest.mark.skipif(bool(os.environ.get("CNN_JAX_TEST_NO_CACHE")), reason="the cache is off (CNN_JAX_TEST_NO_CACHE)")
def test_a_child_process_loads_what_another_compiled():
    assert os.environ.get(jax_cache.DIR), "conftest.py set no compilation cache for the session"
    scale = time.time_ns() % 10**9 + 1  # a program no earlier session compiled (a cache folder given may be kept)
    code = f"import jax, jax.numpy as jnp; print(jax.jit(lambda x: jnp.tanh(x) * {scale}.0)(jnp.ones(5)).sum())"
    env = {**os.environ, "JAX_LOG_COMPILES": "1"}  # compilations and cache hits, as warnings
    first, second = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    timeout=120) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert "Compiling jit(<lambda>)" in first.stderr and HIT not in first.stderr, first.stderr[-3000:]  # compiled
    assert HIT in second.stderr, second.stderr[-3000:]  # loaded
    assert first.stdout == second.stdout
    cache = Path(os.environ[jax_cache.DIR])
    assert any(p.name.startswith("jit__lambda") for p in cache.iterdir())

"""JAX's persistent compilation cache for the test session: every program compiled once, in the test process and
in every Python it starts (they inherit the environment), small programs too. The fake device count
(``--xla_force_host_platform_device_count``) is not part of JAX's cache key, so processes with 1 and 8 devices share
entries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SETTINGS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
DIR = "JAX_COMPILATION_CACHE_DIR"


def use(folder: Path) -> None:
    """Cache every compilation in ``folder``, here (also when JAX is imported already) and in child processes."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(SETTINGS, **{DIR: str(folder)})
    if "jax" in sys.modules:  # its config read the environment when it was imported
        import jax

        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def passed_on() -> dict[str, str]:
    """The cache's settings, for a process a test starts with an environment of its own (``env={...}``, not
    ``os.environ``); empty when the cache is off (``CNN_JAX_TEST_NO_CACHE``)."""
    return {k: os.environ[k] for k in (DIR, *SETTINGS) if k in os.environ}

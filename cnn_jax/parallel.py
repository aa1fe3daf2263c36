"""Device placement for data parallelism: a 1-D ``Mesh`` data axis, ``pmap`` replication, multi-host init.

Sharded ``jit``: params/optimizer state replicated (``P()``), each global batch split over the ``"data"``
axis (``P("data")``); XLA inserts the gradient all-reduce. ``pmap``: state stacked along a leading device
axis, gradients ``pmean``-ed over :data:`PMAP_AXIS`. Multi-host: :func:`maybe_initialize_distributed`
before any other JAX call; every process passes the same host arrays and each process's devices compute
their shard of every batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS", "PMAP_AXIS", "make_mesh", "replicated", "data_sharded", "put_replicated",
    "put_pmap_replicated",
    "unreplicate", "to_host", "maybe_initialize_distributed",
]

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh over ``devices`` (default: all global devices) with axis :data:`DATA_AXIS`."""
    devs = np.asarray(list(devices) if devices is not None else jax.devices())
    return Mesh(devs, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf fully replicated on ``mesh``; works across processes (same host value everywhere)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def put_pmap_replicated(tree: Any, devices: Sequence[jax.Device]) -> Any:
    """Stack a copy of each leaf on every device (leading axis = device), for ``pmap`` inputs."""
    devices = list(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
    n = len(devices)
    return jax.tree.map(lambda a: jax.device_put(np.broadcast_to(np.asarray(a)[None], (n, *np.shape(a))),
                                                 sharding), tree)


def unreplicate(tree: Any) -> Any:
    """First copy of a ``pmap``-replicated tree (leading device axis dropped)."""
    return jax.tree.map(lambda a: a[0], tree)


def to_host(tree: Any) -> Any:
    """numpy copy of each leaf; for a fully replicated global array, this process's local copy."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return np.asarray(a)
    return jax.tree.map(one, tree)


def maybe_initialize_distributed(
    enabled: bool = False, coordinator_address: str | None = None, num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Call ``jax.distributed.initialize`` when ``enabled`` or env ``CNN_JAX_DISTRIBUTED=1``.

    Arguments default to env ``CNN_JAX_COORDINATOR`` (host:port), ``CNN_JAX_NUM_PROCESSES``,
    ``CNN_JAX_PROCESS_ID``; left None, JAX auto-detects (SLURM, TPU pods, ...). On CPU the gloo
    collectives are selected. Returns True if initialised (or already was).
    """
    if not (enabled or os.environ.get("CNN_JAX_DISTRIBUTED") == "1"):
        return False
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("CNN_JAX_COORDINATOR")
    if num_processes is None and "CNN_JAX_NUM_PROCESSES" in env:
        num_processes = int(env["CNN_JAX_NUM_PROCESSES"])
    if process_id is None and "CNN_JAX_PROCESS_ID" in env:
        process_id = int(env["CNN_JAX_PROCESS_ID"])
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - option missing in this jax build; keep its default
        pass
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True

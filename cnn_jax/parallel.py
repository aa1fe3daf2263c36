"""Device placement for data parallelism: a 1-D ``Mesh`` data axis, ``pmap`` replication, multi-host init.

Sharded ``jit``: params/optimizer state replicated (``P()``), each global batch split over the ``"data"``
axis (``P("data")``); XLA inserts the gradient all-reduce. ``pmap``: state stacked along a leading device
axis, gradients ``pmean``-ed over :data:`PMAP_AXIS`. Multi-host: :func:`initialize_distributed`
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
    "unreplicate", "to_host", "initialize_distributed",
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


def initialize_distributed(enabled: bool = False) -> bool:
    """``jax.distributed.initialize`` before anything touches a device, when asked or detected.

    Asked: ``enabled``, env ``CNN_JAX_DISTRIBUTED=1`` or ``CNN_JAX_COORDINATOR`` (host:port, with
    ``CNN_JAX_NUM_PROCESSES`` and ``CNN_JAX_PROCESS_ID``). Detected: a multi-process cluster that JAX finds by
    itself (SLURM, Open MPI, Cloud TPU pods, ...; arguments then come from it). On CPU the gloo collectives
    are selected. Returns True if initialised (or already was).
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return True
    asked = enabled or env.get("CNN_JAX_DISTRIBUTED") == "1" or "CNN_JAX_COORDINATOR" in env
    if not (asked or _cluster_detected()):
        return False
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - option missing in this jax build; keep its default
        pass
    num = env.get("CNN_JAX_NUM_PROCESSES")
    pid = env.get("CNN_JAX_PROCESS_ID")
    jax.distributed.initialize(coordinator_address=env.get("CNN_JAX_COORDINATOR"),
                               num_processes=None if num is None else int(num),
                               process_id=None if pid is None else int(pid))
    return True


def _cluster_detected() -> bool:
    """A multi-process cluster environment that ``jax.distributed.initialize()`` configures by itself."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # private module moved: only explicit requests initialise
        return False
    for env in ClusterEnv._cluster_types:
        try:
            if not env.opt_in_only_method and env.is_env_present():
                return True
        except Exception:  # noqa: BLE001 - a detector that cannot run means that cluster is absent
            continue
    return False

"""Devices: multi-host start-up, the 1-D data mesh, replicated state and sharded batches.

``make_mesh()`` is a 1-D mesh with axis ``'data'`` over every device of every process. Batches are
sharded along their leading axis (``shard_batch``), the training state is replicated
(``replicate``), and the same jitted step runs unchanged on 1 or N devices: XLA inserts the
cross-device mean of the gradients because the loss is a mean over a sharded batch. Multi-host
runs call ``maybe_initialize_distributed()`` first.

With several processes every array the step touches is a global ``jax.Array`` over all
processes' devices: ``replicate`` builds one from each process's (equal) copy, ``shard_batch``
from each process's rows. Scalars the step returns are replicated, so every process can read
them (``jax.device_get``); a sharded result is read with ``multihost_utils.process_allgather``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sympad.train.errors import ConfigError

__all__ = ["DATA_AXIS", "batch_sharded", "leading_sharded", "make_mesh", "maybe_initialize_distributed", "place",
           "replicate", "replicated", "shard_batch"]

DATA_AXIS = "data"

PyTree = Any


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Calls ``jax.distributed.initialize()`` when started as one process of a multi-host job.

    Must run before anything touches a JAX device. Recognised launchers: explicit
    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``, SLURM (``srun`` with
    more than one task) and Open MPI (``mpirun -n N`` with N > 1). A single-process run, or one
    already initialised, is left alone.

    Args:
      environ: the environment to inspect; ``os.environ`` by default.

    Returns:
      True when this call initialised the distributed runtime.
    """
    kwargs = _distributed_init_kwargs(os.environ if environ is None else environ)
    if kwargs is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**kwargs)
    logging.info(
        "JAX distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True


def _distributed_init_kwargs(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments for this environment, or None (single host)."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in environ]
        if missing:
            raise ConfigError(
                f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all three "
                "to start a multi-host run."
            )
        return dict(
            coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(environ["JAX_NUM_PROCESSES"]),
            process_id=int(environ["JAX_PROCESS_ID"]),
        )
    # JAX detects coordinator address, process count and id itself for these launchers; we only
    # decide whether there is more than one process (a plain `srun python ...` has one task).
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))) > 1:
        return {}
    if "OMPI_MCA_orte_hnp_uri" in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}
    return None


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh with axis ``'data'``.

    Args:
      devices: the devices to use; all devices of all processes (``jax.devices()``) by default.

    Returns:
      A ``Mesh`` of shape ``{'data': len(devices)}``.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: need at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh`` (training state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding that splits the leading (batch) axis over the mesh's ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of ``tree`` (state: params, optimizer state, keys) on all devices.

    Single process: ``jax.device_put``. Several processes: ``device_put`` cannot reach another
    process's devices, so each leaf becomes a global array built from this process's copy
    (``jax.make_array_from_callback``); every process must pass equal values (the state is a
    pure function of the config's seed). Leaves already on ``mesh`` with that sharding are kept.
    """
    return place(tree, replicated(mesh))


def leading_sharded(tree: PyTree, mesh: Mesh) -> PyTree:
    """Per leaf of ``tree``: split along its leading axis over ``'data'`` (scalars: replicated).

    The sharding of a state whose leaves are stacked along a leading axis that is split over the
    devices (the GAN's seed axis), for :func:`place`.
    """
    return jax.tree_util.tree_map(lambda x: batch_sharded(mesh) if np.ndim(x) else replicated(mesh), tree)


def place(tree: PyTree, sharding: NamedSharding | PyTree) -> PyTree:
    """Puts ``tree`` on the devices with ``sharding`` (one for every leaf, or a tree of them).

    Several processes: each leaf becomes a global array cut from this process's full copy (every
    process passes equal values), as :func:`replicate` does.
    """
    if isinstance(sharding, NamedSharding):
        mesh = sharding.mesh
        sharding = jax.tree_util.tree_map(lambda _: sharding, tree)
    else:
        mesh = jax.tree_util.tree_leaves(sharding)[0].mesh
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(_place_leaf, tree, sharding)


def _place_leaf(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed keys: place the raw key data, then re-wrap with the same implementation.
        data = _place_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(tree: PyTree, mesh: Mesh) -> PyTree:
    """Splits every leaf of ``tree`` along its leading axis over the mesh's devices.

    Single process: each leaf is the global batch, (B, ...) with B divisible by the device count.
    Multi-process: each process passes its own slice, (B / process_count, ...), and gets back the
    global (B, ...) array (``jax.make_array_from_process_local_data``).

    Args:
      tree: pytree of arrays with a common leading batch axis.
      mesh: from ``make_mesh``.

    Returns:
      The same pytree of ``jax.Array`` sharded with ``batch_sharded(mesh)``.
    """
    sharding = batch_sharded(mesh)
    multi_process = jax.process_count() > 1
    per_call_devices = mesh.size // jax.process_count() if multi_process else mesh.size

    def put(path, x):
        shape = np.shape(x)
        if not shape or shape[0] % per_call_devices:
            raise ValueError(
                f"tree{jax.tree_util.keystr(path)}: leading axis of shape {shape} must be divisible "
                f"by the {per_call_devices} devices it is split over"
            )
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(put, tree)

"""Sampling a generator: latents per sample index, batched jit-compiled generation over the devices.

Sample ``i`` is ``G(z_i)`` with ``z_i ~ N(0, I)`` drawn from ``fold_in(PRNGKey(seed), i)``, so the
output depends only on the variables, the seed and ``i``: not on the batch size or on how many
devices share the work. The generator runs in inference mode (BN running averages).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from gan import models
from sympad.train.data import to_uint8
from sympad.train.mesh import batch_sharded, make_mesh, replicate, shard_batch

__all__ = ["generate_images", "generate_samples", "sample_latents"]


@functools.partial(jax.jit, static_argnums=(0,))
def _generate_images(generator: models.Generator, variables: Mapping[str, Any], z: jax.Array) -> jax.Array:
    return to_uint8(generator.apply(variables, z, train=False))


def _multi_process_mesh(variables: Mapping[str, Any]) -> Mesh | None:
    """The mesh of ``variables`` when they are global arrays spanning several processes, else None."""
    leaves = jax.tree_util.tree_leaves(variables)
    leaf = leaves[0] if leaves else None
    if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
        return None
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding) and sharding.mesh.is_multi_process:
        return sharding.mesh
    return None


def generate_images(generator: models.Generator, variables: Mapping[str, Any], z: jax.Array) -> jax.Array:
    """G in inference mode (BN running averages): z (B, z_dim) -> uint8 images (B, S, S, 3).

    Traceable (usable inside ``jit``). Called with ``variables`` that span several processes
    (a multi-host run's state), ``z`` is replicated to their mesh and every process gets all B
    images back as numpy.
    """
    mesh = _multi_process_mesh(variables)
    if mesh is None:
        return _generate_images(generator, variables, z)
    images = _generate_images(generator, variables, replicate(z, mesh))
    return multihost_utils.process_allgather(images, tiled=True)


def sample_latents(key: jax.Array, indices: jax.Array, *, z_dim: int) -> jax.Array:
    """Latents of the given sample indices: (len(indices), z_dim), row ``j`` from ``fold_in(key, indices[j])``."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(indices)


@functools.partial(jax.jit, static_argnames=("generator", "z_dim"))
def _generate_batch(variables: Mapping[str, Any], key: jax.Array, indices: jax.Array, *,
                    generator: models.Generator, z_dim: int) -> jax.Array:
    return generate_images(generator, variables, sample_latents(key, indices, z_dim=z_dim))


def generate_samples(generator: models.Generator, variables: Mapping[str, Any], *, num: int, seed: int = 0,
                     batch_size: int = 500, mesh: Mesh | None = None, z_dim: int | None = None) -> np.ndarray:
    """``num`` samples as uint8 (num, H, W, 3), batched and split over the mesh's devices.

    Args:
      generator: the model.
      variables: its variables (``{'params': ...}`` and, with BN, ``'batch_stats'``).
      num: number of samples.
      seed: sample ``i`` uses ``fold_in(PRNGKey(seed), i)``.
      batch_size: samples per jit call (rounded up to a multiple of the device count).
      mesh: devices to use; by default the mesh of ``variables`` when they span several
        processes (every process must call this; each gets all samples), else all local devices.
      z_dim: latent size; read from the Dense kernel's shape when None.

    Raises:
      ValueError: for num < 1 or batch_size < 1.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if mesh is None:
        mesh = _multi_process_mesh(variables) or make_mesh(jax.local_devices())
    z_dim = z_dim or int(variables["params"]["dense"]["kernel"].shape[0])
    batch_size = -(-min(batch_size, num) // mesh.size) * mesh.size
    variables = replicate(variables, mesh)
    key = jax.random.key(seed)
    out = []
    for start in range(0, num, batch_size):
        # The last batch is padded up to batch_size (one compiled shape); the padding is dropped.
        indices = np.arange(start, start + batch_size, dtype=np.int32)
        if mesh.is_multi_process:
            # Every process knows all indices and hands each of its devices its rows; the images
            # are then gathered so every process returns all of them (one of them writes).
            sharded = jax.make_array_from_callback(indices.shape, batch_sharded(mesh), lambda i: indices[i])
            images = _generate_batch(variables, key, sharded, generator=generator, z_dim=z_dim)
            images = multihost_utils.process_allgather(images, tiled=True)
        else:
            images = _generate_batch(variables, key, shard_batch(indices, mesh), generator=generator, z_dim=z_dim)
        out.append(np.asarray(images)[: num - start])
    return np.concatenate(out)

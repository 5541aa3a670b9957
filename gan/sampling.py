"""Sampling a generator: latents per sample index, batched jit-compiled generation over the devices.

Sample ``i`` is ``G(z_i, y_i)`` with ``z_i ~ N(0, I)`` drawn from ``fold_in(PRNGKey(seed), i)`` (or
from the normal truncated to ``[-t, t]`` with ``truncation=t``) and, for a class-conditional
generator, the label ``y_i = i % num_classes`` unless labels are given. The output depends only on
the variables, the seed, ``i`` and ``y_i``: not on the batch size or on how many devices share the
work. The generator runs in inference mode (BN running averages).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from gan import models
from sympad.train.data import to_uint8
from sympad.train.mesh import batch_sharded, make_mesh, replicate, shard_batch

__all__ = [
    "class_labels",
    "generate_from_latents",
    "generate_images",
    "generate_samples",
    "interpolation_latents",
    "sample_latents",
    "slerp",
]

# Below this sin(angle) the two latents count as (anti)parallel and slerp falls back to a straight
# line: the great circle is undefined there (anti-parallel) or equal to the line to O(angle^2). In
# float32, vectors that are exactly parallel give sin(angle) up to ~5e-4 from rounding alone.
_PARALLEL_SIN = 1e-3


def class_labels(num: int, num_classes: int) -> np.ndarray:
    """The default labels of ``num`` conditional samples: ``i % num_classes`` as int32 (num,), balanced."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return (np.arange(num) % num_classes).astype(np.int32)


def _check_labels(labels: Any, *, num: int, generator: models.Generator) -> np.ndarray | None:
    """``labels`` as int32 (num,) (None for an unconditional G), checked as the model checks them."""
    labels = models.check_labels(labels, num_classes=generator.num_classes, batch=num, model="generator")
    return None if labels is None else np.asarray(labels, np.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def _generate_images(generator: models.Generator, variables: Mapping[str, Any], z: jax.Array,
                     labels: jax.Array | None) -> jax.Array:
    return to_uint8(generator.apply(variables, z, labels, train=False))


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


def generate_images(generator: models.Generator, variables: Mapping[str, Any], z: jax.Array,
                    labels: jax.Array | None = None) -> jax.Array:
    """G in inference mode (BN running averages): z (B, z_dim), labels (B,) -> uint8 images (B, S, S, 3).

    ``labels`` (int32 in [0, num_classes)) is required by a class-conditional generator and must
    be None for an unconditional one. Traceable (usable inside ``jit``). Called with ``variables``
    that span several processes (a multi-host run's state), ``z`` and ``labels`` are replicated to
    their mesh and every process gets all B images back as numpy.
    """
    mesh = _multi_process_mesh(variables)
    if mesh is None:
        return _generate_images(generator, variables, z, labels)
    images = _generate_images(generator, variables, replicate(z, mesh), replicate(labels, mesh))
    return multihost_utils.process_allgather(images, tiled=True)


def sample_latents(key: jax.Array, indices: jax.Array, *, z_dim: int, truncation: float = 0.0) -> jax.Array:
    """Latents of the given sample indices: (len(indices), z_dim), row ``j`` from ``fold_in(key, indices[j])``.

    Args:
      key: the sampling key, ``PRNGKey(seed)``.
      indices: int (N,) sample indices.
      z_dim: latent size.
      truncation: 0: standard normal; t > 0: the normal truncated to [-t, t] in every coordinate
        (the truncation trick: fewer, more typical samples; not for FID against other runs).

    Raises:
      ValueError: for a negative truncation.
    """
    if truncation < 0:
        raise ValueError(f"truncation must be >= 0 (0 = off), got {truncation}")

    def draw(i: jax.Array) -> jax.Array:
        k = jax.random.fold_in(key, i)
        if truncation == 0:  # today's latents, bit for bit
            return jax.random.normal(k, (z_dim,))
        return jax.random.truncated_normal(k, -truncation, truncation, (z_dim,))

    return jax.vmap(draw)(indices)


@functools.partial(jax.jit, static_argnames=("generator", "z_dim", "truncation"))
def _generate_batch(variables: Mapping[str, Any], key: jax.Array, indices: jax.Array, labels: jax.Array | None, *,
                    generator: models.Generator, z_dim: int, truncation: float) -> jax.Array:
    z = sample_latents(key, indices, z_dim=z_dim, truncation=truncation)
    return generate_images(generator, variables, z, labels)


def generate_samples(generator: models.Generator, variables: Mapping[str, Any], *, num: int, seed: int = 0,
                     batch_size: int = 500, mesh: Mesh | None = None, z_dim: int | None = None,
                     labels: Any = None, truncation: float = 0.0) -> np.ndarray:
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
      labels: int (num,) class of each sample, for a class-conditional generator only; None:
        ``class_labels(num, generator.num_classes)`` (sample ``i`` gets class ``i % num_classes``).
      truncation: see :func:`sample_latents` (0 = off).

    Raises:
      ValueError: for num < 1, batch_size < 1, a negative truncation, or labels of the wrong shape,
        out of range, or given to an unconditional generator.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if truncation < 0:
        raise ValueError(f"truncation must be >= 0 (0 = off), got {truncation}")
    if labels is None and generator.num_classes:
        labels = class_labels(num, generator.num_classes)
    labels = _check_labels(labels, num=num, generator=generator)
    if mesh is None:
        mesh = _multi_process_mesh(variables) or make_mesh(jax.local_devices())
    z_dim = z_dim or int(variables["params"]["dense"]["kernel"].shape[0])
    batch_size = -(-min(batch_size, num) // mesh.size) * mesh.size
    if labels is not None:
        # Padded like the indices below: class 0 (valid for every generator) for the dropped rows.
        labels = np.pad(labels, (0, -num % batch_size))
    variables = replicate(variables, mesh)
    key = jax.random.key(seed)
    generate = functools.partial(_generate_batch, generator=generator, z_dim=z_dim, truncation=float(truncation))
    out = []
    for start in range(0, num, batch_size):
        # The last batch is padded up to batch_size (one compiled shape); the padding is dropped.
        batch = {"indices": np.arange(start, start + batch_size, dtype=np.int32),
                 "labels": None if labels is None else labels[start : start + batch_size]}
        if mesh.is_multi_process:
            # Every process knows all indices and labels and hands each of its devices its rows;
            # the images are then gathered so every process returns all of them (one writes).
            sharded = jax.tree_util.tree_map(
                lambda x: jax.make_array_from_callback(x.shape, batch_sharded(mesh), lambda i, x=x: x[i]), batch)
            images = generate(variables, key, sharded["indices"], sharded["labels"])
            images = multihost_utils.process_allgather(images, tiled=True)
        else:
            sharded = shard_batch(batch, mesh)
            images = generate(variables, key, sharded["indices"], sharded["labels"])
        out.append(np.asarray(images)[: num - start])
    return np.concatenate(out)


def generate_from_latents(generator: models.Generator, variables: Mapping[str, Any], z: Any, labels: Any = None,
                          *, batch_size: int = 500) -> np.ndarray:
    """uint8 images (N, H, W, 3) of given latents z (N, z_dim) and labels (N,), ``batch_size`` per call.

    For sheets whose latents are not one per sample index (class grids, interpolations). The
    last batch is padded to ``batch_size`` (one compiled shape) and the padding dropped.

    Raises:
      ValueError: for batch_size < 1, z not 2-D, or labels as in :func:`generate_samples`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or not len(z):
        raise ValueError(f"z must have shape (N >= 1, z_dim), got {z.shape}")
    num = len(z)
    labels = _check_labels(labels, num=num, generator=generator)
    batch_size = min(batch_size, num)
    pad = -num % batch_size
    z = np.pad(z, ((0, pad), (0, 0)))
    labels = None if labels is None else np.pad(labels, (0, pad))
    out = [np.asarray(generate_images(generator, variables, z[s : s + batch_size],
                                      None if labels is None else labels[s : s + batch_size]))
           for s in range(0, num, batch_size)]
    return np.concatenate(out)[:num]


def slerp(z0: jax.typing.ArrayLike, z1: jax.typing.ArrayLike, t: jax.typing.ArrayLike) -> jax.Array:
    """Spherical interpolation from ``z0`` (t=0) to ``z1`` (t=1) along the great circle between them.

    The path the Gaussian latent prior favours (White 2016): with ``|z0| == |z1|`` every point has
    that norm, where the straight line passes through atypically short latents. Where the two are
    (anti)parallel (sin of their angle below 1e-3) it falls back to the straight line.

    Args:
      z0: (..., D) start.
      z1: (..., D) end, broadcastable with ``z0``.
      t: fractions, broadcastable with the leading dims ``(...)`` of ``z0``/``z1``; 0 and 1
        give the endpoints exactly.

    Returns:
      (..., D), the broadcast of the leading shapes of ``z0``, ``z1`` and ``t``.
    """
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    dtype = jnp.result_type(z0, z1, jnp.float32)
    z0, z1 = z0.astype(dtype), z1.astype(dtype)
    t = jnp.asarray(t, dtype)[..., None]
    norms = jnp.linalg.norm(z0, axis=-1, keepdims=True) * jnp.linalg.norm(z1, axis=-1, keepdims=True)
    cos = jnp.sum(z0 * z1, axis=-1, keepdims=True) / jnp.where(norms > 0, norms, 1)
    parallel = 1 - cos * cos < _PARALLEL_SIN**2
    # Decided before arccos, whose gradient is infinite at +-1: the unused branch stays finite
    # (and so does the gradient through jnp.where).
    omega = jnp.arccos(jnp.where(parallel, 0, jnp.clip(cos, -1, 1)))
    safe_sin = jnp.where(parallel, 1, jnp.sin(omega))
    # Coefficients first: at t = 0 or 1 they are exactly 1 and 0, so the endpoints come out exactly.
    spherical = jnp.sin((1 - t) * omega) / safe_sin * z0 + jnp.sin(t * omega) / safe_sin * z1
    linear = (1 - t) * z0 + t * z1
    return jnp.where(parallel, linear, spherical)


def interpolation_latents(key: jax.Array, *, num_rows: int, steps: int, z_dim: int,
                          truncation: float = 0.0) -> jax.Array:
    """Latents of an interpolation sheet: (num_rows, steps, z_dim), row ``r`` a slerp between two latents.

    Row ``r`` runs from ``sample_latents(k0, [r])`` to ``sample_latents(k1, [r])`` with
    ``k0, k1 = split(key)``, at ``steps`` evenly spaced fractions from 0 to 1 (both endpoints
    included), so a row does not change when ``num_rows`` grows.

    Raises:
      ValueError: for num_rows < 1, steps < 2, or a negative truncation.
    """
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the two endpoints), got {steps}")
    k0, k1 = jax.random.split(key)
    rows = jnp.arange(num_rows)
    z0 = sample_latents(k0, rows, z_dim=z_dim, truncation=truncation)
    z1 = sample_latents(k1, rows, z_dim=z_dim, truncation=truncation)
    return slerp(z0[:, None], z1[:, None], jnp.linspace(0, 1, steps)[None, :])

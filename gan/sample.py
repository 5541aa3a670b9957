"""Samples from a trained generator: ``.npz`` of uint8 images and an optional PNG grid.

    python -m gan.sample --workdir=DIR --num=50000 [--out=DIR/samples.npz] [--grid=grid.png] [--seed=0]
        [--batch=500] [--no_ema]

Sample ``i`` is ``G(z_i)`` with ``z_i ~ N(0, I)`` drawn from ``fold_in(PRNGKey(seed), i)``, so the
output depends only on the checkpoint, ``--seed`` and ``i``: not on ``--batch`` or on how many
devices share the work. The generator runs jit-compiled in inference mode (BN running averages),
with the EMA weights when the run kept them, the batch split over all local devices.

The ``.npz`` holds ``images`` (N, H, W, 3) uint8, the layout ``gan.metrics``' evaluator takes;
by default it goes to ``DIR/samples.npz``, where ``python -m gan.evaluate --workdir=DIR`` looks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh

from gan import models
from gan.train import generate_images, generator_variables, restore_state
from sympad import runtime

__all__ = ["sample_latents", "generate_samples", "main"]


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
      mesh: devices to use; all local devices by default.
      z_dim: latent size; read from the Dense kernel's shape when None.

    Raises:
      ValueError: for num < 1 or batch_size < 1.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mesh = mesh if mesh is not None else runtime.make_mesh(jax.local_devices())
    z_dim = z_dim or int(variables["params"]["dense"]["kernel"].shape[0])
    batch_size = -(-min(batch_size, num) // mesh.size) * mesh.size
    variables = runtime.replicate(variables, mesh)
    key = jax.random.key(seed)
    out = []
    for start in range(0, num, batch_size):
        # The last batch is padded up to batch_size (one compiled shape); the padding is dropped.
        indices = np.arange(start, start + batch_size, dtype=np.int32)
        images = _generate_batch(variables, key, runtime.shard_batch(indices, mesh), generator=generator, z_dim=z_dim)
        out.append(np.asarray(images)[: num - start])
    return np.concatenate(out)


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
    flags.DEFINE_integer("num", 50_000, "Number of samples.")
    flags.DEFINE_string(
        "out", None, "Output .npz (key 'images', uint8 (N, H, W, 3)); default WORKDIR/samples.npz; '' for none."
    )
    flags.DEFINE_string("grid", "", "Also write a PNG grid of the first --grid_num samples here.")
    flags.DEFINE_integer("grid_num", 64, "Samples in the grid.")
    flags.DEFINE_integer("seed", 0, "Sample i uses fold_in(PRNGKey(seed), i).")
    flags.DEFINE_integer("batch", 500, "Samples per device call (all devices together).")
    flags.DEFINE_bool("ema", True, "Use the EMA generator weights when the run kept them.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    config, generator, state = restore_state(FLAGS.workdir)
    num = max(FLAGS.num, FLAGS.grid_num if FLAGS.grid else 0)
    images = generate_samples(generator, generator_variables(state, use_ema=FLAGS.ema), num=num, seed=FLAGS.seed,
                              batch_size=FLAGS.batch, z_dim=config.z_dim)
    # Next to the run by default, where gan.evaluate --workdir finds it.
    out = str(Path(FLAGS.workdir) / "samples.npz") if FLAGS.out is None else FLAGS.out
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, images=images[: FLAGS.num])
        logging.info("Wrote %d samples of step %d to %s", FLAGS.num, int(state.step), out)
    if FLAGS.grid:
        runtime.save_image_grid(images[: FLAGS.grid_num], FLAGS.grid)
        logging.info("Wrote a grid of %d samples to %s", FLAGS.grid_num, FLAGS.grid)


if __name__ == "__main__":
    _define_flags()
    app.run(main)

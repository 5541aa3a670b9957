"""Exports a trained generator as serialized StableHLO (``jax.export``): it runs without this code base.

    python -m gan.export --workdir=DIR --out=generator.bin [--platforms=cpu,cuda] [--no_ema]

The exported function maps latents ``z`` float32 (B, z_dim) to images float32 (B, S, S, 3) in
[-1, 1]; a class-conditional generator takes ``(z, labels)`` with ``labels`` int32 (B,) in
[0, num_classes). The batch size ``B`` is symbolic (any B works), the weights are baked in as
constants (inference mode: the EMA weights when the run kept them, BN running averages). A JSON file
next to it (``generator.bin.json``) records z_dim, num_classes (0: unconditional), the inputs, the
image size, the kernel kind and the step.

Loading needs only JAX (any version that reads the serialization version it was written with)::

    import jax, numpy as np
    gen = jax.export.deserialize(bytearray(open("generator.bin", "rb").read()))
    z = np.random.default_rng(0).standard_normal((16, gen.in_avals[0].shape[1])).astype(np.float32)
    images = np.asarray(gen.call(z))                          # (16, S, S, 3) in [-1, 1]
    # A conditional generator (metadata num_classes > 0) also takes the class of each image:
    # images = np.asarray(gen.call(z, np.arange(16, dtype=np.int32) % num_classes))
    uint8 = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from gan import models
from gan.state import generator_variables, output_size, restore_state
from sympad.train.errors import ConfigError, run_absl

__all__ = ["export_generator", "input_metadata", "load", "main", "save"]


def export_generator(generator: models.Generator, variables: Mapping[str, Any], *, z_dim: int,
                     platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """``jax.export`` of ``z -> generator.apply(variables, z)`` with a symbolic batch dimension.

    A class-conditional generator (``num_classes > 0``) is exported as ``(z, labels) -> images``,
    ``labels`` int32 (B,) sharing the batch dimension with ``z``.

    Args:
      generator: the model.
      variables: its inference variables (baked into the module as constants).
      z_dim: latent size.
      platforms: lowering platforms, e.g. ('cpu', 'cuda'); None: the default backend's.
    """
    variables = jax.device_get(variables)
    (batch,) = jax.export.symbolic_shape("b")
    specs = [jax.ShapeDtypeStruct((batch, z_dim), jnp.float32)]
    if generator.num_classes:
        specs.append(jax.ShapeDtypeStruct((batch,), jnp.int32))

    def generate(z: jax.Array, *labels: jax.Array) -> jax.Array:  # labels: () or the (B,) classes
        return generator.apply(variables, z, *labels, train=False)

    return jax.export.export(jax.jit(generate), platforms=tuple(platforms) if platforms else None)(*specs)


def input_metadata(*, z_dim: int, num_classes: int) -> list[dict[str, Any]]:
    """The exported function's inputs, as recorded in the JSON metadata (``B`` is the batch size)."""
    inputs: list[dict[str, Any]] = [{"name": "z", "dtype": "float32", "shape": ["B", int(z_dim)]}]
    if num_classes:
        inputs.append({"name": "labels", "dtype": "int32", "shape": ["B"], "range": [0, int(num_classes)]})
    return inputs


def save(exported: jax.export.Exported, path: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes the serialized module to ``path`` and ``metadata`` to ``path + '.json'``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exported.serialize())
    if metadata is not None:
        Path(str(path) + ".json").write_text(json.dumps(dict(metadata), indent=2) + "\n")
    return path


def load(path: str | Path) -> jax.export.Exported:
    """The inverse of :func:`save` (what the module docstring's loader does)."""
    return jax.export.deserialize(bytearray(Path(path).read_bytes()))


FLAGS = flags.FLAGS
#: Lowering platforms jax.export knows.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    platforms = [p.strip() for p in FLAGS.platforms.split(",") if p.strip()] or None
    unknown = sorted(set(platforms or ()) - set(PLATFORMS))
    if unknown:  # before the checkpoint is read
        raise ConfigError(f"--platforms={FLAGS.platforms!r}: {', '.join(unknown)} unknown; use "
                          f"comma-separated {', '.join(PLATFORMS)} (or '' for this machine's)")
    if not FLAGS.out:
        raise ConfigError("--out is empty: name the output file, e.g. --out=generator.bin")
    config, generator, state = restore_state(FLAGS.workdir)
    exported = export_generator(generator, generator_variables(state, use_ema=FLAGS.ema), z_dim=config.z_dim,
                                platforms=platforms)
    num_classes = generator.num_classes
    metadata = dict(z_dim=int(config.z_dim), num_classes=num_classes,
                    inputs=input_metadata(z_dim=config.z_dim, num_classes=num_classes),
                    image_size=output_size(generator), kernel=config.kernel,
                    arch=config.arch, step=int(state.step), ema=bool(FLAGS.ema and state.ema_params is not None),
                    platforms=list(exported.platforms), output="float32 (B, S, S, 3) in [-1, 1]")
    path = save(exported, FLAGS.out, metadata=metadata)
    logging.info("Exported the generator of step %d to %s (%.1f MB, platforms %s)", int(state.step), path,
                 path.stat().st_size / 1e6, ",".join(exported.platforms))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
    flags.DEFINE_string("out", "generator.bin", "Output file (serialized StableHLO).")
    flags.DEFINE_string("platforms", "cpu,cuda", "Comma-separated lowering platforms ('' = this machine's).")
    flags.DEFINE_bool("ema", True, "Use the EMA generator weights when the run kept them.")
    run_absl(main)  # a user error (no checkpoint, bad flag): one error line, status 2

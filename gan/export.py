"""Exports a trained generator as serialized StableHLO (``jax.export``): it runs without this code base.

    python -m gan.export --workdir=DIR --out=generator.bin [--platforms=cpu,cuda] [--no_ema] [--seed_index=0]

The exported function maps latents ``z`` float32 (B, z_dim) to images float32 (B, S, S, 3) in
[-1, 1]; a class-conditional generator takes ``(z, labels)`` with ``labels`` int32 (B,) in
[0, num_classes). The batch size ``B`` is symbolic (any B works), the weights are baked in as
constants (inference mode: the EMA weights when the run kept them, BN running averages). A JSON file
next to it (``generator.bin.json``) records z_dim, num_classes (0: unconditional), the inputs, the
image size, the kernel kind, the step and the seed (a run of several seeds exports the one
``--seed_index`` picks: index ``i`` is seed ``config.seed + i``).

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

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from gan import models
from gan.state import (
    generator_variables,
    output_size,
    parse_seed_indices,
    restore_state,
    run_seeds,
    select_seed,
)
from sympad.train import errors
from sympad.train.config import read_config
from sympad.train.errors import ConfigError

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


#: Lowering platforms jax.export knows.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m gan.export",
                              description="Export a trained generator as serialized StableHLO.")
    p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
    p.add_argument("--out", default="generator.bin", help="output file (serialized StableHLO)")
    p.add_argument("--platforms", default="cpu,cuda",
                   help="comma-separated lowering platforms ('' = this machine's; default %(default)s)")
    p.add_argument("--ema", dest="ema", action="store_true", default=True,
                   help="use the EMA generator weights when the run kept them (default)")
    p.add_argument("--no_ema", dest="ema", action="store_false", help="use the live generator weights")
    p.add_argument("--seed_index", default="0",
                   help="runs of several seeds: which one (index i is seed config.seed + i; default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()] or None
    unknown = sorted(set(platforms or ()) - set(PLATFORMS))
    if unknown:  # before the checkpoint is read
        raise ConfigError(f"--platforms={args.platforms!r}: {', '.join(unknown)} unknown; use "
                          f"comma-separated {', '.join(PLATFORMS)} (or '' for this machine's)")
    if not args.out:
        raise ConfigError("--out is empty: name the output file, e.g. --out=generator.bin")
    config = read_config(args.workdir)
    indices = parse_seed_indices(args.seed_index, config)
    if len(indices) != 1:
        raise ConfigError(f"--seed_index={args.seed_index!r}: export one seed at a time (an index, e.g. 0)")
    config, generator, state = restore_state(args.workdir, config)
    state = select_seed(state, indices[0])
    exported = export_generator(generator, generator_variables(state, use_ema=args.ema), z_dim=config.z_dim,
                                platforms=platforms)
    num_classes = generator.num_classes
    metadata = dict(z_dim=int(config.z_dim), num_classes=num_classes,
                    inputs=input_metadata(z_dim=config.z_dim, num_classes=num_classes),
                    image_size=output_size(generator), kernel=config.kernel,
                    arch=config.arch, step=int(state.step), seed=run_seeds(config)[indices[0]],
                    ema=bool(args.ema and state.ema_params is not None),
                    platforms=list(exported.platforms), output="float32 (B, S, S, 3) in [-1, 1]")
    path = save(exported, args.out, metadata=metadata)
    print(f"exported the generator of step {int(state.step)} to {path} ({path.stat().st_size / 1e6:.1f} MB, "
          f"platforms {','.join(exported.platforms)})")


if __name__ == "__main__":
    errors.run_cli(main)  # a user error (no checkpoint, bad flag): one error line, status 2

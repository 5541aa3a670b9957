"""Samples from a trained generator: ``.npz`` of uint8 images, PNG grids and sheets.

    python -m gan.sample --workdir=DIR --num=50000 [--out=DIR/samples.npz] [--grid=grid.png] [--seed=0]
        [--batch=500] [--no_ema] [--truncation=T] [--labels=3,5] [--seed_index=0,1]
        [--class_grid=classes.png --per_class=8] [--interpolate=interp.png --interp_rows=8 --interp_steps=8]

Sample ``i`` is ``G(z_i)`` with ``z_i ~ N(0, I)`` drawn from ``fold_in(PRNGKey(seed), i)``, so the
output depends only on the checkpoint, ``--seed`` and ``i``: not on ``--batch`` or on how many
devices share the work. The generator runs jit-compiled in inference mode (BN running averages),
with the EMA weights when the run kept them, the batch split over all local devices.
``--truncation=T`` draws every latent from the normal truncated to [-T, T] (the truncation trick:
more typical, less diverse samples; keep 0 for FID).

A class-conditional run (``config.conditional``) samples ``G(z_i, y_i)`` with balanced labels,
``y_i = i % num_classes`` (with ``--labels=3,5``: cycling through those classes only).

Outputs:
  * ``--out`` (default ``DIR/samples.npz``, where ``python -m gan.evaluate --workdir=DIR`` looks):
    ``images`` (N, H, W, 3) uint8, the layout ``gan.metrics``' evaluator takes, and for a
    conditional run ``labels`` int32 (N,).
  * ``--grid=PATH.png``: the first ``--grid_num`` samples.
  * ``--class_grid=PATH.png`` (conditional runs): one row per class, ``--per_class`` columns;
    column ``c`` uses latent ``z_c`` (that of sample ``c``) in every row, so a column shows one
    latent across the classes.
  * ``--interpolate=PATH.png``: ``--interp_rows`` rows of ``--interp_steps`` images along a
    spherical interpolation between two latents; for a conditional run row ``r`` stays at one
    class, the rows cycling through the classes.
Every PNG comes with the arrays it shows, in an ``.npz`` next to it (same name): ``images`` as
(rows, columns, H, W, 3) uint8 for the sheets, (N, H, W, 3) for ``--grid``, and ``labels`` in the
same layout for a conditional run.

A run of several seeds (``config.num_seeds > 1``) samples each seed's generator that
``--seed_index`` picks (comma-separated indices; default all): index ``i`` is seed
``config.seed + i``, and every output file of seed ``k`` gets ``_seed<k>`` before its extension
(``DIR/samples_seed1.npz``, where ``gan.evaluate --workdir=DIR`` looks).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from gan import models
from gan.sampling import (
    class_labels,
    generate_from_latents,
    generate_samples,
    interpolation_latents,
    sample_latents,
)
from gan.state import (
    TrainState,
    generator_variables,
    parse_seed_indices,
    restore_state,
    run_seeds,
    seed_path,
    select_seed,
)
from gan.state import num_classes as run_num_classes
from sympad.train import errors
from sympad.train.config import read_config
from sympad.train.errors import ConfigError
from sympad.train.metrics import save_image_grid

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m gan.sample",
                              description="Sample a trained GAN generator: .npz and PNG sheets.")
    p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
    p.add_argument("--num", type=int, default=50_000, help="number of samples (default %(default)s)")
    p.add_argument("--out", default=None,
                   help="output .npz (key 'images', uint8 (N, H, W, 3), and 'labels' int32 (N,) for a conditional "
                        "run); default WORKDIR/samples.npz; '' for none")
    p.add_argument("--grid", default="", help="also write a PNG grid of the first --grid_num samples here")
    p.add_argument("--grid_num", type=int, default=64, help="samples in the grid (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses fold_in(PRNGKey(seed), i)")
    p.add_argument("--batch", type=int, default=500, help="samples per device call (all devices together)")
    p.add_argument("--ema", dest="ema", action="store_true", default=True,
                   help="use the EMA generator weights when the run kept them (default)")
    p.add_argument("--no_ema", dest="ema", action="store_false", help="use the live generator weights")
    p.add_argument("--truncation", type=float, default=0.0,
                   help="draw latents from the normal truncated to [-T, T]; 0 = off")
    p.add_argument("--labels", default="", help="conditional runs: only these classes (comma-separated), e.g. 3,5")
    p.add_argument("--seed_index", default="",
                   help="runs of several seeds: which (comma-separated indices; index i is seed config.seed + i); "
                        "'' = all")
    p.add_argument("--class_grid", default="", help="conditional runs: a PNG with one row per class here")
    p.add_argument("--per_class", type=int, default=8, help="columns (latents) of --class_grid")
    p.add_argument("--interpolate", default="", help="a PNG of spherical latent interpolations here")
    p.add_argument("--interp_rows", type=int, default=8, help="rows (interpolations) of --interpolate")
    p.add_argument("--interp_steps", type=int, default=8,
                   help="images per row of --interpolate, both endpoints included")
    return p


def _parse_labels(text: str) -> list[int]:
    """``--labels`` as a list of class indices, duplicates dropped, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--labels={text!r}: use comma-separated class indices, e.g. --labels=3,5") from None
    return list(dict.fromkeys(values))


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before the run's files are read."""
    for name in ("num", "grid_num", "batch", "per_class", "interp_rows"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}={getattr(args, name)}: must be a positive int")
    if args.interp_steps < 2:
        raise ConfigError(f"--interp_steps={args.interp_steps}: must be >= 2 (the two endpoints)")
    if args.seed < 0:
        raise ConfigError(f"--seed={args.seed}: must be >= 0")
    if args.truncation < 0:
        raise ConfigError(f"--truncation={args.truncation}: must be >= 0 (0 = off)")
    for name in ("grid", "class_grid", "interpolate"):
        path = getattr(args, name)
        if path and Path(path).suffix.lower() != ".png":
            raise ConfigError(f"--{name}={path!r}: must name a .png file (its arrays go next to it as .npz)")


def _save_sheet(images: np.ndarray, path: str | Path, *, columns: int | None = None,
                labels: np.ndarray | None = None) -> None:
    """Writes the PNG and, next to it, an ``.npz`` with the images (and labels) it shows."""
    save_image_grid(images.reshape(-1, *images.shape[-3:]), path, ncols=columns)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(Path(path).with_suffix(".npz"), **arrays)


def _classes(num_classes: int, labels: Sequence[int], text: str) -> np.ndarray:
    """The classes to sample: ``labels`` checked against the run's classes, or all of them."""
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--labels={text}: {', '.join(map(str, bad))} out of range; this run has "
                          f"{num_classes} classes (0 to {num_classes - 1})")
    return np.asarray(labels or range(num_classes), np.int32)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _check_args(args)
    labels = _parse_labels(args.labels)

    # The run's config says whether it is conditional and how many seeds it trained: flags that
    # do not fit fail before the (slower) checkpoint restore.
    config = read_config(args.workdir)
    num_classes = run_num_classes(config)
    for name in ("class_grid", "labels"):
        if getattr(args, name) and not num_classes:
            raise ConfigError(f"--{name} needs a conditional run (config.conditional=True); "
                              f"{args.workdir} is unconditional")
    classes = _classes(num_classes, labels, args.labels) if num_classes else None
    indices = parse_seed_indices(args.seed_index, config)
    seeds = run_seeds(config)
    config, generator, state = restore_state(args.workdir, config)
    for index in indices:
        # Several seeds: seed k's files are named <name>_seed<k>.<ext>.
        name = functools.partial(seed_path, seed=seeds[index]) if len(seeds) > 1 else Path
        _write(args, config, generator, select_seed(state, index), classes, name)


def _write(args: argparse.Namespace, config: ml_collections.ConfigDict, generator: models.Generator,
           state: TrainState, classes: np.ndarray | None, name: Callable[[str | Path], Path]) -> None:
    """One seed's outputs: the samples .npz, the grid and the sheets the flags ask for."""
    variables = generator_variables(state, use_ema=args.ema)
    key = jax.random.key(args.seed)
    truncation = args.truncation

    # Next to the run by default, where gan.evaluate --workdir finds it.
    out = str(Path(args.workdir) / "samples.npz") if args.out is None else args.out
    num = max(args.num if out else 0, args.grid_num if args.grid else 0)
    if num:
        sample_labels = None if classes is None else classes[class_labels(num, len(classes))]
        images = generate_samples(generator, variables, num=num, seed=args.seed, batch_size=args.batch,
                                  z_dim=config.z_dim, labels=sample_labels, truncation=truncation)
        if out:
            path = name(out)
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"images": images[: args.num]}
            if sample_labels is not None:
                arrays["labels"] = sample_labels[: args.num]
            np.savez(path, **arrays)
            print(f"wrote {args.num} samples of step {int(state.step)} to {path}")
        if args.grid:
            grid_labels = None if sample_labels is None else sample_labels[: args.grid_num]
            _save_sheet(images[: args.grid_num], name(args.grid), labels=grid_labels)
            print(f"wrote a grid of {args.grid_num} samples to {name(args.grid)}")

    if args.class_grid:
        columns = args.per_class
        z = sample_latents(key, np.arange(columns), z_dim=config.z_dim, truncation=truncation)
        grid_labels = np.repeat(classes, columns)  # row r: class classes[r], every column's latent
        images = generate_from_latents(generator, variables, np.tile(np.asarray(z), (len(classes), 1)),
                                       grid_labels, batch_size=args.batch)
        shape = (len(classes), columns)
        _save_sheet(images.reshape(*shape, *images.shape[1:]), name(args.class_grid), columns=columns,
                    labels=grid_labels.reshape(shape))
        print(f"wrote a class grid ({shape[0]} classes x {shape[1]} latents) to {name(args.class_grid)}")

    if args.interpolate:
        rows, steps = args.interp_rows, args.interp_steps
        z = interpolation_latents(key, num_rows=rows, steps=steps, z_dim=config.z_dim, truncation=truncation)
        row_labels = None if classes is None else np.repeat(classes[np.arange(rows) % len(classes)], steps)
        images = generate_from_latents(generator, variables, np.asarray(z).reshape(rows * steps, -1), row_labels,
                                       batch_size=args.batch)
        _save_sheet(images.reshape(rows, steps, *images.shape[1:]), name(args.interpolate), columns=steps,
                    labels=None if row_labels is None else row_labels.reshape(rows, steps))
        print(f"wrote {rows} interpolations of {steps} steps to {name(args.interpolate)}")


if __name__ == "__main__":
    errors.run_cli(main)  # a user error (no checkpoint, bad flag): one error line, status 2

"""Samples from a trained generator: ``.npz`` of uint8 images, PNG grids and sheets.

    python -m gan.sample --workdir=DIR --num=50000 [--out=DIR/samples.npz] [--grid=grid.png] [--seed=0]
        [--batch=500] [--no_ema] [--truncation=T] [--labels=3,5]
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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from gan.sampling import (
    class_labels,
    generate_from_latents,
    generate_samples,
    interpolation_latents,
    sample_latents,
)
from gan.state import generator_variables, restore_state
from gan.state import num_classes as run_num_classes
from sympad.train.config import read_config
from sympad.train.errors import ConfigError, run_absl
from sympad.train.metrics import save_image_grid

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
    flags.DEFINE_integer("num", 50_000, "Number of samples.")
    flags.DEFINE_string(
        "out", None, "Output .npz (key 'images', uint8 (N, H, W, 3), and 'labels' int32 (N,) for a conditional "
        "run); default WORKDIR/samples.npz; '' for none."
    )
    flags.DEFINE_string("grid", "", "Also write a PNG grid of the first --grid_num samples here.")
    flags.DEFINE_integer("grid_num", 64, "Samples in the grid.")
    flags.DEFINE_integer("seed", 0, "Sample i uses fold_in(PRNGKey(seed), i).")
    flags.DEFINE_integer("batch", 500, "Samples per device call (all devices together).")
    flags.DEFINE_bool("ema", True, "Use the EMA generator weights when the run kept them.")
    flags.DEFINE_float("truncation", 0.0, "Draw latents from the normal truncated to [-T, T]; 0 = off.")
    flags.DEFINE_string("labels", "", "Conditional runs: only these classes (comma-separated), e.g. 3,5.")
    flags.DEFINE_string("class_grid", "", "Conditional runs: a PNG with one row per class here.")
    flags.DEFINE_integer("per_class", 8, "Columns (latents) of --class_grid.")
    flags.DEFINE_string("interpolate", "", "A PNG of spherical latent interpolations here.")
    flags.DEFINE_integer("interp_rows", 8, "Rows (interpolations) of --interpolate.")
    flags.DEFINE_integer("interp_steps", 8, "Images per row of --interpolate, both endpoints included.")


def _parse_labels(text: str) -> list[int]:
    """``--labels`` as a list of class indices, duplicates dropped, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--labels={text!r}: use comma-separated class indices, e.g. --labels=3,5") from None
    return list(dict.fromkeys(values))


def _check_png(name: str) -> None:
    path = FLAGS[name].value
    if path and Path(path).suffix.lower() != ".png":
        raise ConfigError(f"--{name}={path!r}: must name a .png file (its arrays go next to it as .npz)")


def _save_sheet(images: np.ndarray, path: str, *, columns: int | None = None,
                labels: np.ndarray | None = None) -> None:
    """Writes the PNG and, next to it, an ``.npz`` with the images (and labels) it shows."""
    save_image_grid(images.reshape(-1, *images.shape[-3:]), path, ncols=columns)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(Path(path).with_suffix(".npz"), **arrays)


def _classes(num_classes: int, labels: Sequence[int]) -> np.ndarray:
    """The classes to sample: ``labels`` checked against the run's classes, or all of them."""
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--labels={FLAGS.labels}: {', '.join(map(str, bad))} out of range; this run has "
                          f"{num_classes} classes (0 to {num_classes - 1})")
    return np.asarray(labels or range(num_classes), np.int32)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    # Everything that can be checked before the checkpoint is read.
    for name in ("num", "grid_num", "batch", "per_class", "interp_rows"):
        if FLAGS[name].value < 1:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be a positive int")
    if FLAGS.interp_steps < 2:
        raise ConfigError(f"--interp_steps={FLAGS.interp_steps}: must be >= 2 (the two endpoints)")
    if FLAGS.seed < 0:
        raise ConfigError(f"--seed={FLAGS.seed}: must be >= 0")
    if FLAGS.truncation < 0:
        raise ConfigError(f"--truncation={FLAGS.truncation}: must be >= 0 (0 = off)")
    for name in ("grid", "class_grid", "interpolate"):
        _check_png(name)
    labels = _parse_labels(FLAGS.labels)

    # The run's config says whether it is conditional: flags that need classes fail before the
    # (slower) checkpoint restore.
    config = read_config(FLAGS.workdir)
    num_classes = run_num_classes(config)
    for name in ("class_grid", "labels"):
        if FLAGS[name].value and not num_classes:
            raise ConfigError(f"--{name} needs a conditional run (config.conditional=True); "
                              f"{FLAGS.workdir} is unconditional")
    classes = _classes(num_classes, labels) if num_classes else None
    config, generator, state = restore_state(FLAGS.workdir, config)
    variables = generator_variables(state, use_ema=FLAGS.ema)
    key = jax.random.key(FLAGS.seed)
    truncation = FLAGS.truncation

    # Next to the run by default, where gan.evaluate --workdir finds it.
    out = str(Path(FLAGS.workdir) / "samples.npz") if FLAGS.out is None else FLAGS.out
    num = max(FLAGS.num if out else 0, FLAGS.grid_num if FLAGS.grid else 0)
    if num:
        sample_labels = None if classes is None else classes[class_labels(num, len(classes))]
        images = generate_samples(generator, variables, num=num, seed=FLAGS.seed, batch_size=FLAGS.batch,
                                  z_dim=config.z_dim, labels=sample_labels, truncation=truncation)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            arrays = {"images": images[: FLAGS.num]}
            if sample_labels is not None:
                arrays["labels"] = sample_labels[: FLAGS.num]
            np.savez(out, **arrays)
            logging.info("Wrote %d samples of step %d to %s", FLAGS.num, int(state.step), out)
        if FLAGS.grid:
            grid_labels = None if sample_labels is None else sample_labels[: FLAGS.grid_num]
            _save_sheet(images[: FLAGS.grid_num], FLAGS.grid, labels=grid_labels)
            logging.info("Wrote a grid of %d samples to %s", FLAGS.grid_num, FLAGS.grid)

    if FLAGS.class_grid:
        columns = FLAGS.per_class
        z = sample_latents(key, np.arange(columns), z_dim=config.z_dim, truncation=truncation)
        grid_labels = np.repeat(classes, columns)  # row r: class classes[r], every column's latent
        images = generate_from_latents(generator, variables, np.tile(np.asarray(z), (len(classes), 1)),
                                       grid_labels, batch_size=FLAGS.batch)
        shape = (len(classes), columns)
        _save_sheet(images.reshape(*shape, *images.shape[1:]), FLAGS.class_grid, columns=columns,
                    labels=grid_labels.reshape(shape))
        logging.info("Wrote a class grid (%d classes x %d latents) to %s", *shape, FLAGS.class_grid)

    if FLAGS.interpolate:
        rows, steps = FLAGS.interp_rows, FLAGS.interp_steps
        z = interpolation_latents(key, num_rows=rows, steps=steps, z_dim=config.z_dim, truncation=truncation)
        row_labels = None if classes is None else np.repeat(classes[np.arange(rows) % len(classes)], steps)
        images = generate_from_latents(generator, variables, np.asarray(z).reshape(rows * steps, -1), row_labels,
                                       batch_size=FLAGS.batch)
        _save_sheet(images.reshape(rows, steps, *images.shape[1:]), FLAGS.interpolate, columns=steps,
                    labels=None if row_labels is None else row_labels.reshape(rows, steps))
        logging.info("Wrote %d interpolations of %d steps to %s", rows, steps, FLAGS.interpolate)


if __name__ == "__main__":
    _define_flags()
    run_absl(main)  # a user error (no checkpoint, bad flag): one error line, status 2

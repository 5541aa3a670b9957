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

from pathlib import Path

import numpy as np
from absl import app, flags, logging

from gan.sampling import generate_samples
from gan.train import generator_variables, restore_state
from sympad.train.errors import run_absl
from sympad.train.metrics import save_image_grid

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
    for name in ("num", "grid_num", "batch"):  # before the checkpoint is read
        if FLAGS[name].value < 1:
            raise ValueError(f"--{name}={FLAGS[name].value}: must be a positive int")
    if FLAGS.seed < 0:
        raise ValueError(f"--seed={FLAGS.seed}: must be >= 0")
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
        save_image_grid(images[: FLAGS.grid_num], FLAGS.grid)
        logging.info("Wrote a grid of %d samples to %s", FLAGS.grid_num, FLAGS.grid)


if __name__ == "__main__":
    _define_flags()
    run_absl(main)  # a user error (no checkpoint, bad flag): one error line, status 2

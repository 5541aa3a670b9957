"""A GAN run's state and how to rebuild it: models, optimizers, TrainState, a finished run's config and checkpoint.

What training creates and what sampling, export and evaluation read back, without the trainer
(no DiffAugment, no train step, no input pipeline): ``create_models`` and ``create_optimizers``
from a config, ``create_train_state`` (a pure function of ``config.seed``), ``restore_state`` for a
run directory (its config read by ``sympad.train.config.read_config``), ``generator_variables``
for sampling.

Randomness is a pure function of ``(config.seed, step)``: one ``sympad.train.rng.stream`` per
purpose (:data:`STREAMS`: the initial weights, the train steps' latents, the input pipeline, the
sample grids).

Several seeds in one run (``config.num_seeds = N > 1``): every field of :class:`TrainState` but
``step`` gains a leading seed axis of size N, and seed ``i`` holds exactly the state a single run
with ``config.seed + i`` would (:func:`run_seeds`, :func:`select_seed`); ``gan.step`` vmaps the
train step over that axis. With ``num_seeds = 1`` nothing is stacked: the state, its checkpoints
and the step are those of a plain run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gan import models
from sympad.train import loop, rng
from sympad.train.config import checkpoint_dir, read_config
from sympad.train.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "STREAMS",
    "TrainState",
    "create_models",
    "create_optimizers",
    "create_train_state",
    "generator_variables",
    "num_classes",
    "output_size",
    "parse_channels",
    "restore_state",
    "parse_seed_indices",
    "run_seeds",
    "seed_path",
    "seed_prefix",
    "select_seed",
]

#: The run's PRNG streams (``sympad.train.rng.stream``), in their fixed order.
STREAMS = ("init", "train", "data", "grid")
#: config.optimizer.schedule values (see _schedule).
SCHEDULES = ("constant", "linear")

# ----------------------------------------------------------------------------------------------
# Models and optimizers


def parse_channels(value: Any) -> tuple[int, ...] | None:
    """A config's per-block channel override ((), [], '' or None: the architecture's own)."""
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(","))
    return tuple(int(v) for v in value)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Classes the models condition on: 0 for an unconditional run, else ``config.num_classes``.

    Raises:
      ConfigError: a conditional config whose ``num_classes`` is not resolved yet (training sets it
        from the dataset; a finished run's config.json records it).
    """
    if not config.get("conditional", False):
        return 0
    if int(config.num_classes) < 2:
        raise ConfigError(f"config.num_classes={config.num_classes!r}: a conditional run needs >= 2 classes "
                          "(0 = the dataset's, resolved when training starts)")
    return int(config.num_classes)


def create_models(config: ml_collections.ConfigDict, *, classes: int | None = None
                  ) -> tuple[models.Generator, models.Discriminator]:
    """Generator and discriminator for ``config.arch`` with the config's overrides.

    Fields used: arch, kernel, width_multiplier (<= 0: from the kind), norm, upsample,
    weight_init, the shrinking overrides g_channels, d_channels, d_downsample, bottom_size, and
    for conditional runs num_classes and class_embedding. ``classes`` overrides
    :func:`num_classes` (validation builds a conditional model before the data says how many).

    Raises:
      ConfigError: for an unknown arch (or any invalid field, when the models are built).
    """
    if config.arch not in models.ARCHS:
        raise ConfigError(f"config.arch must be one of {tuple(models.ARCHS)}, got {config.arch!r}")
    arch = models.ARCHS[config.arch]
    classes = num_classes(config) if classes is None else classes
    g_kwargs: dict[str, Any] = dict(
        kernel=config.kernel,
        width_multiplier=config.width_multiplier if config.width_multiplier > 0 else None,
        norm=config.norm,
        upsample=config.upsample,
        weight_init=config.weight_init,
    )
    d_kwargs: dict[str, Any] = dict(weight_init=config.weight_init)
    if classes:
        g_kwargs.update(num_classes=classes, class_embedding=config.class_embedding)
        d_kwargs.update(num_classes=classes)
    if parse_channels(config.get("g_channels")):
        g_kwargs["channels"] = parse_channels(config.g_channels)
    if config.get("bottom_size", 0):
        g_kwargs["bottom_size"] = int(config.bottom_size)
    if parse_channels(config.get("d_channels")):
        d_kwargs["channels"] = parse_channels(config.d_channels)
        downsample = parse_channels(config.get("d_downsample"))
        if downsample is None:
            raise ConfigError("config.d_downsample must be given with config.d_channels (one 0/1 per block)")
        d_kwargs["downsample"] = tuple(bool(v) for v in downsample)
    generator, discriminator = arch.generator(**g_kwargs), arch.discriminator(**d_kwargs)
    models.default_width_multiplier(config.kernel)  # Validates the kind early.
    return generator, discriminator


def output_size(generator: models.Generator) -> int:
    """Side of the generator's square output."""
    return generator.bottom_size * 2 ** (len(generator.channels) - 1)


def _schedule(lr: float, schedule: str, updates: int) -> optax.Schedule:
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "linear":
        return optax.linear_schedule(lr, 0.0, transition_steps=max(1, updates))
    raise ConfigError(f"config.optimizer.schedule must be 'constant' or 'linear', got {schedule!r}")


def create_optimizers(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                                   optax.GradientTransformation]:
    """Adam for G and D (``config.optimizer``); 'linear' reaches 0 at each one's last update of the run."""
    opt = config.optimizer
    _schedule(opt.learning_rate, opt.schedule, 1)  # Validates the schedule.
    g_updates = config.num_train_steps if opt.schedule != "constant" else 0
    lr, schedule = float(opt.learning_rate), str(opt.schedule)
    adam = functools.partial(optax.adam, b1=float(opt.b1), b2=float(opt.b2))
    return (adam(_schedule(lr, schedule, int(g_updates))),
            adam(_schedule(lr, schedule, int(g_updates * config.n_critic))))


# ----------------------------------------------------------------------------------------------
# State


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds.

    Attributes:
      step: completed train steps (generator updates); D has done ``step * n_critic``.
      g_params, d_params: parameters.
      g_stats: G's BatchNorm running averages ({} without BN).
      d_stats: D's spectral-norm state (``u`` and ``sigma`` per weight).
      g_opt_state, d_opt_state: Adam states.
      ema_params: exponential moving average of g_params (None when config.ema_decay == 0).
      key: PRNG key of the training stream (fixed; folded with ``step``).
    """

    step: jax.Array
    g_params: Any
    g_stats: Any
    d_params: Any
    d_stats: Any
    g_opt_state: Any
    d_opt_state: Any
    ema_params: Any
    key: jax.Array


def run_seeds(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The seeds a run trains: ``config.seed + i`` for ``i < config.num_seeds`` (one seed by default).

    ``config``: a ConfigDict, or a finished run's config.json as a dict.
    """
    num = config.get("num_seeds", 1)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"config.num_seeds={num!r}: must be an int >= 1 (seeds trained at once)")
    return tuple(int(config.get("seed", 0)) + i for i in range(num))


def seed_prefix(seed: int) -> str:
    """The prefix of a seed's entries in metrics.jsonl: ``'seed3/'``."""
    return f"seed{seed}/"


def seed_path(path: str | Path, seed: int) -> Path:
    """A file of one seed of a several-seed run: ``samples.npz`` -> ``samples_seed3.npz``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_seed{seed}{path.suffix}")


def parse_seed_indices(text: str, config: Mapping[str, Any], *, flag: str = "--seed_index") -> list[int]:
    """A tool's ``--seed_index`` value: comma-separated indices into the run's seeds ('' = all of them).

    Raises:
      ConfigError: naming ``flag``, for a value that is not ints or an index the run does not have.
    """
    seeds = run_seeds(config)
    try:
        indices = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}={text!r}: use comma-separated seed indices, e.g. {flag}=0,1") from None
    bad = [i for i in indices if not 0 <= i < len(seeds)]
    if bad:
        raise ConfigError(f"{flag}={text}: {', '.join(map(str, bad))} out of range; this run trained "
                          f"{len(seeds)} seed(s): indices 0 to {len(seeds) - 1} (seeds {', '.join(map(str, seeds))})")
    return list(dict.fromkeys(indices)) or list(range(len(seeds)))


def create_train_state(config: ml_collections.ConfigDict, generator: models.Generator,
                       discriminator: models.Discriminator, g_tx: optax.GradientTransformation,
                       d_tx: optax.GradientTransformation) -> TrainState:
    """Initial state from ``config.seed``; with ``config.num_seeds = N > 1`` the N seeds' states stacked.

    Seed ``i`` of a stacked state is, leaf for leaf, the initial state of a single run with
    ``seed = config.seed + i`` (built the same way, then stacked along a new leading axis; ``step``
    stays one scalar).
    """
    seeds = run_seeds(config)
    if len(seeds) == 1:
        return _single_train_state(seeds[0], config, generator, discriminator, g_tx, d_tx)
    states = [_single_train_state(seed, config, generator, discriminator, g_tx, d_tx) for seed in seeds]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    return stacked.replace(step=states[0].step)


def select_seed(state: TrainState, index: int) -> TrainState:
    """Seed ``index`` of a stacked state (``config.num_seeds > 1``), as a single run's state.

    Raises:
      ValueError: ``index`` is out of range for the state's seed axis.
    """
    stacked = state.key.ndim == 1
    num = state.key.shape[0] if stacked else 1
    if not 0 <= index < num:
        raise ValueError(f"seed index {index} out of range: the state holds {num} seed(s) (0 to {num - 1})")
    if not stacked:
        return state
    return jax.tree_util.tree_map(lambda x: x[index], state.replace(step=None)).replace(step=state.step)


def _single_train_state(seed: int, config: ml_collections.ConfigDict, generator: models.Generator,
                        discriminator: models.Discriminator, g_tx: optax.GradientTransformation,
                        d_tx: optax.GradientTransformation) -> TrainState:
    g_key, d_key = jax.random.split(rng.stream(seed, "init", STREAMS))
    size = output_size(generator)
    labels = jnp.zeros((1,), jnp.int32) if generator.num_classes else None
    g_vars = generator.init(g_key, jnp.zeros((1, config.z_dim), jnp.float32), labels, train=False)
    d_vars = discriminator.init(d_key, jnp.zeros((1, size, size, 3), jnp.float32), labels)
    g_params, d_params = g_vars["params"], d_vars["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_stats=g_vars.get("batch_stats", {}),
        d_params=d_params,
        d_stats=d_vars["batch_stats"],
        g_opt_state=g_tx.init(g_params),
        d_opt_state=d_tx.init(d_params),
        ema_params=jax.tree_util.tree_map(jnp.copy, g_params) if config.ema_decay > 0 else None,
        key=rng.stream(seed, "train", STREAMS),
    )


def generator_variables(state: TrainState, *, use_ema: bool = True) -> dict[str, Any]:
    """G's variables for sampling: the EMA weights when kept (and ``use_ema``), else the live ones.

    BatchNorm running averages (norm='batch') are those of the live weights in both cases.
    """
    params = state.ema_params if (use_ema and state.ema_params is not None) else state.g_params
    return {"params": params, "batch_stats": state.g_stats} if state.g_stats else {"params": params}


# ----------------------------------------------------------------------------------------------
# Checkpoints of finished runs


def restore_state(workdir: str | Path, config: ml_collections.ConfigDict | None = None
                  ) -> tuple[ml_collections.ConfigDict, models.Generator, TrainState]:
    """The latest checkpoint of a run (read-only), with its config and generator.

    Raises:
      FileNotFoundError: no config.json or no checkpoint in ``workdir``.
      sympad.train.checkpoint.CheckpointError: the checkpoint is corrupt or does not match the config.
    """
    config = config if config is not None else read_config(workdir)
    generator, discriminator = create_models(config)
    g_tx, d_tx = create_optimizers(config)
    template = create_train_state(config, generator, discriminator, g_tx, d_tx)
    _, state = loop.restore_latest(checkpoint_dir(workdir), template)
    return config, generator, state

"""The GAN suite's config fields, each declared once, and the rules that tie fields together.

:data:`GAN_FIELDS` (``sympad.train.config.Field``: name, type, default, allowed values, help) is
the whole config: ``configs/gan/common.py``'s base config is its defaults, ``gan.train.validate``
checks it and ``python -m gan.main --helpfull`` lists it. A rule that spans
fields (a conditional G needs class-conditional BatchNorm; ``d_downsample`` has one entry per
``d_channels`` entry; the architecture builds) is one small function in :data:`RULES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from gan import diffaugment, losses, models
from gan.metrics.evaluator import PROTOCOLS, default_eval_config
from gan.metrics.features import FEATURE_NETWORKS
from gan.state import SCHEDULES, create_models, output_size, parse_channels
from sympad.train.config import (
    LOOP_FIELDS,
    RUN_FIELDS,
    Field,
    Range,
    cadence,
    data_source,
    field_table,
    with_defaults,
)
from sympad.train.errors import ConfigError

__all__ = ["GAN_FIELDS", "RULES", "SEED_BATCHING"]

#: Values of ``config.seed_batching`` (``gan.step`` runs them).
SEED_BATCHING = ("auto", "vmap", "loop")

_CHANNELS = "must be () (the architecture's) or positive ints, one per block, e.g. (32, 32, 32, 32)"


def _channels(value: Any) -> str | None:
    """The check of g_channels/d_channels: () or positive ints (``gan.state.parse_channels``)."""
    try:
        channels = parse_channels(value)
    except (TypeError, ValueError):
        return _CHANNELS
    return _CHANNELS if channels is not None and any(c < 1 for c in channels) else None


def _policy(value: Any) -> str | None:
    """The check of config.diffaugment: policies ``gan.diffaugment.parse_policy`` knows."""
    if not isinstance(value, str):
        return "must be a string"
    try:
        diffaugment.parse_policy(value)
    except ValueError as e:
        return str(e)
    return None


def _reference(value: Any) -> str | None:
    """The check of config.eval.reference_dataset: '' or a data source."""
    return None if value == "" else data_source(value)


_EVAL = default_eval_config()  # gan.metrics' defaults of the eval fields a GAN config carries

#: Every field of a GAN config, in the order of configs/gan/common.py's base config.
GAN_FIELDS: dict[str, Field] = field_table(
    # Model (gan.models): arch picks the paper's G/D pair; the other fields shrink it.
    Field("arch", str, "sngan", "the paper's G/D pair (gan.models.ARCHS)", tuple(models.ARCHS)),
    RUN_FIELDS["kernel"],
    Field("width_multiplier", float, 0.0, "G widths x this; <= 0: 1.5 for C2/C2sp, 0.75 for C4/C4sp, 1 for odd "
          "kernels"),
    Field("norm", str, "none", "G normalization; a conditional G needs 'batch' (class-conditional BatchNorm)",
          models.NORMS),
    Field("upsample", str, "nearest", "G's upsampling", models.UPSAMPLES),
    Field("weight_init", str, "sngan", "initialisation of G and D", models.INITS),
    Field("z_dim", int, 128, "latent size", Range(1)),
    Field("g_channels", tuple, (), "G's widths per resolution (C3 widths, before the width multiplier); () = the "
          "architecture's", _channels),
    Field("bottom_size", int, 0, "side of G's first feature map; 0 = the architecture's (4)", Range(0)),
    Field("d_channels", tuple, (), "D's widths per block; () = the architecture's", _channels),
    Field("d_downsample", tuple, (), "one 0/1 per d_channels entry: whether that D block halves the side"),
    # Class-conditional models (labels from the data): conditional BN in G, a projection head in D.
    Field("conditional", bool, False, "class-conditional G and a projection D, labels from the data"),
    Field("num_classes", int, 0, "classes of a conditional run; 0 = the dataset's (resolved when training starts; "
          "config.json records it)", Range(0)),
    Field("class_embedding", str, "per_class", "G's class gains/biases: 'per_class' (SNGAN) or 'shared' (BigGAN)",
          models.CLASS_EMBEDDINGS),
    Field("diffaugment", str, "", "DiffAugment policies applied to real and generated images alike, joined by ',' "
          f"({', '.join(diffaugment.POLICIES)}); '' = off", _policy),
    # Data.
    RUN_FIELDS["data"],
    Field("max_examples", int, 0, "training images used; 0 = all", Range(0)),
    # Optimization (paper 4.5 / compare_gan): Adam for G and D.
    Field("loss", str, "ns", "GAN loss (gan.losses)", losses.LOSSES),
    Field("optimizer.learning_rate", float, 2e-4, "Adam's learning rate, G and D", Range(0.0, min_open=True)),
    Field("optimizer.b1", float, 0.5, "Adam's beta1", Range(0.0, 1.0, max_open=True)),
    Field("optimizer.b2", float, 0.999, "Adam's beta2", Range(0.0, 1.0, max_open=True)),
    Field("optimizer.schedule", str, "constant", "learning rate: 'constant', or 'linear' to 0 at the last update",
          SCHEDULES),
    RUN_FIELDS["batch_size"],
    Field("n_critic", int, 5, "D updates per G update", Range(1)),
    Field("unroll_d_steps", bool, True, "False: lax.scan over the D updates (XLA:CPU runs rolled loops ~50x "
          "slower)"),
    Field("num_train_steps", int, 40_000, "G updates (the paper's Table 4: 200k D updates / n_critic)", Range(1)),
    Field("ema_decay", float, 0.0, "decay of an EMA of G's weights, sampled and evaluated; 0 = off", Range(
        0.0, 1.0, max_open=True)),
    RUN_FIELDS["seed"],
    # Seeds seed, seed + 1, ... trained at once in one program (gan.step); each as its own run.
    Field("num_seeds", int, 1, "seeds seed .. seed + num_seeds - 1 trained at once, in one program", Range(1)),
    Field("seed_batching", str, "auto", "how the seeds share the program: 'vmap' (accelerators), 'loop' (the "
          "CPU: XLA's grouped convs are slow), 'auto' picks", SEED_BATCHING),
    # The loop: logging, checkpoints, evaluation (FID/IS through gan.metrics), data placement.
    with_defaults(LOOP_FIELDS, {"log_every": 100, "checkpoint_every": 1000, "max_checkpoints": 3, "eval_every": 0}),
    Field("sample_every", int, 1000, "a sample grid (and the digits scores on digits), in train steps; 0 = only at "
          "the last step; -n = every n epochs", cadence),
    Field("num_grid", int, 64, "samples in a grid", Range(1)),
    Field("digits_quality_samples", int, 1000, "digits data only: gan.digits_quality on this many samples",
          Range(0)),
    # gan.metrics' fields (see gan.metrics.evaluator.EvalSettings); reference_dataset '' = config.data.
    Field("eval.protocol", str, _EVAL.protocol, "FID/IS protocol (gan.metrics.evaluator.PROTOCOLS)",
          tuple(PROTOCOLS)),
    Field("eval.num_samples", int, _EVAL.num_samples, "samples scored; 0 = the protocol's", Range(0)),
    Field("eval.num_reference", int, _EVAL.num_reference, "reference images; 0 = the protocol's", Range(0)),
    Field("eval.reference_dataset", str, _EVAL.reference_dataset, "the reference images' data source; '' = "
          "config.data", _reference),
    Field("eval.feature_network", str, _EVAL.feature_network, "'auto': Inception when its weights are found, "
          "else the offline CIFAR-10 network", FEATURE_NETWORKS),
    Field("eval.inception_weights", str, _EVAL.inception_weights, "Inception weights file; '' = the fetched ones "
          "(python -m gan.metrics.fetch)"),
    RUN_FIELDS["runlocal"],
)


# ----------------------------------------------------------------------------------------------
# Rules across fields, in the order they are checked (each field is checked alone first)


def conditional_norm(config: ml_collections.ConfigDict) -> None:
    """A conditional G normalizes with class-conditional BatchNorm."""
    if config.conditional and config.norm != "batch":
        raise ConfigError(f"config.norm={config.norm!r}: a conditional generator needs 'batch' "
                          "(its class-conditional BatchNorm)")


def conditional_classes(config: ml_collections.ConfigDict) -> None:
    """A conditional run has 2 classes or more (0: the data's)."""
    if config.conditional and config.num_classes == 1:
        raise ConfigError("config.num_classes=1: a conditional run needs >= 2 classes (0 = the data's)")


def discriminator_blocks(config: ml_collections.ConfigDict) -> None:
    """``d_downsample``: one 0/1 per ``d_channels`` entry, and () without ``d_channels``."""
    d_channels, downsample = parse_channels(config.d_channels), config.d_downsample
    if d_channels is not None:
        if (isinstance(downsample, str) or not hasattr(downsample, "__len__")
                or len(downsample) != len(d_channels) or any(v not in (0, 1) for v in downsample)):
            raise ConfigError(f"config.d_downsample={downsample!r}: must be one 0/1 per config.d_channels entry "
                              f"({len(d_channels)} of them)")
    elif downsample:
        raise ConfigError(f"config.d_downsample={downsample!r}: only with config.d_channels; must be () without it")


def inception_weights(config: ml_collections.ConfigDict) -> None:
    """A run that evaluates finds its Inception weights file."""
    weights = config.eval.inception_weights
    if weights and config.eval_every != 0 and not Path(weights).expanduser().is_file():
        raise ConfigError(f"config.eval.inception_weights={weights!r}: no such file ('' for the default: "
                          "Inception when its weights are found, else the offline network)")


def architecture(config: ml_collections.ConfigDict) -> None:
    """The models build (unbound modules: nothing compiles), G has 2 resolutions or more, and D's
    downsampling leaves a whole side."""
    generator, _ = create_models(config, classes=(config.num_classes or 2) if config.conditional else 0)
    size = output_size(generator)
    g_channels = parse_channels(config.g_channels)
    if g_channels is not None and len(g_channels) < 2:
        raise ConfigError(f"config.g_channels={config.g_channels!r}: needs at least 2 entries (one per resolution)")
    if parse_channels(config.d_channels) is None:
        return
    n_down = sum(int(v) for v in config.d_downsample)
    if size % 2**n_down:
        raise ConfigError(f"config.d_downsample={config.d_downsample!r}: halves the {size}x{size} images {n_down} "
                          f"times; the side must stay a whole number (fewer 1s, or change bottom_size/g_channels)")


#: The cross-field rules, in order.
RULES = (conditional_norm, conditional_classes, discriminator_blocks, inception_weights, architecture)


"""The classification suite's config fields, each declared once, and the rules that tie fields together.

:data:`CLASSIFY_FIELDS` (``sympad.train.config.Field``: name, type, default, allowed values, help)
is the config but the model's own fields (``config.model.<field>`` besides name, num_classes and
dtype: each family's, checked by building the model): ``configs/classify/common.py``'s base config
is its defaults, ``classify.train.validate`` checks it and ``python -m classify.main --helpfull``
lists it. A rule that spans fields (crop padding below the image size; the model builds) is one
small function in :data:`RULES`. Defaults follow the paper's CIFAR training (section 4.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from classify import models
from classify.state import SCHEDULES, create_model
from sympad.train.config import LOOP_FIELDS, RUN_FIELDS, Field, Range, field_table, with_defaults
from sympad.train.errors import ConfigError

__all__ = ["CLASSIFY_FIELDS", "DTYPES", "RULES"]

#: config.model.dtype values (classify.models.create_model).
DTYPES = ("float32", "bfloat16", "float16")

#: Every field of a classify config, in the order of configs/classify/common.py's base config.
CLASSIFY_FIELDS: dict[str, Field] = field_table(
    RUN_FIELDS["kernel"],
    RUN_FIELDS["data"],
    RUN_FIELDS["runlocal"],
    # The model block also holds its family's own fields (depth, width, ...), set by the config file.
    Field("model.num_classes", int, 10, "classes (the data's count wins when they differ)", Range(1)),
    Field("model.dtype", str, "float32", "computation dtype of the model", DTYPES),
    Field("model.name", str, "resnet_cifar", "model family (classify.models.MODELS)", tuple(sorted(models.MODELS))),
    Field("input.image_size", int, 0, "side the images are resized to; 0 = as stored (32 for CIFAR)", Range(0)),
    Field("input.max_examples", int, 0, "training images used; 0 = the whole train split", Range(0)),
    Field("input.eval_max_examples", int, 0, "test images used; 0 = the whole test split", Range(0)),
    Field("input.cache_dir", str, "", "decoded-split cache; '' = sympad.train.data.default_cache_dir()"),
    Field("input.data_dir", str, "", "TFDS data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets"),
    Field("input.crop_pad", int, 4, "padding of the random crop (below image_size)", Range(0)),
    Field("input.flip", bool, True, "random horizontal flips"),
    RUN_FIELDS["seed"],
    RUN_FIELDS["batch_size"],
    Field("eval_batch_size", int, 500, "test batch (padded to split over the devices)", Range(1)),
    Field("num_epochs", int, 300, "training epochs (>= 1 unless num_train_steps is set)", Range(0)),
    Field("num_train_steps", int, 0, "> 0: train steps, overriding num_epochs", Range(0)),
    Field("optimizer.learning_rate", float, 0.1, "SGD's peak learning rate", Range(0.0, min_open=True)),
    Field("optimizer.momentum", float, 0.9, "SGD's momentum", Range(0.0, 1.0, max_open=True)),
    Field("optimizer.nesterov", bool, False, "Nesterov momentum"),
    Field("optimizer.weight_decay", float, 1e-4, "L2 weight decay (classify.state.weight_decay_mask: not on biases, "
          "norms or depthwise kernels)", Range(0.0)),
    Field("optimizer.schedule", str, "cosine", "'cosine' to 0 at the last step, or 'piecewise' (x0.1 at 50% and "
          "75%)", SCHEDULES),
    Field("optimizer.warmup_epochs", float, 0.0, "linear warm-up before the schedule", Range(0.0)),
    Field("augment", bool, True, "pad-and-crop + flip"),
    Field("mixup_alpha", float, 0.0, "mixup's alpha; 0 = off (the paper: 1.0 where it says mixup)", Range(0.0)),
    Field("cutout", int, 0, "side of the cutout square; 0 = off (DeVries & Taylor: 16 on CIFAR-10)", Range(0)),
    # The loop: the test split is evaluated and a checkpoint written once per epoch (-1).
    with_defaults(LOOP_FIELDS, {"log_every": 100, "eval_every": -1, "checkpoint_every": -1, "max_checkpoints": 2}),
)


# ----------------------------------------------------------------------------------------------
# Rules across fields, in the order they are checked (each field is checked alone first)


def crop_within_image(config: ml_collections.ConfigDict) -> None:
    """The crop padding is below the image size, when the config sets one."""
    image_size, crop_pad = config.input.image_size, config.input.crop_pad
    if image_size and crop_pad >= image_size:
        raise ConfigError(f"config.input.crop_pad={crop_pad}: must be < config.input.image_size={image_size}")


def epochs_or_steps(config: ml_collections.ConfigDict) -> None:
    """A run without num_train_steps trains num_epochs >= 1 (unused when num_train_steps > 0)."""
    if config.num_train_steps == 0 and config.num_epochs < 1:
        raise ConfigError(f"config.num_epochs={config.num_epochs!r}: must be an int >= 1 (config.num_train_steps is "
                          "0, so the run lasts num_epochs)")


def cutout_within_image(config: ml_collections.ConfigDict) -> None:
    """The cutout square fits the image, when the config sets an image size."""
    image_size, cutout = config.input.image_size, config.cutout
    if image_size and cutout > image_size:
        raise ConfigError(f"config.cutout={cutout}: must be <= config.input.image_size={image_size}")


def model_builds(config: ml_collections.ConfigDict) -> None:
    """The model's own fields: it builds, and its init traces abstractly (``jax.eval_shape``
    compiles nothing), so a width or stride the architecture cannot take fails here, not after the data."""
    try:
        model = create_model(config)
        size = config.input.image_size or 32
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(_model_error(config, e)) from None


def _model_error(config: ml_collections.ConfigDict, error: BaseException) -> str:
    """``config.model.<field>=value: ...`` when the message starts with a field's name."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    for name, value in config.model.items():
        if text.startswith(f"{name} "):
            return f"config.model.{name}={value!r}: {text[len(name) + 1:]}"
    fields = ", ".join(f"{k}={v!r}" for k, v in config.model.items())
    return f"config.model ({fields}): the model does not build: {text}"


#: The cross-field rules, in order.
RULES = (crop_within_image, epochs_or_steps, cutout_within_image, model_builds)

"""A classify run's state and how to rebuild it: model, optimizer, TrainState, a finished run's checkpoint.

What training creates and what analysis reads back, without the trainer (no train step, no input
pipeline): ``create_model`` and ``create_optimizer`` from a config, ``create_train_state`` (a pure
function of ``config.seed``) and ``restore_state`` for a run directory.

Defaults (``configs/classify/common.py``) follow the paper: SGD with momentum 0.9 from learning
rate 0.1 with cosine decay (piecewise-constant for the DenseNet configs, paper 4.5), weight decay
1e-4, batch 64.

Weight decay (coupled L2, added to the gradient before momentum as in the authors' TensorFlow code
and PyTorch's SGD) applies to conv and dense kernels only: not to depthwise kernels (paper 4.5;
recognised by their module name, ``*depthwise*``), and not to BatchNorm scales/offsets or biases
(the usual choice: they do not set the scale of the function, so decaying them only fights
BatchNorm).

Model initialisation uses the ``'rbg'`` PRNG: the weights are as random, and on CPU the init
compiles ~6x faster than with threefry (flax derives one key per parameter; 12 s vs 2 s for a
ResNet-8). The data, mixup and dropout streams (:data:`STREAMS`) stay on the default PRNG so
batches are reproducible everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from classify import models
from sympad.train import loop
from sympad.train.config import checkpoint_dir, read_config
from sympad.train.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "STREAMS",
    "TrainState",
    "create_model",
    "create_optimizer",
    "create_train_state",
    "learning_rate_schedule",
    "restore_state",
    "weight_decay_mask",
]

#: The run's default-PRNG streams (``sympad.train.rng.stream``), in their fixed order.
STREAMS = ("data", "mixup", "dropout")
#: config.optimizer.schedule values (see learning_rate_schedule).
SCHEDULES = ("cosine", "piecewise")

# ----------------------------------------------------------------------------------------------
# Model and optimizer


def create_model(config: ml_collections.ConfigDict, *, num_classes: int | None = None) -> nn.Module:
    """The model of ``config.model`` with every spatial conv of kind ``config.kernel``.

    Args:
      config: a classify config (``model.name`` and the family's fields).
      num_classes: overrides ``config.model.num_classes`` (e.g. from the dataset).
    """
    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    name = fields.pop("name")
    fields["kernel"] = config.kernel
    if num_classes is not None:
        fields["num_classes"] = num_classes
    return models.create_model(name, **fields)


def _path_names(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def weight_decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: conv/dense kernels except depthwise ones.

    Args:
      params: the ``'params'`` collection (nested dict).

    Returns:
      A pytree of bools with the structure of ``params``.
    """

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        names = _path_names(path)
        return names[-1] == "kernel" and not any("depthwise" in n for n in names[:-1])

    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(
    config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """``config.optimizer.schedule``: 'cosine' (to 0 at the last step) or 'piecewise' (x0.1 at 50% and 75%).

    An optional linear warm-up of ``config.optimizer.warmup_epochs`` precedes either.

    Raises:
      ValueError: for an unknown schedule name.
    """
    opt = config.optimizer
    base = float(opt.learning_rate)
    warmup = int(round(float(opt.warmup_epochs) * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps)
    elif opt.schedule == "piecewise":
        # Huang et al.'s DenseNet schedule (paper 4.5: "piecewise constant decay" for DenseNets).
        main = optax.piecewise_constant_schedule(base, {int(0.5 * decay_steps): 0.1, int(0.75 * decay_steps): 0.1})
    else:
        raise ConfigError(f"config.optimizer.schedule must be 'cosine' or 'piecewise', got {opt.schedule!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def create_optimizer(
    config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    """SGD with momentum and masked coupled weight decay (see the module docstring)."""
    opt = config.optimizer
    schedule = learning_rate_schedule(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    return optax.chain(
        optax.add_decayed_weights(float(opt.weight_decay), mask=weight_decay_mask),
        optax.sgd(schedule, momentum=float(opt.momentum), nesterov=bool(opt.nesterov)),
    )


# ----------------------------------------------------------------------------------------------
# State


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: the step and the arrays (model and optimizer are rebuilt from the config)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int, image_size: int) -> TrainState:
    """Initialises parameters, BatchNorm statistics and optimizer state (one jitted call)."""

    def init() -> TrainState:
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init(jax.random.key(seed, impl="rbg"), images, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    return jax.jit(init)()


# ----------------------------------------------------------------------------------------------
# Checkpoints of finished runs


def restore_state(workdir: str | Path, config: ml_collections.ConfigDict | None = None, *, image_size: int = 32
                  ) -> tuple[ml_collections.ConfigDict, nn.Module, int, TrainState]:
    """The latest checkpoint of a run (read-only), with its config, model and step.

    The state's template is traced abstractly (``jax.eval_shape``: nothing is initialised or
    compiled); the optimizer only shapes its ``opt_state``, and step counts do not change that.

    Args:
      workdir: a ``classify.main`` run directory (config.json, checkpoints/).
      config: the run's config; default: ``workdir/config.json``.
      image_size: side of the template's input images (the models' parameters do not depend on it).

    Returns:
      ``(config, model, step, state)``: ``step`` is the checkpoint's.

    Raises:
      FileNotFoundError: no config.json or no checkpoint in ``workdir``.
      sympad.train.checkpoint.CheckpointError: the checkpoint is corrupt or does not match the config.
    """
    config = config if config is not None else read_config(workdir)
    model = create_model(config)
    tx = create_optimizer(config, total_steps=2, steps_per_epoch=1)
    template = jax.eval_shape(lambda: create_train_state(model, tx, seed=0, image_size=image_size))
    step, state = loop.restore_latest(checkpoint_dir(workdir), template)
    return config, model, step, state

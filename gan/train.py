"""GAN training: one jit-compiled step = ``n_critic`` discriminator updates + 1 generator update.

Reads top-down: create_models, create_optimizers, TrainState/create_train_state, train_step,
train_and_evaluate. The paper's protocol (section 4.5, following compare_gan):
non-saturating loss without gradient penalty, Adam(2e-4, 0.5, 0.999), batch 64, n_critic 5,
spectral norm in D, no normalization in G.

Randomness is a pure function of ``(config.seed, step)``: the latents of train step ``s`` come from
``fold_in(state.key, s)`` and its real batches are data steps ``s * n_critic + i`` of
``sympad.data.get_batch``, so a run interrupted and resumed from a checkpoint follows exactly the
same trajectory as an uninterrupted one. The class labels of generated images (``config.conditional``)
and the DiffAugment draws (``config.diffaugment``) come from their own sub-stream of the same key,
which runs without either never touch: switching both off gives today's unconditional step bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

import sympad
from gan import diffaugment, losses, models, sampling
from sympad.train import data as sdata
from sympad.train import loop
from sympad.train.config import (
    check_bool,
    check_choice,
    check_data,
    check_int,
    check_number,
    check_str,
    validate_common,
    write_config,
)
from sympad.train.mesh import batch_sharded
from sympad.train.metrics import MetricWriter, image_grid, save_image_grid

__all__ = [
    "StepConfig",
    "TrainState",
    "create_models",
    "create_optimizers",
    "create_train_state",
    "generator_variables",
    "load_config",
    "model_summary",
    "restore_state",
    "train_and_evaluate",
    "train_step",
    "validate",
]

# Offsets for fold_in on the root key: one independent stream per purpose.
_INIT_STREAM, _TRAIN_STREAM, _DATA_STREAM, _GRID_STREAM = 0, 1, 2, 3
# fold_in offset, on a train step's key, of the sub-stream for fake labels and DiffAugment; far above
# the latents' offsets 0..n_critic, so those stay what they were before labels and augmentation existed.
_AUX_STREAM = 1 << 20


# ----------------------------------------------------------------------------------------------
# Models and optimizers


def _channels(value: Any) -> tuple[int, ...] | None:
    """A config's channel override ((), [], '' or None: the architecture's own)."""
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(","))
    return tuple(int(v) for v in value)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Classes the models condition on: 0 for an unconditional run, else ``config.num_classes``.

    Raises:
      ValueError: a conditional config whose ``num_classes`` is not resolved yet (training sets it
        from the dataset; a finished run's config.json records it).
    """
    if not config.get("conditional", False):
        return 0
    if int(config.num_classes) < 2:
        raise ValueError(f"config.num_classes={config.num_classes!r}: a conditional run needs >= 2 classes "
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
      ValueError: for an unknown arch (or any invalid field, when the models are built).
    """
    if config.arch not in models.ARCHS:
        raise ValueError(f"config.arch must be one of {tuple(models.ARCHS)}, got {config.arch!r}")
    make_g, make_d, _, _ = models.ARCHS[config.arch]
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
    if _channels(config.get("g_channels")):
        g_kwargs["channels"] = _channels(config.g_channels)
    if config.get("bottom_size", 0):
        g_kwargs["bottom_size"] = int(config.bottom_size)
    if _channels(config.get("d_channels")):
        d_kwargs["channels"] = _channels(config.d_channels)
        downsample = _channels(config.get("d_downsample"))
        if downsample is None:
            raise ValueError("config.d_downsample must be given with config.d_channels (one 0/1 per block)")
        d_kwargs["downsample"] = tuple(bool(v) for v in downsample)
    generator, discriminator = make_g(**g_kwargs), make_d(**d_kwargs)
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
    raise ValueError(f"config.optimizer.schedule must be 'constant' or 'linear', got {schedule!r}")


@functools.lru_cache(maxsize=None)
def _adam_pair(lr: float, b1: float, b2: float, schedule: str, g_updates: int, d_updates: int
               ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    # Cached: equal hyperparameters give the same (hashable) objects, so the jitted step, which
    # takes them as static arguments, is compiled once per process (tests, repeated runs).
    adam = functools.partial(optax.adam, b1=b1, b2=b2)
    return adam(_schedule(lr, schedule, g_updates)), adam(_schedule(lr, schedule, d_updates))


def create_optimizers(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                                   optax.GradientTransformation]:
    """Adam for G and D (``config.optimizer``); 'linear' reaches 0 at each one's last update of the run."""
    opt = config.optimizer
    _schedule(opt.learning_rate, opt.schedule, 1)  # Validates the schedule.
    g_updates = config.num_train_steps if opt.schedule != "constant" else 0
    return _adam_pair(float(opt.learning_rate), float(opt.b1), float(opt.b2), str(opt.schedule),
                      int(g_updates), int(g_updates * config.n_critic))


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


def create_train_state(config: ml_collections.ConfigDict, generator: models.Generator,
                       discriminator: models.Discriminator, g_tx: optax.GradientTransformation,
                       d_tx: optax.GradientTransformation) -> TrainState:
    """Initial state from ``config.seed``."""
    root = jax.random.key(config.seed)
    g_key, d_key = jax.random.split(jax.random.fold_in(root, _INIT_STREAM))
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
        key=jax.random.fold_in(root, _TRAIN_STREAM),
    )


def _g_variables(params: Any, stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


def generator_variables(state: TrainState, *, use_ema: bool = True) -> dict[str, Any]:
    """G's variables for sampling: the EMA weights when kept (and ``use_ema``), else the live ones.

    BatchNorm running averages (norm='batch') are those of the live weights in both cases.
    """
    params = state.ema_params if (use_ema and state.ema_params is not None) else state.g_params
    return _g_variables(params, state.g_stats)


# ----------------------------------------------------------------------------------------------
# The training step


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static hyperparameters of :func:`train_step` (hashable: a jit static argument)."""

    batch_size: int
    n_critic: int
    z_dim: int
    loss: str = "ns"
    ema_decay: float = 0.0
    unroll: bool = True  # unroll the D updates instead of a lax.scan (XLA:CPU runs loops slowly)
    # Part of the jit cache key: the formulation is fixed at tracing, so a process that trains
    # twice with different ones (tests) must not reuse the first compiled step.
    conv_implementation: str = "auto"
    num_classes: int = 0  # > 0: conditional models, the real batches' labels feed D
    diffaugment: tuple[str, ...] = ()  # gan.diffaugment policies, on every image D sees

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
        return cls(batch_size=int(config.batch_size), n_critic=int(config.n_critic), z_dim=int(config.z_dim),
                   loss=str(config.loss), ema_decay=float(config.ema_decay), unroll=bool(config.unroll_d_steps),
                   conv_implementation=str(config.conv_implementation), num_classes=num_classes(config),
                   diffaugment=diffaugment.parse_policy(config.get("diffaugment", "")))


def _sigmoid_mean(logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.sigmoid(logits))


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=(
    "generator", "discriminator", "g_tx", "d_tx", "config", "batch_sharding", "host_batches"))
def train_step(state: TrainState, dataset: jax.Array, data_key: jax.Array | None = None, *,
               labels: jax.Array | None = None, generator: models.Generator, discriminator: models.Discriminator,
               g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, config: StepConfig,
               batch_sharding: Any = None, host_batches: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
    """``n_critic`` D updates then one G update, one jit-compiled program; ``state`` is donated.

    The D updates are a ``lax.scan`` (``config.unroll=False``) or the same body unrolled (default).
    The C*sp convs use ``config.conv_implementation`` (``sympad.use_implementation``).
    Conditional models (``config.num_classes > 0``): D sees real images with their labels and
    generated ones with the uniformly drawn classes they were generated for. DiffAugment
    (``config.diffaugment``): the same policy on everything D sees, real and generated, in D's
    updates and in G's (gradients reach G through it).

    Args:
      state: current state.
      dataset: on-device mode: the whole split, uint8 (N, H, W, 3); batch ``i`` of this step is
        ``get_batch(dataset, None, data_key, step * n_critic + i)``. Host mode
        (``host_batches=True``): this step's batches, uint8 (n_critic, B, H, W, 3).
      data_key: the input pipeline's key (on-device mode).
      labels: conditional models only: the split's int labels (N,) on the device, or this step's
        (n_critic, B) in host mode.
      generator, discriminator, g_tx, d_tx: from create_models / create_optimizers.
      config: static hyperparameters.
      batch_sharding: sharding of the batch axis (data parallel over the mesh), or None.
      host_batches: see ``dataset``.

    Returns:
      The new state and scalar metrics: d_loss, g_loss, d_real / d_fake (mean sigmoid of D's
      logits on real / generated images during the D updates), d_real_logit, d_fake_logit,
      g_d_fake (mean sigmoid on the G update's samples), d_grad_norm, g_grad_norm.
    """
    with sympad.use_implementation(config.conv_implementation):
        return _train_step(state, dataset, data_key, labels, generator=generator, discriminator=discriminator,
                           g_tx=g_tx, d_tx=d_tx, config=config, batch_sharding=batch_sharding,
                           host_batches=host_batches)


def _train_step(state: TrainState, dataset: jax.Array, data_key: jax.Array | None, labels: jax.Array | None, *,
                generator: models.Generator, discriminator: models.Discriminator,
                g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, config: StepConfig,
                batch_sharding: Any, host_batches: bool) -> tuple[TrainState, dict[str, jax.Array]]:
    batch_size, n_critic, z_dim = config.batch_size, config.n_critic, config.z_dim
    loss, ema_decay, classes = config.loss, config.ema_decay, config.num_classes
    step_key = jax.random.fold_in(state.key, state.step)
    aux_key = jax.random.fold_in(step_key, _AUX_STREAM)

    def constrain(x: jax.Array | None) -> jax.Array | None:
        return x if batch_sharding is None or x is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    def latents(i: jax.Array) -> jax.Array:
        return constrain(jax.random.normal(jax.random.fold_in(step_key, i), (batch_size, z_dim)))

    def fake_labels(i: jax.Array) -> jax.Array | None:
        # The classes update i generates, uniform over the classes (None: unconditional).
        if not classes:
            return None
        return constrain(jax.random.randint(jax.random.fold_in(aux_key, 2 * i), (batch_size,), 0, classes))

    def augment(images: jax.Array, i: jax.Array) -> jax.Array:
        # One draw per image: real and generated images of a D update get independent parameters.
        if not config.diffaugment:
            return images
        return diffaugment.diff_augment(images, jax.random.fold_in(aux_key, 2 * i + 1), policy=config.diffaugment)

    def join(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
        return None if a is None else jnp.concatenate([a, b])

    def generate_train(g_params: Any, z: jax.Array, y: jax.Array | None) -> tuple[jax.Array, Any]:
        # Batch statistics in training mode; the updated BN averages are kept from G steps only.
        if state.g_stats:
            images, new = generator.apply(_g_variables(g_params, state.g_stats), z, y, train=True,
                                          mutable=["batch_stats"])
            return images, new["batch_stats"]
        return generator.apply({"params": g_params}, z, y, train=True), state.g_stats

    def d_update(carry: tuple[Any, Any, Any], i: jax.Array) -> tuple[tuple[Any, Any, Any], dict[str, jax.Array]]:
        d_params, d_stats, d_opt_state = carry
        if host_batches:
            real, real_y = sdata.to_float(dataset[i]), labels[i] if classes else None
        else:
            real, real_y = sdata.get_batch(dataset, labels if classes else None, data_key, state.step * n_critic + i,
                                           batch_size=batch_size)
        real, real_y, fake_y = constrain(real), constrain(real_y), fake_labels(i)
        fake = jax.lax.stop_gradient(generate_train(state.g_params, latents(i), fake_y)[0])
        images, images_y = augment(jnp.concatenate([real, fake]), i), join(real_y, fake_y)

        def d_loss_fn(d_params: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
            # One D call on real+fake, so the power iteration advances once per D update.
            logits, new = discriminator.apply({"params": d_params, "batch_stats": d_stats}, images, images_y,
                                              update_stats=True, mutable=["batch_stats"])
            real_logits, fake_logits = logits[:batch_size], logits[batch_size:]
            value = losses.discriminator_loss(real_logits, fake_logits, loss=loss)
            return value, (new["batch_stats"], real_logits, fake_logits)

        (d_loss, (d_stats, real_logits, fake_logits)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
        d_params = optax.apply_updates(d_params, updates)
        metrics = dict(d_loss=d_loss, d_real=_sigmoid_mean(real_logits), d_fake=_sigmoid_mean(fake_logits),
                       d_real_logit=jnp.mean(real_logits), d_fake_logit=jnp.mean(fake_logits),
                       d_grad_norm=optax.tree.norm(grads))
        return (d_params, d_stats, d_opt_state), metrics

    carry = (state.d_params, state.d_stats, state.d_opt_state)
    if config.unroll:
        # Unrolled by default: XLA:CPU runs convolutions inside a while loop (a rolled lax.scan) about
        # 50x slower than the same code unrolled (24.8 s vs 0.47 s for the 5 D updates of the
        # runlocal model on 2 cores). A Python loop rather than scan(unroll=True), which still emits
        # a while loop when n_critic == 1.
        per_update = []
        for i in range(n_critic):
            carry, metrics = d_update(carry, jnp.asarray(i))
            per_update.append(metrics)
        d_metrics = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_update)
    else:
        carry, d_metrics = jax.lax.scan(d_update, carry, jnp.arange(n_critic))
    d_params, d_stats, d_opt_state = carry

    def g_loss_fn(g_params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        g_index = jnp.asarray(n_critic)
        fake_y = fake_labels(g_index)
        fake, g_stats = generate_train(g_params, latents(g_index), fake_y)
        # update_stats=False: the spectral-norm state advances in D updates only.
        logits = discriminator.apply({"params": d_params, "batch_stats": d_stats}, augment(fake, g_index), fake_y,
                                     update_stats=False)
        return losses.generator_loss(logits, loss=loss), (g_stats, logits)

    (g_loss, (g_stats, g_logits)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, g_params)

    new_state = state.replace(step=state.step + 1, g_params=g_params, g_stats=g_stats, d_params=d_params,
                              d_stats=d_stats, g_opt_state=g_opt_state, d_opt_state=d_opt_state,
                              ema_params=ema_params)
    metrics = {name: jnp.mean(values) for name, values in d_metrics.items()}
    metrics.update(g_loss=g_loss, g_d_fake=_sigmoid_mean(g_logits), g_grad_norm=optax.tree.norm(g_grads))
    return new_state, metrics


# ----------------------------------------------------------------------------------------------
# Sampling


def model_summary(config: ml_collections.ConfigDict, generator: models.Generator,
                  discriminator: models.Discriminator) -> dict[str, Any]:
    """Parameter counts (from shapes only) and the resolved architecture, for model_summary.json."""
    size = output_size(generator)
    labels = jnp.zeros((1,), jnp.int32) if generator.num_classes else None
    g_shapes = jax.eval_shape(lambda: generator.init(jax.random.key(0), jnp.zeros((1, config.z_dim)), labels,
                                                     train=False))
    d_shapes = jax.eval_shape(lambda: discriminator.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), labels))
    paper = models.ARCHS[config.arch][3]
    return {
        "arch": config.arch,
        "kernel": config.kernel,
        "image_size": size,
        "num_classes": generator.num_classes,  # 0: unconditional
        "diffaugment": list(diffaugment.parse_policy(config.get("diffaugment", ""))),
        "generator": {
            "params": models.count_params(g_shapes["params"]),
            "widths": list(generator.widths),
            "width_multiplier": generator.widths[0] / generator.channels[0],
            "norm": generator.norm,
            "class_embedding": generator.class_embedding if generator.num_classes else None,
            "upsample": generator.upsample,
            "paper_params_approx": paper[0],
        },
        "discriminator": {
            "params": models.count_params(d_shapes["params"]),
            "channels": list(discriminator.channels),
            "kernel": models.DISCRIMINATOR_KIND,
            "spectral_norm": True,
            "projection": bool(discriminator.num_classes),
            "paper_params_approx": paper[1],
        },
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints and configs of finished runs


#: Keys of runs written before the suites shared one vocabulary -> their names now.
_RENAMED = {"max_to_keep": "max_checkpoints", "sp_implementation": "conv_implementation"}


def _upgrade(fields: dict[str, Any]) -> dict[str, Any]:
    """An older run's config.json in today's keys, so its checkpoints still restore."""
    fields = {_RENAMED.get(k, k): v for k, v in fields.items()}
    if "optimizer" not in fields and "lr" in fields:
        fields["optimizer"] = dict(learning_rate=fields.pop("lr"), b1=fields.pop("b1"), b2=fields.pop("b2"),
                                   schedule={"none": "constant"}.get(fields.pop("lr_decay"), "linear"))
    fields.setdefault("conv_implementation", "auto")
    for key, value in dict(conditional=False, num_classes=0, class_embedding="per_class", diffaugment="").items():
        fields.setdefault(key, value)
    return fields


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run wrote to ``workdir/config.json`` (older key names upgraded)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a gan.main workdir?")
    return ml_collections.ConfigDict(_upgrade(json.loads(path.read_text())))


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def restore_state(workdir: str | Path, config: ml_collections.ConfigDict | None = None
                  ) -> tuple[ml_collections.ConfigDict, models.Generator, TrainState]:
    """The latest checkpoint of a run (read-only), with its config and generator.

    Raises:
      FileNotFoundError: no config.json or no checkpoint in ``workdir``.
      sympad.train.checkpoint.CheckpointError: the checkpoint is corrupt or does not match the config.
    """
    config = config if config is not None else load_config(workdir)
    generator, discriminator = create_models(config)
    g_tx, d_tx = create_optimizers(config)
    template = create_train_state(config, generator, discriminator, g_tx, d_tx)
    _, state = loop.restore_latest(checkpoint_dir(workdir), template)
    return config, generator, state


# ----------------------------------------------------------------------------------------------
# Training loop


def _load_data(config: ml_collections.ConfigDict, size: int) -> sdata.Dataset:
    dataset = sdata.load(config.data, "train", image_size=size, max_examples=config.max_examples or None,
                         allow_corrupt=bool(config.get("allow_corrupt", False)))
    if dataset.skipped:
        logging.warning("config.allow_corrupt: skipped %d undecodable files of %s (data/skipped in metrics.jsonl)",
                        len(dataset.skipped), config.data)
    if dataset.images.shape[1:3] != (size, size):
        raise ValueError(f"config.data={config.data!r} has {dataset.images.shape[1:3]} images; the generator makes "
                         f"{size}x{size} (set image_size/bottom_size/g_channels to match)")
    return dataset


def _build_evaluator(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], dict[str, float]] | None:
    """FID/IS through gan.metrics when it is installed and eval_every != 0; else None (logged)."""
    if config.eval_every == 0:
        return None
    try:
        from gan.metrics import build_evaluator
    except ImportError as e:
        logging.warning("eval_every=%d but gan.metrics is not importable (%s): training without FID/IS.",
                        config.eval_every, e)
        return None
    eval_config = ml_collections.ConfigDict(config.to_dict())
    if "eval" in eval_config and not eval_config.eval.get("reference_dataset"):
        eval_config.eval.reference_dataset = config.data  # the evaluator's default is CIFAR-10
    return build_evaluator(eval_config)


def _digits_scorer(config: ml_collections.ConfigDict) -> Callable[..., dict[str, float]] | None:
    """The digits demo's quality measure (gan.digits_quality) when training on digits.

    Conditional runs pass the requested labels too, which adds ``digits/class_agreement``.
    """
    if config.data != "digits" or config.digits_quality_samples <= 0:
        return None
    from gan import digits_quality

    classifier = digits_quality.fit_classifier()

    def scorer(images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        return {f"digits/{k}": v for k, v in digits_quality.score(images, classifier, labels).items()}

    return scorer


def _resolve_classes(config: ml_collections.ConfigDict, dataset: sdata.Dataset, workdir: Path) -> None:
    """Sets ``config.num_classes`` of a conditional run from the data (and re-writes config.json).

    Raises:
      ValueError: the data has no labels, or more classes than ``config.num_classes`` allows.
    """
    if not config.conditional:
        return
    if dataset.labels is None or not dataset.num_classes:
        raise ValueError(f"config.conditional=True needs labelled data; config.data={config.data!r} has no labels "
                         "(an image folder needs one subfolder per class)")
    if config.num_classes == 0:
        config.num_classes = int(dataset.num_classes)
        write_config(config, workdir)  # sampling and export rebuild the models from config.json
    elif int(dataset.labels.max()) >= config.num_classes:
        raise ValueError(f"config.num_classes={config.num_classes}: config.data={config.data!r} has "
                         f"{dataset.num_classes} classes (0 = the data's)")


#: config.optimizer.schedule values (see _schedule).
SCHEDULES = ("constant", "linear")
#: config.eval.feature_network values (gan.metrics.features).
FEATURE_NETWORKS = ("auto", "inception", "offline")


def _check_channels(config: ml_collections.ConfigDict, name: str) -> tuple[int, ...] | None:
    try:
        channels = _channels(config.get(name))
    except (TypeError, ValueError):
        channels = ()  # not ints: reported below
    if channels == () or (channels is not None and any(c < 1 for c in channels)):
        raise ValueError(f"config.{name}={config.get(name)!r}: must be () (the architecture's) or positive ints, "
                         "one per block, e.g. (32, 32, 32, 32)")
    return channels


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a GAN config before anything is loaded or compiled.

    The shared rules (``sympad.train.config.validate_common``: loop fields, seed, data, batch
    size vs the devices, steps, learning rate, schedule) and the suite's own: enums (arch, norm,
    upsample, weight_init, loss, eval.protocol, eval.feature_network), ranges (n_critic >= 1,
    0 <= ema_decay < 1, Adam's betas in [0, 1), z_dim >= 1, ...) and the architecture's
    cross-field rules (d_downsample one 0/1 per d_channels entry; the image side divisible by
    D's downsampling).

    Raises:
      ValueError: naming the first offending ``config.<field>`` and its allowed values.
    """
    validate_common(config, schedules=SCHEDULES, min_steps=1)
    check_choice(config, "arch", tuple(models.ARCHS))
    check_choice(config, "norm", models.NORMS)
    check_choice(config, "upsample", models.UPSAMPLES)
    check_choice(config, "weight_init", models.INITS)
    check_choice(config, "loss", losses.LOSSES)
    check_number(config, "width_multiplier")  # <= 0: the kind's default
    check_int(config, "z_dim", min_value=1)
    check_int(config, "bottom_size", min_value=0)
    check_int(config, "max_examples", min_value=0)
    check_number(config, "optimizer.b1", min_value=0.0, max_value=1.0, max_open=True)
    check_number(config, "optimizer.b2", min_value=0.0, max_value=1.0, max_open=True)
    check_int(config, "n_critic", min_value=1)
    check_bool(config, "unroll_d_steps")
    check_number(config, "ema_decay", min_value=0.0, max_value=1.0, max_open=True)
    check_int(config, "sample_every")
    check_int(config, "num_grid", min_value=1)
    check_int(config, "digits_quality_samples", min_value=0)
    check_bool(config, "conditional")
    check_int(config, "num_classes", min_value=0)
    check_choice(config, "class_embedding", models.CLASS_EMBEDDINGS)
    policy = check_str(config, "diffaugment")
    try:
        diffaugment.parse_policy(policy)
    except ValueError as e:
        raise ValueError(f"config.diffaugment={policy!r}: {e}") from None
    if config.conditional and config.norm != "batch":
        raise ValueError(f"config.norm={config.norm!r}: a conditional generator needs 'batch' "
                         "(its class-conditional BatchNorm)")
    if config.conditional and config.num_classes == 1:
        raise ValueError("config.num_classes=1: a conditional run needs >= 2 classes (0 = the data's)")
    g_channels = _check_channels(config, "g_channels")
    d_channels = _check_channels(config, "d_channels")
    downsample = config.get("d_downsample")
    if d_channels is not None:
        if (isinstance(downsample, str) or not hasattr(downsample, "__len__")
                or len(downsample) != len(d_channels) or any(v not in (0, 1) for v in downsample)):
            raise ValueError(f"config.d_downsample={downsample!r}: must be one 0/1 per config.d_channels entry "
                             f"({len(d_channels)} of them)")
    elif downsample:
        raise ValueError(f"config.d_downsample={downsample!r}: only with config.d_channels; must be () without it")
    if "eval" in config:
        check_int(config, "eval.num_samples", min_value=0)
        check_int(config, "eval.num_reference", min_value=0)
        check_choice(config, "eval.feature_network", FEATURE_NETWORKS)
        weights = check_str(config, "eval.inception_weights")
        if weights and config.eval_every != 0 and not Path(weights).expanduser().is_file():
            raise ValueError(f"config.eval.inception_weights={weights!r}: no such file ('' for the default: "
                             "Inception when its weights are found, else the offline network)")
        check_str(config, "eval.reference_dataset")
        if config.eval.reference_dataset:
            check_data(config, "eval.reference_dataset")
        try:
            from gan.metrics.evaluator import PROTOCOLS
        except ImportError:  # the metrics' extra is not installed: evaluation is skipped anyway
            PROTOCOLS = {}
        if PROTOCOLS:
            check_choice(config, "eval.protocol", tuple(PROTOCOLS))
    # The architecture: builds the (unbound) modules, which compiles nothing.
    generator, _ = create_models(config, classes=(config.num_classes or 2) if config.conditional else 0)
    size = output_size(generator)
    if g_channels is not None and len(g_channels) < 2:
        raise ValueError(f"config.g_channels={config.g_channels!r}: needs at least 2 entries (one per resolution)")
    n_down = sum(int(v) for v in (downsample or ())) if d_channels is not None else None
    if n_down is not None and size % 2**n_down:
        raise ValueError(f"config.d_downsample={downsample!r}: halves the {size}x{size} images {n_down} times; "
                         f"the side must stay a whole number (fewer 1s, or change bottom_size/g_channels)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from ``workdir/checkpoints`` when there is a checkpoint) and returns the state.

    Runs ``sympad.train.loop.train`` with GAN pieces: the state of create_train_state, train_step
    on the split on the device (or n_critic host batches per step), and two hooks: sample grids
    (+ the digits scores) every ``config.sample_every`` steps and FID/IS every
    ``config.eval_every`` steps (none when 0). With evaluation, the checkpoint of the lowest FID
    (``eval/fid``) is kept besides the latest ``config.max_checkpoints``. The config is validated
    first (:func:`validate`).
    """
    validate(config)  # everything, before any data is loaded or anything compiled
    mesh = loop.checked_mesh(config.batch_size)
    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)

    # The training split (a conditional run learns its number of classes from it).
    size = output_size(create_models(config, classes=0)[0])
    dataset = _load_data(config, size)
    _resolve_classes(config, dataset, workdir_path)
    classes = num_classes(config)

    # Models, optimizers, the step.
    generator, discriminator = create_models(config)
    summary = model_summary(config, generator, discriminator)
    if jax.process_index() == 0:
        (workdir_path / "model_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("G %s params (widths %s), D %s params", f"{summary['generator']['params']:,}",
                 summary["generator"]["widths"], f"{summary['discriminator']['params']:,}")
    g_tx, d_tx = create_optimizers(config)
    step_fn = functools.partial(
        train_step, generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx,
        config=StepConfig.from_config(config), batch_sharding=batch_sharded(mesh))

    # Input: data step s * n_critic + i feeds D update i of train step s, on the device or from the host.
    root = jax.random.key(config.seed)
    data_key = jax.random.fold_in(root, _DATA_STREAM)
    n_critic = int(config.n_critic)

    def host_step(state: TrainState, loader: sdata.HostLoader) -> tuple[TrainState, dict[str, jax.Array]]:
        images, labels = zip(*(next(loader) for _ in range(n_critic)))
        return step_fn(state, jnp.stack(images), labels=jnp.stack(labels) if classes else None, host_batches=True)

    data = loop.Input(
        dataset=dataset,
        arrays="images_labels" if classes else "images",
        device_step=lambda state, images, labels=None: step_fn(state, images, data_key, labels=labels),
        host_loader=lambda start: sdata.HostLoader(dataset.images, dataset.labels if classes else None,
                                                   batch_size=config.batch_size, key=data_key,
                                                   start_step=start * n_critic,
                                                   # several processes: each loads its own rows
                                                   sharding=batch_sharded(mesh) if jax.process_count() > 1 else None),
        host_step=host_step,
    )

    # Hooks: sample grids (and the digits scores), FID/IS. A conditional grid has one row per class,
    # the same latents in every row (so a column is one z across the classes).
    grid_key = jax.random.fold_in(root, _GRID_STREAM)
    if classes:
        per_row = max(1, int(config.num_grid) // classes)
        grid_z = jnp.tile(jax.random.normal(grid_key, (per_row, config.z_dim)), (classes, 1))
        grid_labels, grid_cols = jnp.repeat(jnp.arange(classes, dtype=jnp.int32), per_row), per_row
    else:
        grid_z, grid_labels, grid_cols = jax.random.normal(grid_key, (config.num_grid, config.z_dim)), None, None
    digits_scorer = _digits_scorer(config)

    def sample_labels(num: int) -> np.ndarray | None:
        # The classes generate_samples gives a conditional G by default (sample i: i % classes).
        return sampling.class_labels(num, classes) if classes else None

    def save_samples(step: int, state: TrainState, writer: MetricWriter) -> dict[str, float]:
        variables = generator_variables(state, use_ema=True)
        grid = np.asarray(sampling.generate_images(generator, variables, grid_z, grid_labels))
        if jax.process_index() == 0:  # every process has the grid; one writes it
            save_image_grid(grid, workdir_path / f"samples_{step:07d}.png", ncols=grid_cols)
        writer.write_image(step, "samples", image_grid(grid, ncols=grid_cols))
        if digits_scorer is None:
            return {}
        num = config.digits_quality_samples
        samples = sampling.generate_samples(generator, variables, num=num, seed=config.seed + 1, batch_size=256,
                                            mesh=mesh)
        return digits_scorer(samples, sample_labels(num))

    hooks = [loop.Hook(config.sample_every, save_samples, "sample_every")]
    evaluator = _build_evaluator(config)
    if evaluator is not None:
        def evaluate(step: int, state: TrainState, writer: MetricWriter) -> dict[str, float]:
            num = _eval_num_samples(config, evaluator)
            samples = sampling.generate_samples(generator, generator_variables(state, use_ema=True), num=num,
                                                seed=config.seed + 1, batch_size=256, mesh=mesh)
            # Conditional runs: overall and intra-class (per class) scores through the same network.
            scores = {f"eval/{k}": v for k, v in evaluator(samples, labels=sample_labels(num)).items()}
            # One name for the best-checkpoint rule, whichever feature network computed the FID.
            fids = [v for k, v in scores.items()
                    if k.startswith("eval/fid_") and not k.startswith(("eval/fid_intra", "eval/fid_class"))]
            return {**scores, "eval/fid": fids[0]} if fids else scores

        hooks.append(loop.Hook(config.eval_every, evaluate, "eval_every"))

    # An epoch: every training image seen once by D (n_critic batches per train step).
    per_epoch = max(1, len(dataset) // (int(config.batch_size) * n_critic))
    state, _ = loop.train(
        config, workdir, mesh=mesh, data=data, total_steps=int(config.num_train_steps), steps_per_epoch=per_epoch,
        init_state=lambda: create_train_state(config, generator, discriminator, g_tx, d_tx),
        hooks=hooks, summarize=lambda step, means: {**means, "d_steps": step * n_critic},
        progress_keys=("d_loss", "g_loss"), desc=f"gan {config.kernel}",
        # A step-0 record only when files were skipped: a clean run's metrics start at step 1.
        first_record={"data/skipped": len(dataset.skipped)} if dataset.skipped else None,
        # With evaluation, the lowest FID's checkpoint is kept besides the latest ones.
        best_metric="eval/fid" if evaluator is not None else None)
    return state


def _eval_num_samples(config: ml_collections.ConfigDict, evaluator: Any) -> int:
    settings = getattr(evaluator, "settings", None)
    num = getattr(settings, "num_samples", 0) or (config.eval.get("num_samples", 0) if "eval" in config else 0)
    return int(num or 10_000)

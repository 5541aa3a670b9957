"""Training and evaluation of the classification models (paper sections 4.1-4.3, 4.5).

Reads top-down: model and optimizer construction, the loss, one train step,
evaluation, then :func:`train_and_evaluate`, the loop ``classify.main`` runs.

Defaults (``configs/classify/common.py``) follow the paper: SGD with
momentum 0.9 from learning rate 0.1 with cosine decay (piecewise-constant for
the DenseNet configs, paper 4.5), weight decay 1e-4, batch 64, 300 epochs (600
for Table 2), pad-4 crop + flip, optional mixup and cutout; the test split is
evaluated every epoch (top-1 error and loss).

Weight decay (coupled L2, added to the gradient before momentum as in the
authors' TensorFlow code and PyTorch's SGD) applies to conv and dense kernels
only: not to depthwise kernels (paper 4.5; recognised by their module name,
``*depthwise*``), and not to BatchNorm scales/offsets or biases (the usual
choice: they do not set the scale of the function, so decaying them only
fights BatchNorm).

Data: the whole split lives on the accelerator and every step gathers and
augments its batch inside one jitted function (``sympad.train.data.get_batch``) when
``sympad.train.data.fits_on_device`` (and ``config.host_data`` is False); otherwise
``sympad.train.data.HostLoader`` streams uint8 batches and ``sympad.train.data.prepare_batch``
augments them on device with the same random stream. Either way a step's batch depends only on
``(seed, step)``, so a resumed run continues exactly.

Model initialisation uses the ``'rbg'`` PRNG: the weights are as random, and
on CPU the init compiles ~6x faster than with threefry (flax derives one
key per parameter; 12 s vs 2 s for a ResNet-8). The data, mixup and dropout
streams stay on the default PRNG so batches are reproducible everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import linen as nn

import sympad
from classify import models
from sympad.train import data as sdata
from sympad.train import loop, rng
from sympad.train.config import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_str,
    validate_common,
)
from sympad.train.errors import ConfigError
from sympad.train.mesh import batch_sharded, replicate
from sympad.train.metrics import check_finite

__all__ = [
    "TrainState",
    "create_model",
    "create_optimizer",
    "create_train_state",
    "cross_entropy",
    "evaluate",
    "learning_rate_schedule",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "validate",
    "weight_decay_mask",
]

# ----------------------------------------------------------------------------
# Model and optimizer.
# ----------------------------------------------------------------------------


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


def learning_rate_schedule(config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
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


def create_optimizer(config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum and masked coupled weight decay (see the module docstring)."""
    opt = config.optimizer
    schedule = learning_rate_schedule(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    return optax.chain(
        optax.add_decayed_weights(float(opt.weight_decay), mask=weight_decay_mask),
        optax.sgd(schedule, momentum=float(opt.momentum), nesterov=bool(opt.nesterov)),
    )


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


# ----------------------------------------------------------------------------
# Loss, train step, eval step.
# ----------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; ``targets`` are (B,) int labels or (B, K) soft labels."""
    if targets.ndim == 1:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


#: The run's default-PRNG streams (``sympad.train.rng.stream``), in their fixed order.
STREAMS = ("data", "mixup", "dropout")


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Callable[..., tuple[TrainState, dict[str, jax.Array]]], Callable[..., tuple[TrainState, dict[str, jax.Array]]]]:
    """The two jitted train steps: on-device data and host-loaded batches.

    Returns:
      ``(step_on_device, step_on_batch)``:
      ``step_on_device(state, images, labels)`` takes the whole split on the
      device (uint8 ``(N, H, W, 3)``, int ``(N,)``) and gathers batch
      ``state.step`` itself; ``step_on_batch(state, images, labels)`` takes one
      uint8 batch ``(B, H, W, 3)``, ``(B,)`` from ``HostLoader``. Both return
      the new state (the input state is donated) and scalar metrics
      ``loss``, ``error`` (top-1 vs the un-mixed labels) and ``grad_norm``.
    """
    seed = int(config.seed)
    data_key, mixup_key, dropout_key = (rng.stream(seed, name, STREAMS) for name in STREAMS)
    batch_size = int(config.batch_size)
    augment_kwargs = dict(
        augment=bool(config.augment),
        crop_pad=int(config.input.crop_pad),
        flip=bool(config.input.flip),
        cutout_size=int(config.cutout),
    )
    alpha = float(config.mixup_alpha)
    sharding = batch_sharded(mesh) if mesh is not None else None

    def update(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        if sharding is not None:
            images = jax.lax.with_sharding_constraint(images, sharding)
            labels = jax.lax.with_sharding_constraint(labels, sharding)
        targets = jax.nn.one_hot(labels, num_classes)
        if alpha > 0:
            images, targets = sdata.mixup(images, targets, jax.random.fold_in(mixup_key, state.step), alpha=alpha)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(dropout_key, state.step)},
            )
            return cross_entropy(logits, targets), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        step_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, step_updates),
            batch_stats=updates["batch_stats"],
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "error": jnp.mean(jnp.argmax(logits, -1) != labels),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    def step_on_device(state: TrainState, images: jax.Array, labels: jax.Array):
        batch, batch_labels = sdata.get_batch(images, labels, data_key, state.step, batch_size=batch_size, **augment_kwargs)
        return update(state, batch, batch_labels)

    def step_on_batch(state: TrainState, images: jax.Array, labels: jax.Array):
        batch = sdata.prepare_batch(images, data_key, state.step, **augment_kwargs)
        return update(state, batch, labels.astype(jnp.int32))

    return jax.jit(step_on_device, donate_argnums=0), jax.jit(step_on_batch, donate_argnums=0)


def make_eval_step(model: nn.Module, *, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> Callable[..., dict[str, jax.Array]]:
    """Jitted ``eval_step(state, images, labels, step) -> {'loss_sum', 'correct', 'count'}``.

    ``images``/``labels`` are the whole split on the device; batch ``step``
    covers examples ``[step * batch_size, (step + 1) * batch_size)``, the last
    one padded and masked (``sympad.train.data.eval_indices``).
    """
    sharding = batch_sharded(mesh) if mesh is not None else None

    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
        idx, mask = sdata.eval_indices(step, batch_size=batch_size, num_examples=images.shape[0])
        batch = sdata.to_float(jnp.take(images, idx, axis=0))
        batch_labels = jnp.take(labels, idx, axis=0).astype(jnp.int32)
        if sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, sharding)
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels)
        correct = jnp.argmax(logits, -1) == batch_labels
        return {
            "loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(mask & correct),
            "count": jnp.sum(mask),
        }

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable[..., dict[str, jax.Array]],
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    batch_size: int,
) -> dict[str, float]:
    """Top-1 error and mean loss over every example of a split held on the device."""
    num_batches = math.ceil(images.shape[0] / batch_size)
    totals = [eval_step(state, images, labels, jnp.asarray(i, jnp.int32)) for i in range(num_batches)]
    totals = jax.device_get(totals)
    count = sum(int(t["count"]) for t in totals)
    correct = sum(int(t["correct"]) for t in totals)
    loss = sum(float(t["loss_sum"]) for t in totals)
    return {"test_error": 1.0 - correct / count, "test_loss": loss / count}


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _load_split(config: ml_collections.ConfigDict, split: str) -> sdata.Dataset:
    inp = config.input
    max_examples = int(inp.max_examples if split == "train" else inp.eval_max_examples) or None
    return sdata.load_split(config.data, split, image_size=int(inp.image_size) or None, max_examples=max_examples,
                            cache_dir=inp.cache_dir, data_dir=inp.data_dir,
                            allow_corrupt=bool(config.get("allow_corrupt", False)))


#: config.optimizer.schedule values (see learning_rate_schedule).
SCHEDULES = ("cosine", "piecewise")
#: config.model.dtype values (classify.models.create_model).
DTYPES = ("float32", "bfloat16", "float16")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a classify config before anything is loaded or compiled.

    The shared rules (``sympad.train.config.validate_common``: loop fields, seed, data, batch
    size vs the devices, steps, learning rate, schedule) and the suite's own: the model (name
    one of ``classify.models.MODELS``, num_classes >= 1, dtype, and its fields, by building the
    unbound module), the input block (sizes >= 0, crop_pad < image_size), eval_batch_size >= 1,
    num_epochs >= 1 when num_train_steps is 0, SGD's momentum in [0, 1), weight decay and warm-up
    >= 0, mixup_alpha >= 0, cutout >= 0.

    Raises:
      ConfigError: naming the first offending ``config.<field>`` and its allowed values.
    """
    validate_common(config, schedules=SCHEDULES, min_steps=0)
    check_choice(config, "model.name", tuple(sorted(models.MODELS)))
    check_int(config, "model.num_classes", min_value=1)
    if "dtype" in config.model:
        check_choice(config, "model.dtype", DTYPES)
    image_size = check_int(config, "input.image_size", min_value=0)
    check_int(config, "input.max_examples", min_value=0)
    check_int(config, "input.eval_max_examples", min_value=0)
    check_str(config, "input.cache_dir")
    check_str(config, "input.data_dir")
    crop_pad = check_int(config, "input.crop_pad", min_value=0)
    if image_size and crop_pad >= image_size:
        raise ConfigError(f"config.input.crop_pad={crop_pad}: must be < config.input.image_size={image_size}")
    check_bool(config, "input.flip")
    check_int(config, "eval_batch_size", min_value=1)
    steps = check_int(config, "num_train_steps", min_value=0)
    check_int(config, "num_epochs", min_value=1 if steps == 0 else 0)  # unused when num_train_steps > 0
    check_number(config, "optimizer.momentum", min_value=0.0, max_value=1.0, max_open=True)
    check_bool(config, "optimizer.nesterov")
    check_number(config, "optimizer.weight_decay", min_value=0.0)
    check_number(config, "optimizer.warmup_epochs", min_value=0.0)
    check_bool(config, "augment")
    check_number(config, "mixup_alpha", min_value=0.0)
    cutout = check_int(config, "cutout", min_value=0)
    if image_size and cutout > image_size:
        raise ConfigError(f"config.cutout={cutout}: must be <= config.input.image_size={image_size}")
    # The model's own fields: build it and trace its init abstractly (jax.eval_shape compiles
    # nothing), so a width or stride the architecture cannot take fails here, not after the data.
    try:
        model = create_model(config)
        size = image_size or 32
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config``'s model, evaluating on the test split; resumes from ``workdir``'s latest checkpoint.

    Runs ``sympad.train.loop.train`` with classification pieces. Writes ``workdir/metrics.jsonl``
    (+ TensorBoard), ``workdir/checkpoints/`` (latest ``config.max_checkpoints`` and the best test
    error) and ``workdir/final_metrics.json``. Raises ``sympad.train.metrics.DivergenceError`` if
    the loss or the test metrics become NaN/Inf.

    Returns:
      The last logged train metrics and the final test metrics.
    """
    validate(config)  # everything, before any data is loaded or anything compiled
    workdir_path = Path(workdir)
    mesh = loop.checked_mesh(config.batch_size)
    # Eval batches are padded and masked, so any size works: round up to split evenly over the devices.
    eval_batch = -(-int(config.eval_batch_size) // mesh.size) * mesh.size

    # Data: the test split always on the device (CIFAR: 30 MB); the train split where the loop puts it.
    train_ds = _load_split(config, "train")
    test_ds = _load_split(config, "test")
    if train_ds.labels is None or test_ds.labels is None:
        raise ConfigError(f"config.data={config.data!r} has no labels; classification needs a labelled dataset")
    num_classes = int(train_ds.num_classes)
    if num_classes != int(config.model.num_classes):
        logging.warning(
            "config.model.num_classes=%d but %s has %d classes; using %d.",
            config.model.num_classes, config.data, num_classes, num_classes,
        )
    image_size = train_ds.image_shape[0]
    skipped = len(train_ds.skipped) + len(test_ds.skipped)  # each split's warning: sdata.load_split
    per_epoch = sdata.steps_per_epoch(num_examples=len(train_ds), batch_size=int(config.batch_size))
    total_steps = int(config.num_train_steps) if int(config.num_train_steps) > 0 else int(config.num_epochs) * per_epoch

    # Model, optimizer, steps.
    model = create_model(config, num_classes=num_classes)
    tx = create_optimizer(config, total_steps=total_steps, steps_per_epoch=per_epoch)
    schedule = learning_rate_schedule(config, total_steps=total_steps, steps_per_epoch=per_epoch)
    num_params = models.count_params(model, image_size)
    logging.info("Model %s (%s): %d parameters; %d steps (%d per epoch).", config.model.name, config.kernel,
                 num_params, total_steps, per_epoch)
    step_on_device, step_on_batch = make_train_step(model, tx, config, num_classes=num_classes, mesh=mesh)
    eval_step = make_eval_step(model, batch_size=eval_batch, mesh=mesh)
    data = loop.Input(
        dataset=train_ds,
        arrays="images_labels",
        device_step=step_on_device,
        host_loader=lambda start: sdata.HostLoader(
            train_ds.images, train_ds.labels, batch_size=int(config.batch_size), key=rng.stream(int(config.seed), "data", STREAMS),
            start_step=start, num_steps=total_steps - start, sharding=batch_sharded(mesh)),
        host_step=lambda state, loader: step_on_batch(state, *next(loader)),
    )
    test_images, test_labels = replicate((test_ds.images, test_ds.labels), mesh)  # multi-process safe

    # Hook and records: the test split every config.eval_every steps; train metrics renamed train_*.
    def evaluate_test(step: int, state: TrainState, writer: Any = None) -> dict[str, float]:
        result = evaluate(eval_step, state, test_images, test_labels, batch_size=eval_batch)
        check_finite(step, result, checkpoint_dir=workdir_path / "checkpoints")
        logging.info("step %d (epoch %.2f): test error %.4f, loss %.4f", step, step / per_epoch,
                     result["test_error"], result["test_loss"])
        return {**result, "epoch": step / per_epoch}

    def summarize(step: int, means: dict[str, float]) -> dict[str, float]:
        record = {f"train_{k}" if k in ("loss", "error") else k: v for k, v in means.items()}
        return {**record, "learning_rate": float(schedule(step - 1)), "epoch": step / per_epoch}

    state, record = loop.train(
        config, workdir, mesh=mesh, data=data, total_steps=total_steps, steps_per_epoch=per_epoch,
        init_state=lambda: create_train_state(model, tx, seed=int(config.seed), image_size=image_size),
        hooks=[loop.Hook(config.eval_every, evaluate_test, "eval_every")], summarize=summarize,
        progress_keys=("train_loss", "train_error", "test_error"),
        first_record={"num_params": num_params, "steps_per_epoch": per_epoch, "data/skipped": skipped}, best_metric="test_error")
    if "test_error" not in record:  # resumed at the end: evaluate the restored state once
        with sympad.use_implementation(config.conv_implementation):
            record = {**record, **evaluate_test(int(state.step), state)}
    result = {**record, "num_params": num_params}
    if jax.process_index() == 0:
        (workdir_path / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result

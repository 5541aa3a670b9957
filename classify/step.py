"""The classify train and eval steps: cross-entropy, one SGD update, top-1 error; each one jit-compiled program.

Data: the whole split lives on the accelerator and every step gathers and augments its batch inside
the jitted step (``sympad.train.data.get_batch``); with host batches
(``sympad.train.data.HostLoader``) the step augments them on device with the same random stream
(``sympad.train.data.prepare_batch``). Either way a step's batch depends only on ``(seed, step)``,
so a resumed run continues exactly. Mixup and dropout draw from their own streams
(``classify.state.STREAMS``), folded with the step.

:func:`make_train_step` builds the jitted steps once per run, as ``gan.step.make_train_step``
does: the model, optimizer and hyperparameters are fixed for the run, so they are closed over
rather than passed (and hashed) as static arguments on every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from classify.state import STREAMS, TrainState
from sympad.train import data as sdata
from sympad.train import rng
from sympad.train.mesh import batch_sharded

__all__ = ["cross_entropy", "evaluate", "make_eval_step", "make_train_step"]

#: A step's result: the new state and its scalar metrics.
StepResult = tuple[TrainState, dict[str, jax.Array]]


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; ``targets`` are (B,) int labels or (B, K) soft labels."""
    if targets.ndim == 1:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Callable[..., StepResult], Callable[..., StepResult]]:
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

    def update(state: TrainState, images: jax.Array, labels: jax.Array) -> StepResult:
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

    def step_on_device(state: TrainState, images: jax.Array, labels: jax.Array) -> StepResult:
        batch, batch_labels = sdata.get_batch(
            images, labels, data_key, state.step, batch_size=batch_size, **augment_kwargs
        )
        return update(state, batch, batch_labels)

    def step_on_batch(state: TrainState, images: jax.Array, labels: jax.Array) -> StepResult:
        batch = sdata.prepare_batch(images, data_key, state.step, **augment_kwargs)
        return update(state, batch, labels.astype(jnp.int32))

    return jax.jit(step_on_device, donate_argnums=0), jax.jit(step_on_batch, donate_argnums=0)


def make_eval_step(
    model: nn.Module, *, batch_size: int, mesh: jax.sharding.Mesh | None = None
) -> Callable[..., dict[str, jax.Array]]:
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

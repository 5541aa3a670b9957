"""Classification training: the loop around classify.step's train step, with the test split as a hook.

Reads top-down: validate (every config field, before anything loads or compiles), then
train_and_evaluate, which builds the pieces of ``classify.state`` (model, optimizer, the initial
state) and ``classify.step`` (the jitted train and eval steps), the input (the split on the device
or a host loader) and the evaluation hook, and hands them to ``sympad.train.loop.train``
(paper sections 4.1-4.3, 4.5).

Defaults (``classify.fields.CLASSIFY_FIELDS``) follow the paper: batch 64, 300 epochs (600 for
Table 2), pad-4 crop + flip, optional mixup and cutout; the test split is evaluated every epoch
(top-1 error and loss). The optimizer and weight decay: ``classify.state``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

import sympad
from classify import models
from classify.fields import CLASSIFY_FIELDS, RULES
from classify.state import (
    STREAMS,
    TrainState,
    create_model,
    create_optimizer,
    create_train_state,
    learning_rate_schedule,
)
from classify.step import evaluate, make_eval_step, make_train_step
from sympad.train import data as sdata
from sympad.train import loop, rng
from sympad.train.config import checkpoint_dir, validate_config
from sympad.train.errors import ConfigError
from sympad.train.mesh import batch_sharded, replicate
from sympad.train.metrics import check_finite

__all__ = ["train_and_evaluate", "validate"]


def _load_split(config: ml_collections.ConfigDict, split: str) -> sdata.Dataset:
    inp = config.input
    max_examples = int(inp.max_examples if split == "train" else inp.eval_max_examples) or None
    return sdata.load_split(config.data, split, image_size=int(inp.image_size) or None, max_examples=max_examples,
                            cache_dir=inp.cache_dir, data_dir=inp.data_dir,
                            allow_corrupt=bool(config.get("allow_corrupt", False)))


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a classify config before anything is loaded or compiled.

    Each field of ``classify.fields.CLASSIFY_FIELDS`` (present, of its type, allowed: the shared
    ones of ``sympad.train.config`` and the suite's model, input, optimizer and augmentation
    fields), the batch against the devices, then the cross-field rules of ``classify.fields.RULES``
    (crop_pad < image_size; num_epochs >= 1 when num_train_steps is 0; the model's own fields, by
    building the unbound module).

    Raises:
      ConfigError: naming the first offending ``config.<field>`` and its allowed values.
    """
    validate_config(config, CLASSIFY_FIELDS, RULES)


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
            train_ds.images, train_ds.labels, batch_size=int(config.batch_size),
            key=rng.stream(int(config.seed), "data", STREAMS),
            start_step=start, num_steps=total_steps - start, sharding=batch_sharded(mesh)),
        host_step=lambda state, loader: step_on_batch(state, *next(loader)),
    )
    test_images, test_labels = replicate((test_ds.images, test_ds.labels), mesh)  # multi-process safe

    # Hook and records: the test split every config.eval_every steps; train metrics renamed train_*.
    def evaluate_test(step: int, state: TrainState, writer: Any = None) -> dict[str, float]:
        result = evaluate(eval_step, state, test_images, test_labels, batch_size=eval_batch)
        check_finite(step, result, checkpoint_dir=checkpoint_dir(workdir))
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
        first_record={"num_params": num_params, "steps_per_epoch": per_epoch, "data/skipped": skipped},
        best_metric="test_error")
    if "test_error" not in record:  # resumed at the end: evaluate the restored state once
        # Traced outside the loop, so under the run's formulation here (sympad.train.loop owns it inside).
        with sympad.use_implementation(config.conv_implementation):
            record = {**record, **evaluate_test(int(state.step), state)}
    result = {**record, "num_params": num_params}
    if jax.process_index() == 0:
        (workdir_path / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result

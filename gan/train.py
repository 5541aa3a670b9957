"""GAN training: the loop around gan.step's train step, with sample grids and FID/IS as hooks.

Reads top-down: validate (every config field, before anything loads or compiles), then
train_and_evaluate, which builds the pieces of ``gan.state`` (models, optimizers, the initial
state) and ``gan.step`` (the jitted step), the input (the split on the device or a host loader) and
the hooks, and hands them to ``sympad.train.loop.train``. Data step ``s * n_critic + i`` feeds D
update ``i`` of train step ``s``, so a resumed run follows an uninterrupted one exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gan import diffaugment, models, sampling
from gan.fields import GAN_FIELDS, RULES
from gan.metrics.evaluator import Evaluator, build_evaluator
from gan.state import (
    STREAMS,
    TrainState,
    create_models,
    create_optimizers,
    create_train_state,
    generator_variables,
    num_classes,
    output_size,
    run_seeds,
    seed_prefix,
    select_seed,
)
from gan.step import make_train_step, seeds_sharded
from sympad.train import data as sdata
from sympad.train import loop, rng
from sympad.train.config import validate_config, write_config
from sympad.train.errors import ConfigError
from sympad.train.mesh import batch_sharded, leading_sharded, place, replicated
from sympad.train.metrics import MetricWriter, image_grid, save_image_grid

__all__ = ["model_summary", "train_and_evaluate", "validate"]


# ----------------------------------------------------------------------------------------------
# The model summary


def model_summary(config: ml_collections.ConfigDict, generator: models.Generator,
                  discriminator: models.Discriminator) -> dict[str, Any]:
    """Parameter counts (from shapes only) and the resolved architecture, for model_summary.json."""
    size = output_size(generator)
    labels = jnp.zeros((1,), jnp.int32) if generator.num_classes else None
    g_shapes = jax.eval_shape(lambda: generator.init(jax.random.key(0), jnp.zeros((1, config.z_dim)), labels,
                                                     train=False))
    d_shapes = jax.eval_shape(lambda: discriminator.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), labels))
    paper = models.ARCHS[config.arch].paper_params
    return {
        "arch": config.arch,
        "kernel": config.kernel,
        "seeds": list(run_seeds(config)),  # several: trained at once, vmapped (config.num_seeds)
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
# Training loop


def _load_data(config: ml_collections.ConfigDict, size: int) -> sdata.Dataset:
    dataset = sdata.load_split(config.data, "train", image_size=size, max_examples=config.max_examples,
                               allow_corrupt=bool(config.get("allow_corrupt", False)))
    if dataset.images.shape[1:3] != (size, size):
        raise ConfigError(f"config.data={config.data!r} has {dataset.images.shape[1:3]} images; the generator makes "
                          f"{size}x{size} (set image_size/bottom_size/g_channels to match)")
    return dataset


def _build_evaluator(config: ml_collections.ConfigDict) -> Evaluator | None:
    """FID/IS through gan.metrics when eval_every != 0; else None."""
    if config.eval_every == 0:
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
      ConfigError: the data has no labels, or more classes than ``config.num_classes`` allows.
    """
    if not config.conditional:
        return
    if dataset.labels is None or not dataset.num_classes:
        raise ConfigError(f"config.conditional=True needs labelled data; config.data={config.data!r} has no labels "
                          "(an image folder needs one subfolder per class)")
    if config.num_classes == 0:
        config.num_classes = int(dataset.num_classes)
        write_config(config, workdir)  # sampling and export rebuild the models from config.json
    elif int(dataset.labels.max()) >= config.num_classes:
        raise ConfigError(f"config.num_classes={config.num_classes}: config.data={config.data!r} has "
                          f"{dataset.num_classes} classes (0 = the data's)")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a GAN config before anything is loaded or compiled.

    Each field of ``gan.fields.GAN_FIELDS`` (present, of its type, allowed: the shared ones of
    ``sympad.train.config`` and the suite's enums and ranges), the batch against the devices, then
    the cross-field rules of ``gan.fields.RULES`` (a conditional G needs norm 'batch'; d_downsample
    one 0/1 per d_channels entry; the image side divisible by D's downsampling; ...).

    Raises:
      ConfigError: naming the first offending ``config.<field>`` and its allowed values.
    """
    validate_config(config, GAN_FIELDS, RULES)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from ``workdir/checkpoints`` when there is a checkpoint) and returns the state.

    Runs ``sympad.train.loop.train`` with GAN pieces: the state of create_train_state, the steps of
    gan.step.make_train_step (on the split on the device, or n_critic host batches per step), and two
    hooks: sample grids (+ the digits scores) every ``config.sample_every`` steps and FID/IS every
    ``config.eval_every`` steps (none when 0). With evaluation, the checkpoint of the lowest FID
    (``eval/fid``) is kept besides the latest ``config.max_checkpoints``. The config is validated
    first (:func:`validate`).

    Several seeds (``config.num_seeds = N > 1``, seeds ``config.seed + i``): one stacked state and
    one vmapped step train them all; metrics.jsonl holds each seed's values (``seed<k>/<name>``)
    and their mean under the plain name (``_std`` beside the means of the hooks' scores: FID, IS,
    the digits scores); sample grids are written per seed (``samples_<step>_seed<k>.png``). A
    checkpoint holds every seed, so the best one is that of the lowest mean FID; each seed's own
    FIDs are in metrics.jsonl. A run resumes only with the ``num_seeds`` it started with.
    """
    validate(config)  # everything, before any data is loaded or anything compiled
    mesh = loop.checked_mesh(config.batch_size)
    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    seeds = run_seeds(config)
    sharded_seeds = seeds_sharded(len(seeds), mesh, config.seed_batching)

    # The training split (a conditional run learns its number of classes from it), stored once for all seeds.
    size = output_size(create_models(config, classes=0)[0])
    dataset = _load_data(config, size)
    _resolve_classes(config, dataset, workdir_path)
    classes = num_classes(config)

    # Models, optimizers, the step, the input, the hooks.
    generator, discriminator = create_models(config)
    _write_model_summary(config, generator, discriminator, workdir_path)
    g_tx, d_tx = create_optimizers(config)
    step_on_device, step_on_batch = make_train_step(generator, discriminator, g_tx, d_tx, config, mesh=mesh)
    data = _input(config, dataset, step_on_device, step_on_batch, seeds=seeds, classes=classes, mesh=mesh)
    hooks, evaluator = _hooks(config, generator, seeds=seeds, classes=classes, mesh=mesh, workdir=workdir_path)

    # An epoch: every training image seen once by D (n_critic batches per train step).
    n_critic = int(config.n_critic)
    per_epoch = max(1, len(dataset) // (int(config.batch_size) * n_critic))
    state, _ = loop.train(
        config, workdir, mesh=mesh, data=data, total_steps=int(config.num_train_steps), steps_per_epoch=per_epoch,
        init_state=lambda: create_train_state(config, generator, discriminator, g_tx, d_tx),
        hooks=hooks, summarize=lambda step, means: {**means, "d_steps": step * n_critic},
        progress_keys=("d_loss", "g_loss"), desc=f"gan {config.kernel}",
        # A step-0 record only when files were skipped: a clean run's metrics start at step 1.
        first_record={"data/skipped": len(dataset.skipped)} if dataset.skipped else None,
        # With evaluation, the lowest (mean) FID's checkpoint is kept besides the latest ones.
        best_metric="eval/fid" if evaluator is not None else None,
        # The seed axis split over the devices when their count divides it (gan.step.seeds_sharded).
        place=(lambda tree: place(tree, leading_sharded(tree, mesh))) if sharded_seeds else None,
        run_fields={"num_seeds": len(seeds)})
    return state


def _write_model_summary(config: ml_collections.ConfigDict, generator: models.Generator,
                         discriminator: models.Discriminator, workdir: Path) -> None:
    """Writes :func:`model_summary` to ``workdir/model_summary.json`` (process 0) and logs its sizes."""
    summary = model_summary(config, generator, discriminator)
    if jax.process_index() == 0:
        (workdir / "model_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("G %s params (widths %s), D %s params, seeds %s", f"{summary['generator']['params']:,}",
                 summary["generator"]["widths"], f"{summary['discriminator']['params']:,}", list(run_seeds(config)))


#: A train step of the loop: the state and this step's input in, the new state and its metrics out.
_Step = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
#: A hook of the loop: (step, state, writer) -> the scores it adds to metrics.jsonl.
_HookFn = Callable[[int, TrainState, MetricWriter], dict[str, float]]
#: Seed ``i``'s state of a (stacked) run's state, as a single run's: ``(state, i) -> state``.
_SeedSelector = Callable[[TrainState, int], TrainState]


def _input(config: ml_collections.ConfigDict, dataset: sdata.Dataset, step_on_device: _Step, step_on_batch: _Step,
           *, seeds: tuple[int, ...], classes: int, mesh: jax.sharding.Mesh | None) -> loop.Input:
    """The loop's input: the split on the device (``step_on_device``), or one host loader per seed.

    Data step ``s * n_critic + i`` feeds D update ``i`` of train step ``s``, on the device or from
    the host; each seed draws its own batches (its data stream), from one copy of the split.
    """
    n_critic = int(config.n_critic)
    stacked = len(seeds) > 1

    def host_loader(start: int) -> _SeedLoaders:
        return _SeedLoaders([
            sdata.HostLoader(dataset.images, dataset.labels if classes else None, batch_size=config.batch_size,
                             key=rng.stream(seed, "data", STREAMS), start_step=start * n_critic,
                             # several processes: each loads its own rows
                             sharding=batch_sharded(mesh) if jax.process_count() > 1 else None)
            for seed in seeds])

    def host_step(state: TrainState, loaders: _SeedLoaders) -> tuple[TrainState, dict[str, jax.Array]]:
        images, labels = loaders.next_step(n_critic, stacked=stacked)
        return step_on_batch(state, images, labels if classes else None)

    return loop.Input(
        dataset=dataset,
        arrays="images_labels" if classes else "images",
        device_step=step_on_device,
        host_loader=host_loader,
        host_step=host_step,
    )


def _hooks(config: ml_collections.ConfigDict, generator: models.Generator, *, seeds: tuple[int, ...], classes: int,
           mesh: jax.sharding.Mesh | None, workdir: Path) -> tuple[list[loop.Hook], Evaluator | None]:
    """The loop's hooks, per seed: sample grids (and the digits scores) every ``config.sample_every``
    steps, FID/IS every ``config.eval_every`` steps when that is not 0; and the evaluator, or None."""
    # Seed i's state as a single run's, on every device (the hooks sample with it).
    one_seed = (jax.jit(select_seed, static_argnums=1, out_shardings=replicated(mesh)) if len(seeds) > 1
                else lambda state, index: state)
    hooks = [loop.Hook(config.sample_every, _sample_hook(config, generator, one_seed, seeds=seeds, classes=classes,
                                                         mesh=mesh, workdir=workdir), "sample_every")]
    evaluator = _build_evaluator(config)
    if evaluator is not None:
        hooks.append(loop.Hook(config.eval_every, _eval_hook(generator, evaluator, one_seed, seeds=seeds,
                                                             classes=classes, mesh=mesh), "eval_every"))
    return hooks, evaluator


def _sample_labels(num: int, classes: int) -> np.ndarray | None:
    """The classes generate_samples gives a conditional G by default (sample i: i % classes); None
    for an unconditional one."""
    return sampling.class_labels(num, classes) if classes else None


def _sample_hook(config: ml_collections.ConfigDict, generator: models.Generator, one_seed: _SeedSelector, *,
                 seeds: tuple[int, ...], classes: int, mesh: jax.sharding.Mesh | None, workdir: Path) -> _HookFn:
    """The ``sample_every`` hook: each seed's sample grid (a PNG and an image summary) and, on the
    digits, its scores (several seeds: :func:`_over_seeds`)."""
    stacked = len(seeds) > 1
    # A conditional grid has one row per class, the same latents in every row (so a column is one
    # z across the classes).
    grids = [_grid_inputs(config, seed, classes) for seed in seeds]
    digits_scorer = _digits_scorer(config)

    def save_samples(step: int, state: TrainState, writer: MetricWriter) -> dict[str, float]:
        scores = []
        for i, seed in enumerate(seeds):
            variables = generator_variables(one_seed(state, i), use_ema=True)
            grid_z, grid_labels, grid_cols = grids[i]
            grid = np.asarray(sampling.generate_images(generator, variables, grid_z, grid_labels))
            suffix, tag = (f"_seed{seed}", seed_prefix(seed) + "samples") if stacked else ("", "samples")
            if jax.process_index() == 0:  # every process has the grid; one writes it
                save_image_grid(grid, workdir / f"samples_{step:07d}{suffix}.png", ncols=grid_cols)
            writer.write_image(step, tag, image_grid(grid, ncols=grid_cols))
            if digits_scorer is not None:
                num = config.digits_quality_samples
                samples = sampling.generate_samples(generator, variables, num=num, seed=seed + 1, batch_size=256,
                                                    mesh=mesh)
                scores.append(digits_scorer(samples, _sample_labels(num, classes)))
        return _over_seeds(seeds, scores) if scores else {}

    return save_samples


def _eval_hook(generator: models.Generator, evaluator: Evaluator, one_seed: _SeedSelector, *,
               seeds: tuple[int, ...], classes: int, mesh: jax.sharding.Mesh | None) -> _HookFn:
    """The ``eval_every`` hook: each seed's FID/IS (``eval/<name>``; ``eval/fid`` is the one the
    best-checkpoint rule reads), over the seeds by :func:`_over_seeds`."""

    def evaluate(step: int, state: TrainState, writer: MetricWriter) -> dict[str, float]:
        num = _eval_num_samples(evaluator)
        per_seed = []
        for i, seed in enumerate(seeds):
            samples = sampling.generate_samples(generator, generator_variables(one_seed(state, i), use_ema=True),
                                                num=num, seed=seed + 1, batch_size=256, mesh=mesh)
            # Conditional runs: overall and intra-class (per class) scores through the same network.
            scores = {f"eval/{k}": v for k, v in evaluator(samples, labels=_sample_labels(num, classes)).items()}
            # One name for the best-checkpoint rule, whichever feature network computed the FID.
            per_seed.append({**scores, "eval/fid": scores[f"eval/{evaluator.fid_key}"]})
        return _over_seeds(seeds, per_seed)

    return evaluate


class _SeedLoaders:
    """One host loader per seed, each positioned at the run's step, closed together."""

    def __init__(self, loaders: list[sdata.HostLoader]):
        self.loaders = loaders

    def next_step(self, n_critic: int, *, stacked: bool) -> tuple[jax.Array, jax.Array | None]:
        """This step's ``n_critic`` batches of every seed: images ``(n_critic, B, ...)`` (and labels
        ``(n_critic, B)``), with a leading seed axis when ``stacked``."""
        per_seed = []
        for loader in self.loaders:
            images, labels = zip(*(next(loader) for _ in range(n_critic)))
            per_seed.append((jnp.stack(images), None if labels[0] is None else jnp.stack(labels)))
        if not stacked:
            return per_seed[0]
        images, labels = zip(*per_seed)
        return jnp.stack(images), None if labels[0] is None else jnp.stack(labels)

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()


def _grid_inputs(config: ml_collections.ConfigDict, seed: int, classes: int
                 ) -> tuple[jax.Array, jax.Array | None, int | None]:
    """A seed's sample-grid latents, labels and columns (a conditional grid: one row per class)."""
    grid_key = rng.stream(seed, "grid", STREAMS)
    if classes:
        per_row = max(1, int(config.num_grid) // classes)
        grid_z = jnp.tile(jax.random.normal(grid_key, (per_row, config.z_dim)), (classes, 1))
        return grid_z, jnp.repeat(jnp.arange(classes, dtype=jnp.int32), per_row), per_row
    return jax.random.normal(grid_key, (config.num_grid, config.z_dim)), None, None


def _over_seeds(seeds: tuple[int, ...], per_seed: list[dict[str, float]]) -> dict[str, float]:
    """One seed's scores as they are; several: their mean and ``_std`` (over seeds), then each seed's own."""
    if len(seeds) == 1:
        return per_seed[0]
    names = [k for k in per_seed[0] if all(k in scores for scores in per_seed)]
    out: dict[str, float] = {}
    for name in names:
        values = np.asarray([float(scores[name]) for scores in per_seed])
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1))
    for seed, scores in zip(seeds, per_seed):
        out.update({seed_prefix(seed) + k: v for k, v in scores.items()})
    return out


def _eval_num_samples(evaluator: Evaluator) -> int:
    """Samples per evaluation: the evaluator's setting, else the protocol's 10k."""
    return int(evaluator.settings.num_samples or 10_000)

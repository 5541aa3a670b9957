"""The GAN train step: ``n_critic`` discriminator updates + 1 generator update, one jit-compiled program.

The paper's protocol (section 4.5, following compare_gan): non-saturating loss without gradient
penalty, Adam(2e-4, 0.5, 0.999), batch 64, n_critic 5, spectral norm in D, no normalization in G.

Randomness is a pure function of ``(config.seed, step)``: the latents of train step ``s`` come from
``fold_in(state.key, s)`` and its real batches are data steps ``s * n_critic + i`` of
``sympad.train.data.get_batch``, so a run interrupted and resumed from a checkpoint follows exactly
the same trajectory as an uninterrupted one. The class labels of generated images
(``config.conditional``) and the DiffAugment draws (``config.diffaugment``) come from their own
sub-stream of the same key, which runs without either never touch: switching both off gives the
unconditional step bit for bit.

:func:`make_train_step` builds the jitted step once per run, as ``classify.step.make_train_step``
does: the models, optimizers and hyperparameters are fixed for the run, so they are closed over
rather than passed (and hashed) as static arguments on every call.

Several seeds (``config.num_seeds = N > 1``, a state stacked by ``gan.state.create_train_state``):
one program updates every seed. Seed ``i`` draws its latents from its own state's key and its
batches with the data key of ``config.seed + i``, from the one copy of the split on the device;
it computes what a single run with that seed computes, up to floating-point rounding. How the
program holds the seeds is ``config.seed_batching`` (``gan.fields.SEED_BATCHING``):

* ``'vmap'``: ``jax.vmap`` of the single-seed step over the seed axis, so every seed runs in the
  same kernels (a convolution becomes one grouped convolution over the seeds): fewer, larger
  kernels, what a GPU running small models wants;
* ``'loop'``: the single-seed step written out once per seed in the one program. XLA:CPU runs
  grouped convolutions far slower than plain ones (5-10x per seed, BENCHMARKS.md), so on a CPU
  the seeds are better run one after another;
* ``'auto'`` (default): ``'loop'`` on the CPU backend, ``'vmap'`` on accelerators.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gan import diffaugment, losses, models
from gan.fields import SEED_BATCHING
from gan.state import STREAMS, TrainState, num_classes, run_seeds, seed_prefix
from sympad.train import data as sdata
from sympad.train import rng
from sympad.train.mesh import DATA_AXIS, batch_sharded

__all__ = ["StepConfig", "make_train_step", "resolve_seed_batching", "seeds_sharded"]

#: A step's result: the new state and its scalar metrics.
StepResult = tuple[TrainState, dict[str, jax.Array]]

# fold_in offset, on a train step's key, of the sub-stream for fake labels and DiffAugment; far above
# the latents' offsets 0..n_critic, so those stay what they were before labels and augmentation existed.
_AUX_STREAM = 1 << 20


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The hyperparameters of the train step, read from the config once when the step is built."""

    batch_size: int
    n_critic: int
    z_dim: int
    loss: str = "ns"
    ema_decay: float = 0.0
    unroll: bool = True  # unroll the D updates instead of a lax.scan (XLA:CPU runs loops slowly)
    num_classes: int = 0  # > 0: conditional models, the real batches' labels feed D
    diffaugment: tuple[str, ...] = ()  # gan.diffaugment policies, on every image D sees

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
        return cls(batch_size=int(config.batch_size), n_critic=int(config.n_critic), z_dim=int(config.z_dim),
                   loss=str(config.loss), ema_decay=float(config.ema_decay), unroll=bool(config.unroll_d_steps),
                   num_classes=num_classes(config),
                   diffaugment=diffaugment.parse_policy(config.get("diffaugment", "")))


def _sigmoid_mean(logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.sigmoid(logits))


def resolve_seed_batching(value: str, *, backend: str | None = None) -> str:
    """``config.seed_batching`` for this backend: 'auto' is 'loop' on the CPU, 'vmap' elsewhere."""
    if value not in SEED_BATCHING:
        raise ValueError(f"seed_batching must be one of {SEED_BATCHING}, got {value!r}")
    if value != "auto":
        return value
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


def seeds_sharded(num_seeds: int, mesh: jax.sharding.Mesh | None, seed_batching: str = "vmap") -> bool:
    """Whether a run's seed axis is split over the mesh's devices: several seeds and devices, the
    device count divides the seeds, and the seeds are vmapped. Otherwise every device holds every
    seed and each seed's batch is split over the devices."""
    return (mesh is not None and num_seeds > 1 and mesh.size > 1 and num_seeds % mesh.size == 0
            and resolve_seed_batching(seed_batching) == "vmap")


def make_train_step(generator: models.Generator, discriminator: models.Discriminator,
                    g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
                    data_key: jax.Array | None = None) -> tuple[Callable[..., StepResult], Callable[..., StepResult]]:
    """The jitted train steps (``n_critic`` D updates then one G update): on-device data and host batches.

    The D updates are a ``lax.scan`` (``config.unroll_d_steps=False``) or the same body unrolled
    (default). The C*sp convs take the formulation in force where the step is traced
    (``sympad.train.loop.train`` applies ``config.conv_implementation``).
    Conditional models (``num_classes(config) > 0``): D sees real images with their labels and
    generated ones with the uniformly drawn classes they were generated for. DiffAugment
    (``config.diffaugment``): the same policy on everything D sees, real and generated, in D's
    updates and in G's (gradients reach G through it).

    With ``config.num_seeds = N > 1`` the state is stacked (seed axis first) and the step is the
    single-seed step vmapped over it or written out once per seed (``config.seed_batching``);
    when the seeds are vmapped and the device count divides N the seed axis is split over the
    devices (:func:`seeds_sharded`), else each seed's batch is.

    Args:
      generator, discriminator, g_tx, d_tx: from create_models / create_optimizers.
      config: the run's config (:meth:`StepConfig.from_config` reads the step's fields).
      mesh: the batch axis (or the seed axis, see above) is sharded over it, or None.
      data_key: the input pipeline's key (one run with one seed only); default: stream ``'data'``
        of each seed, as the trainer's host loaders draw with.

    Returns:
      ``(step_on_device, step_on_batch)``: ``step_on_device(state, images, labels=None)`` takes the
      whole split on the device (uint8 ``(N, H, W, 3)``; conditional models: int labels ``(N,)``)
      and gathers batch ``i`` of the step as ``get_batch(images, labels, data_key,
      state.step * n_critic + i)``; ``step_on_batch(state, images, labels=None)`` takes this step's
      ``n_critic`` host batches, uint8 ``(n_critic, B, H, W, 3)`` (and ``(n_critic, B)`` labels;
      several seeds: a leading seed axis on both). Both return the new state (the input state is
      donated) and scalar metrics: d_loss, g_loss, d_real / d_fake (mean sigmoid of D's logits on
      real / generated images during the D updates), d_real_logit, d_fake_logit, g_d_fake (mean
      sigmoid on the G update's samples), d_grad_norm, g_grad_norm. With several seeds each is the
      mean over the seeds, and ``seed<k>/<name>`` is seed ``k``'s own value.
    """
    step_config = StepConfig.from_config(config)
    seeds = run_seeds(config)
    if data_key is not None and len(seeds) > 1:
        raise ValueError("data_key: a run of several seeds draws each seed's batches with its own data stream")
    batching = resolve_seed_batching(str(config.get("seed_batching", "auto")))
    sharded_seeds = seeds_sharded(len(seeds), mesh, batching)
    pieces = dict(generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx, config=step_config,
                  batch_sharding=batch_sharded(mesh) if mesh is not None and not sharded_seeds else None)

    def one_on_device(state: TrainState, images: jax.Array, key: jax.Array, labels: jax.Array | None) -> StepResult:
        return _train_step(state, images, key, labels, host_batches=False, **pieces)

    def one_on_batch(state: TrainState, images: jax.Array, labels: jax.Array | None) -> StepResult:
        return _train_step(state, images, None, labels, host_batches=True, **pieces)

    if len(seeds) == 1:
        key = data_key if data_key is not None else rng.stream(seeds[0], "data", STREAMS)
        on_device = functools.partial(_with_key, one_on_device, key)
        on_batch = one_on_batch
    else:
        keys = jnp.stack([rng.stream(seed, "data", STREAMS) for seed in seeds])
        # The step counter is shared; every other field has the seed axis first.
        axes = TrainState(step=None, g_params=0, g_stats=0, d_params=0, d_stats=0, g_opt_state=0, d_opt_state=0,
                          ema_params=0, key=0)
        if batching == "vmap":
            spmd = DATA_AXIS if sharded_seeds else None
            many_on_device = jax.vmap(one_on_device, in_axes=(axes, None, 0, None), out_axes=(axes, 0),
                                      spmd_axis_name=spmd)
            many_on_batch = jax.vmap(one_on_batch, in_axes=(axes, 0, 0), out_axes=(axes, 0), spmd_axis_name=spmd)
        else:
            many_on_device = functools.partial(_seed_loop, one_on_device, (axes, None, 0, None))
            many_on_batch = functools.partial(_seed_loop, one_on_batch, (axes, 0, 0))
        on_device = functools.partial(_per_seed_metrics, seeds, functools.partial(_with_key, many_on_device, keys))
        on_batch = functools.partial(_per_seed_metrics, seeds, many_on_batch)

    def step_on_device(state: TrainState, images: jax.Array, labels: jax.Array | None = None) -> StepResult:
        return on_device(state, images, labels)

    def step_on_batch(state: TrainState, images: jax.Array, labels: jax.Array | None = None) -> StepResult:
        return on_batch(state, images, labels)

    return jax.jit(step_on_device, donate_argnums=0), jax.jit(step_on_batch, donate_argnums=0)


def _with_key(step: Callable[..., StepResult], key: jax.Array, state: TrainState, images: jax.Array,
              labels: jax.Array | None) -> StepResult:
    return step(state, images, key, labels)


def _seed_loop(step: Callable[..., StepResult], in_axes: tuple[Any, ...], *args: Any) -> StepResult:
    """``step`` once per seed, written out in one program: what ``jax.vmap(step, in_axes)`` computes
    (``in_axes``: 0 = the argument has the seed axis first, None = shared; the state's prefix tree)."""
    num = args[0].key.shape[0]

    def take(axis: int | None, tree: Any, i: int) -> Any:
        return tree if axis is None else jax.tree_util.tree_map(lambda x: x[i], tree)

    def seed_args(i: int) -> list[Any]:
        return [jax.tree_util.tree_map(lambda axis, tree: take(axis, tree, i), axes, arg, is_leaf=lambda x: x is None)
                for axes, arg in zip(in_axes, args)]

    results = [step(*seed_args(i)) for i in range(num)]
    states, metrics = zip(*results)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[s.replace(step=None) for s in states])
    return stacked.replace(step=states[0].step), jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *metrics)


def _per_seed_metrics(seeds: tuple[int, ...], step: Callable[..., StepResult], *args: Any) -> StepResult:
    """Runs a vmapped step; its (N,) metrics become their means and one ``seed<k>/<name>`` scalar per seed."""
    state, per_seed = step(*args)
    metrics = {name: jnp.mean(values) for name, values in per_seed.items()}
    for i, seed in enumerate(seeds):
        metrics.update({seed_prefix(seed) + name: values[i] for name, values in per_seed.items()})
    return state, metrics


def _train_step(state: TrainState, dataset: jax.Array, data_key: jax.Array | None, labels: jax.Array | None, *,
                generator: models.Generator, discriminator: models.Discriminator,
                g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, config: StepConfig,
                batch_sharding: Any, host_batches: bool) -> StepResult:
    """One seed's train step: :func:`_d_updates` (``n_critic`` D updates), then :func:`_g_update`.

    ``dataset``/``labels``: the split on the device, or with ``host_batches`` this step's
    ``(n_critic, B, ...)`` batches. The parts are traced in the order the step has always been,
    so the compiled program, and with it every result, stays the same.
    """
    ctx = _StepContext.create(state, generator=generator, discriminator=discriminator, config=config,
                              batch_sharding=batch_sharding)
    (d_params, d_stats, d_opt_state), d_metrics = _d_updates(ctx, d_tx, state, dataset, labels, data_key,
                                                             host_batches=host_batches)
    g = _g_update(ctx, g_tx, state, d_params=d_params, d_stats=d_stats)
    ema_params = _ema(state.ema_params, g.params, decay=config.ema_decay)
    new_state = state.replace(step=state.step + 1, g_params=g.params, g_stats=g.stats, d_params=d_params,
                              d_stats=d_stats, g_opt_state=g.opt_state, d_opt_state=d_opt_state,
                              ema_params=ema_params)
    return new_state, _step_metrics(d_metrics, g)


@dataclasses.dataclass(frozen=True)
class _StepContext:
    """What the parts of one seed's train step share: the models, the hyperparameters, the batch
    sharding and the step's keys.

    Update ``i`` of the step (D updates ``0 .. n_critic - 1``, the G update ``n_critic``) draws its
    latents from ``fold_in(step_key, i)``, its fake labels from ``fold_in(aux_key, 2 * i)`` and its
    DiffAugment parameters from ``fold_in(aux_key, 2 * i + 1)``.
    """

    generator: models.Generator
    discriminator: models.Discriminator
    config: StepConfig
    batch_sharding: Any
    step_key: jax.Array
    aux_key: jax.Array

    @classmethod
    def create(cls, state: TrainState, *, generator: models.Generator, discriminator: models.Discriminator,
               config: StepConfig, batch_sharding: Any) -> _StepContext:
        """The context of train step ``state.step``: its key is ``fold_in(state.key, state.step)``."""
        step_key = jax.random.fold_in(state.key, state.step)
        return cls(generator=generator, discriminator=discriminator, config=config, batch_sharding=batch_sharding,
                   step_key=step_key, aux_key=jax.random.fold_in(step_key, _AUX_STREAM))

    def constrain(self, x: jax.Array | None) -> jax.Array | None:
        """``x`` sharded over the batch axis of the mesh (unchanged without a mesh, or None)."""
        if self.batch_sharding is None or x is None:
            return x
        return jax.lax.with_sharding_constraint(x, self.batch_sharding)

    def latents(self, i: jax.Array) -> jax.Array:
        """Update ``i``'s latents, ``(B, z_dim)``."""
        return self.constrain(jax.random.normal(jax.random.fold_in(self.step_key, i),
                                                (self.config.batch_size, self.config.z_dim)))

    def fake_labels(self, i: jax.Array) -> jax.Array | None:
        """The classes update ``i`` generates, ``(B,)`` uniform over the classes (None: unconditional)."""
        classes = self.config.num_classes
        if not classes:
            return None
        return self.constrain(jax.random.randint(jax.random.fold_in(self.aux_key, 2 * i), (self.config.batch_size,),
                                                 0, classes))

    def augment(self, images: jax.Array, i: jax.Array) -> jax.Array:
        """DiffAugment of update ``i``'s images ``(n, H, W, 3)`` (unchanged without a policy)."""
        # One draw per image: real and generated images of a D update get independent parameters.
        if not self.config.diffaugment:
            return images
        return diffaugment.diff_augment(images, jax.random.fold_in(self.aux_key, 2 * i + 1),
                                        policy=self.config.diffaugment)

    def generate_train(self, g_params: Any, g_stats: Any, z: jax.Array, y: jax.Array | None) -> tuple[jax.Array, Any]:
        """G in training mode on latents ``z`` ``(B, z_dim)`` (and classes ``y``): images and G's batch stats."""
        # Batch statistics in training mode; the updated BN averages are kept from G steps only.
        if g_stats:
            images, new = self.generator.apply({"params": g_params, "batch_stats": g_stats}, z, y, train=True,
                                               mutable=["batch_stats"])
            return images, new["batch_stats"]
        return self.generator.apply({"params": g_params}, z, y, train=True), g_stats


#: D's parameters, batch stats (the spectral-norm state) and optimizer state, carried through its updates.
_DCarry = tuple[Any, Any, Any]


def _join(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    return None if a is None else jnp.concatenate([a, b])


def _real_batch(ctx: _StepContext, dataset: jax.Array, labels: jax.Array | None, data_key: jax.Array | None,
                step: jax.Array, i: jax.Array, *, host_batches: bool) -> tuple[jax.Array, jax.Array | None]:
    """D update ``i``'s real images ``(B, H, W, 3)`` in [-1, 1] (and labels ``(B,)`` when conditional).

    On the device: data step ``step * n_critic + i`` of the split; with ``host_batches``: batch ``i``
    of the step's ``(n_critic, B, ...)`` host batches.
    """
    config = ctx.config
    if host_batches:
        real, real_y = sdata.to_float(dataset[i]), labels[i] if config.num_classes else None
    else:
        real, real_y = sdata.get_batch(dataset, labels if config.num_classes else None, data_key,
                                       step * config.n_critic + i, batch_size=config.batch_size)
    return ctx.constrain(real), ctx.constrain(real_y)


def _d_update(ctx: _StepContext, d_tx: optax.GradientTransformation, carry: _DCarry, real: jax.Array,
              real_y: jax.Array | None, i: jax.Array, *, g_params: Any, g_stats: Any
              ) -> tuple[_DCarry, dict[str, jax.Array]]:
    """D update ``i`` on a real batch and one generated by the step's G (no gradient reaches G).

    Returns:
      The new carry and the update's scalar metrics: d_loss, d_real, d_fake (mean sigmoid of D's
      logits), d_real_logit, d_fake_logit, d_grad_norm.
    """
    batch_size = ctx.config.batch_size
    d_params, d_stats, d_opt_state = carry
    fake_y = ctx.fake_labels(i)
    fake = jax.lax.stop_gradient(ctx.generate_train(g_params, g_stats, ctx.latents(i), fake_y)[0])
    images, images_y = ctx.augment(jnp.concatenate([real, fake]), i), _join(real_y, fake_y)

    def d_loss_fn(d_params: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
        # One D call on real+fake, so the power iteration advances once per D update.
        logits, new = ctx.discriminator.apply({"params": d_params, "batch_stats": d_stats}, images, images_y,
                                              update_stats=True, mutable=["batch_stats"])
        real_logits, fake_logits = logits[:batch_size], logits[batch_size:]
        value = losses.discriminator_loss(real_logits, fake_logits, loss=ctx.config.loss)
        return value, (new["batch_stats"], real_logits, fake_logits)

    (d_loss, (d_stats, real_logits, fake_logits)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    metrics = dict(d_loss=d_loss, d_real=_sigmoid_mean(real_logits), d_fake=_sigmoid_mean(fake_logits),
                   d_real_logit=jnp.mean(real_logits), d_fake_logit=jnp.mean(fake_logits),
                   d_grad_norm=optax.tree.norm(grads))
    return (d_params, d_stats, d_opt_state), metrics


def _d_updates(ctx: _StepContext, d_tx: optax.GradientTransformation, state: TrainState, dataset: jax.Array,
               labels: jax.Array | None, data_key: jax.Array | None, *, host_batches: bool
               ) -> tuple[_DCarry, dict[str, jax.Array]]:
    """The step's ``n_critic`` D updates against the step's G: D's new carry and each metric ``(n_critic,)``."""
    n_critic = ctx.config.n_critic

    def update(carry: _DCarry, i: jax.Array) -> tuple[_DCarry, dict[str, jax.Array]]:
        real, real_y = _real_batch(ctx, dataset, labels, data_key, state.step, i, host_batches=host_batches)
        return _d_update(ctx, d_tx, carry, real, real_y, i, g_params=state.g_params, g_stats=state.g_stats)

    carry = (state.d_params, state.d_stats, state.d_opt_state)
    if not ctx.config.unroll:
        return jax.lax.scan(update, carry, jnp.arange(n_critic))
    # Unrolled by default: XLA:CPU runs convolutions inside a while loop (a rolled lax.scan) about
    # 50x slower than the same code unrolled (24.8 s vs 0.47 s for the 5 D updates of the
    # runlocal model on 2 cores). A Python loop rather than scan(unroll=True), which still emits
    # a while loop when n_critic == 1.
    per_update = []
    for i in range(n_critic):
        carry, metrics = update(carry, jnp.asarray(i))
        per_update.append(metrics)
    return carry, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_update)


class _GUpdate(NamedTuple):
    """The G update's results: G's new parameters, batch stats and optimizer state; its loss, D's
    logits on its samples ``(B, 1)`` and its gradients (for the metrics)."""

    params: Any
    stats: Any
    opt_state: Any
    loss: jax.Array
    logits: jax.Array
    grads: Any


def _g_update(ctx: _StepContext, g_tx: optax.GradientTransformation, state: TrainState, *, d_params: Any,
              d_stats: Any) -> _GUpdate:
    """The step's G update (update index ``n_critic``) against D after its updates."""
    def g_loss_fn(g_params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        g_index = jnp.asarray(ctx.config.n_critic)
        fake_y = ctx.fake_labels(g_index)
        fake, g_stats = ctx.generate_train(g_params, state.g_stats, ctx.latents(g_index), fake_y)
        # update_stats=False: the spectral-norm state advances in D updates only.
        logits = ctx.discriminator.apply({"params": d_params, "batch_stats": d_stats}, ctx.augment(fake, g_index),
                                         fake_y, update_stats=False)
        return losses.generator_loss(logits, loss=ctx.config.loss), (g_stats, logits)

    (g_loss, (g_stats, g_logits)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    return _GUpdate(params=optax.apply_updates(state.g_params, g_updates), stats=g_stats, opt_state=g_opt_state,
                    loss=g_loss, logits=g_logits, grads=g_grads)


def _ema(ema_params: Any, g_params: Any, *, decay: float) -> Any:
    """The EMA of G's parameters after an update (None: the run keeps no EMA)."""
    if ema_params is None:
        return None
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, g_params)


def _step_metrics(d_metrics: dict[str, jax.Array], g: _GUpdate) -> dict[str, jax.Array]:
    """The step's scalar metrics: each D metric's mean over the D updates, then the G update's."""
    metrics = {name: jnp.mean(values) for name, values in d_metrics.items()}
    metrics.update(g_loss=g.loss, g_d_fake=_sigmoid_mean(g.logits), g_grad_norm=optax.tree.norm(g.grads))
    return metrics

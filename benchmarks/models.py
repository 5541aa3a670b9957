"""Model benchmark: training-step throughput and compiled memory for the suites' models.

    python -m benchmarks.models                    # CPU-sized batches
    python -m benchmarks.models --gpu              # the targets' batches (H100/H200-class)
    python -m benchmarks.models --suites resnet --depths 56 --batches 128,512 --gpu
    python -m benchmarks.models --implementation select_crop   # force a C*sp formulation

Groups (each timed round-robin, ratios to the group's first entry):

* ``resnet``: CIFAR ResNet-20/56/110 (``classify.models.resnet_cifar``) with
  every kernel kind; one SGD step (cross entropy, BN statistics updated).
  ``--formulations`` adds C2sp under each named formulation (also to the GAN groups).
* ``table1``: the paper's Table 1 networks (``classify.models.blocks_cifar``,
  CIFAR-100 head) C2sp / Shift / Invert / Sep at depths 20/56/110; baseline C2sp.
* ``sngan``, ``resnet19``: one GAN step = one discriminator and one generator
  Adam update (``gan.models``, non-saturating loss); only the generator's kind
  changes, its width scaled by the suite's default (C2sp at 384 vs C3 at 256).

Images/s is the batch over the median step time. Memory is the compiled step's
temp allocation (``memory_analysis().temp_size_in_bytes``, state donated).
Output: JSON lines and markdown tables, as ``benchmarks.conv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import sympad
from benchmarks import common
from sympad.train import errors

__all__ = ["Case", "build_cases", "main", "markdown", "run"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One model configuration; ``make()`` returns (jitted step, state, batch)."""

    group: str
    label: str
    batch: int
    make: Callable[[], tuple[Callable[..., Any], Any, Any]]
    info: dict[str, Any]


# ----------------------------------------------------------------------------
# Training steps (deliberately minimal: the benchmark measures the models).
# ----------------------------------------------------------------------------


def classifier_step(model: Any, *, batch: int, image_size: int, num_classes: int, seed: int = 0):
    """(step, state, batch) for one SGD step of a classifier with batch norm."""
    key = jax.random.key(seed)
    images = jax.random.normal(key, (batch, image_size, image_size, 3), jnp.float32)
    labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, num_classes)
    variables = model.init(jax.random.fold_in(key, 2), images[:1], train=False)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    state = {
        "params": variables["params"],
        "batch_stats": variables.get("batch_stats", {}),
        "opt": tx.init(variables["params"]),
    }

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
        return loss, updates["batch_stats"]

    def step(state, data):
        x, y = data
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["batch_stats"], x, y)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats, "opt": opt}, loss

    return jax.jit(step, donate_argnums=0), state, (images, labels)


def gan_step(generator: Any, discriminator: Any, *, batch: int, image_size: int, z_dim: int = 128, seed: int = 0):
    """(step, state, batch) for one D and one G Adam update, non-saturating loss."""
    from gan import losses

    key = jax.random.key(seed)
    real = jax.random.uniform(key, (batch, image_size, image_size, 3), jnp.float32, -1.0, 1.0)
    z = jax.random.normal(jax.random.fold_in(key, 1), (batch, z_dim))
    g_vars = generator.init(jax.random.fold_in(key, 2), z[:1])
    d_vars = discriminator.init(jax.random.fold_in(key, 3), real[:1])
    tx = optax.adam(2e-4, b1=0.5, b2=0.999)
    state = {"g": g_vars, "d": d_vars, "g_opt": tx.init(g_vars["params"]), "d_opt": tx.init(d_vars["params"])}

    def d_apply(d_params, d_stats, images):
        logits, updates = discriminator.apply(
            {"params": d_params, **d_stats}, images, update_stats=True, mutable=["batch_stats"]
        )
        return logits, updates

    def g_apply(g_vars, noise):
        return generator.apply(g_vars, noise, train=True, mutable=["batch_stats"])

    def step(state, data):
        real, z = data
        g_other = {k: v for k, v in state["g"].items() if k != "params"}
        d_other = {k: v for k, v in state["d"].items() if k != "params"}
        fake, _ = g_apply(state["g"], z)  # D's step sees G's samples; G's own step redoes them.

        def d_loss(d_params):
            real_logits, upd = d_apply(d_params, d_other, real)
            fake_logits, upd = d_apply(d_params, upd, jax.lax.stop_gradient(fake))
            return losses.discriminator_loss(real_logits, fake_logits), upd

        (dl, d_upd), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state["d"]["params"])
        d_step, d_opt = tx.update(d_grads, state["d_opt"], state["d"]["params"])
        d_params = optax.apply_updates(state["d"]["params"], d_step)

        def g_loss(g_params):
            images, upd = g_apply({"params": g_params, **g_other}, z)
            logits, _ = d_apply(d_params, d_upd, images)
            return losses.generator_loss(logits), upd

        (gl, g_upd), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state["g"]["params"])
        g_step, g_opt = tx.update(g_grads, state["g_opt"], state["g"]["params"])
        new = {
            "g": {"params": optax.apply_updates(state["g"]["params"], g_step), **g_upd},
            "d": {"params": d_params, **d_upd},
            "g_opt": g_opt,
            "d_opt": d_opt,
        }
        return new, dl + gl

    return jax.jit(step, donate_argnums=0), state, (real, z)


# ----------------------------------------------------------------------------
# The model sets.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Batches and depths of one size set."""

    resnet: tuple[tuple[int, int, str], ...]  # (depth, batch, dtype)
    resnet_width: int
    table1: tuple[tuple[int, int], ...]  # (depth, batch)
    table1_width_scale: float
    sngan_batch: int
    resnet19_batch: int
    gan_channels: tuple[int, ...] | None  # None: the paper's widths


GPU = Sizes(
    resnet=(
        (56, 128, "float32"), (56, 512, "float32"), (56, 512, "bfloat16"), (20, 128, "float32"), (110, 128, "float32")
    ),
    resnet_width=16,
    table1=((20, 64), (56, 64), (110, 64)),
    table1_width_scale=1.0,
    sngan_batch=64,
    resnet19_batch=64,
    gan_channels=None,
)
CPU = Sizes(
    resnet=((20, 16, "float32"), (56, 16, "float32"), (20, 16, "bfloat16")),
    resnet_width=16,
    table1=((20, 16),),
    table1_width_scale=1.0,
    sngan_batch=4,
    resnet19_batch=1,
    gan_channels=None,
)
TINY = Sizes(
    resnet=((8, 2, "float32"),),
    resnet_width=4,
    table1=((8, 2),),
    table1_width_scale=0.25,
    sngan_batch=2,
    resnet19_batch=1,
    gan_channels=(16, 16),
)
SUITES = ("resnet", "table1", "sngan", "resnet19")
#: Train steps per timed sample on an accelerator (a CIFAR step is a few ms there).
GPU_INNER = 3


def build_cases(
    sizes: Sizes,
    *,
    suites: Sequence[str] = SUITES,
    kinds: Sequence[str] = sympad.KINDS,
    formulations: Sequence[str] = (),
    depths: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
) -> list[Case]:
    """Every case of the selected suites, grouped; baseline first in each group.

    Raises:
      ValueError: on a suite not in :data:`SUITES`, naming ``suites``.
    """
    unknown = [suite for suite in suites if suite not in SUITES]
    if unknown:
        raise ValueError(f"suites: unknown {unknown[0]!r}; choose from {', '.join(SUITES)}")
    from classify.models import BLOCKS, blocks_cifar, resnet_cifar
    from classify.models.resnet_cifar import TABLE1_WIDTHS

    cases: list[Case] = []
    kinds = ["C3"] + [k for k in kinds if k != "C3"]
    if "resnet" in suites:
        for depth, batch, dtype in sizes.resnet:
            if (depths and depth not in depths) or (batches and batch not in batches):
                continue
            group = f"resnet{depth}/b{batch}/{dtype}"
            variants = [(k, k, None) for k in kinds] + [(f"C2sp:{f}", "C2sp", f) for f in formulations]
            for label, kind, impl in variants:
                model = resnet_cifar(depth=depth, width=sizes.resnet_width, kernel=kind, dtype=common.DTYPES[dtype])
                cases.append(
                    Case(
                        group,
                        label,
                        batch,
                        _classifier_maker(model, batch, 32, 10, impl),
                        {"model": f"resnet{depth}", "kind": kind, "implementation": impl, "dtype": dtype},
                    )
                )
    if "table1" in suites:
        for depth, batch in sizes.table1:
            if (depths and depth not in depths) or (batches and batch not in batches):
                continue
            group = f"table1-depth{depth}/b{batch}/float32"
            for block in ["c2sp"] + [b for b in BLOCKS if b != "c2sp"]:
                width = max(4, round(TABLE1_WIDTHS[block] * sizes.table1_width_scale))
                if block == "shift":
                    width = max(9, 9 * round(width / 9))  # The shift block splits channels into 9 groups.
                model = blocks_cifar(block=block, depth=depth, width=width)
                info = {"model": f"table1-{block}", "depth": depth, "width": width}
                cases.append(Case(group, block, batch, _classifier_maker(model, batch, 32, 100, None), info))
    for suite in ("sngan", "resnet19"):
        if suite not in suites:
            continue
        from gan.models import ARCHS, Discriminator, Generator

        g_factory, d_factory, size = ARCHS[suite].generator, ARCHS[suite].discriminator, ARCHS[suite].image_size
        batch = sizes.sngan_batch if suite == "sngan" else sizes.resnet19_batch
        if batches and batch not in batches:
            continue
        group = f"{suite}/b{batch}/float32"
        variants = [(k, k, None) for k in kinds] + [(f"C2sp:{f}", "C2sp", f) for f in formulations]
        for label, kind, impl in variants:
            if sizes.gan_channels is None:
                generator, discriminator, image_size = g_factory(kernel=kind), d_factory(), size
            else:
                c = sizes.gan_channels
                generator = Generator(channels=c, kernel=kind)
                discriminator = Discriminator(channels=c, downsample=(True,) + (False,) * (len(c) - 1))
                image_size = 4 * 2 ** (len(c) - 1)
            cases.append(
                Case(
                    group,
                    label,
                    batch,
                    _gan_maker(generator, discriminator, batch, image_size, impl),
                    {"model": suite, "kind": kind, "implementation": impl, "g_widths": list(generator.widths)},
                )
            )
    return cases


def _classifier_maker(model, batch, image_size, num_classes, implementation):
    def make():
        step, state, data = classifier_step(model, batch=batch, image_size=image_size, num_classes=num_classes)
        return _with_implementation(step, implementation), state, data

    return make


def _gan_maker(generator, discriminator, batch, image_size, implementation=None):
    def make():
        step, state, data = gan_step(generator, discriminator, batch=batch, image_size=image_size)
        return _with_implementation(step, implementation), state, data

    return make


def _with_implementation(step: Any, implementation: str | None) -> Any:
    """Wraps ``step.lower`` so that its convs' ``'auto'`` resolves to ``implementation``.

    :func:`sympad.use_implementation` acts while a function is traced, and
    ``common.compile_all`` traces (lowers) every case of a group before compiling
    them, so each case's choice is set around its own ``lower``.
    """
    if implementation is None:
        return step

    class Forced:
        def lower(self, *args):
            with sympad.use_implementation(implementation):
                return step.lower(*args)

    return Forced()


# ----------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------


def run(
    cases: Sequence[Case],
    *,
    warmup: int = 2,
    repeats: int = 5,
    implementation: str | None = None,
    report: common.Report | None = None,
    deadline: common.Deadline | None = None,
    compile_workers: int | None = None,
    inner: int = 1,
    done: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Compiles each group, times it round-robin, writes one record per case.

    Groups named in ``done`` are left out; a ``{"record": "started"}`` precedes
    each group's compilation.
    """
    report = report or common.Report()
    deadline = deadline or common.Deadline(None)
    records = []
    groups = list(dict.fromkeys(c.group for c in cases))
    for group in groups:
        if group in done:
            continue
        members = [c for c in cases if c.group == group]
        if deadline.expired():
            report.write({"record": "skipped", "bench": "models", "group": group})
            continue
        report.write({"record": "started", "bench": "models", "group": group})
        with sympad.use_implementation(implementation):
            built = {c.label: c.make() for c in members}
            t0 = time.perf_counter()
            compiled = common.compile_all(
                {c.label: (built[c.label][0], built[c.label][1:]) for c in members}, max_workers=compile_workers
            )
            compile_s = time.perf_counter() - t0
        calls = {}
        for c in members:
            exe, (_, state, data) = compiled[c.label], built[c.label]
            holder = {"state": state}

            def call(exe=exe, holder=holder, data=data):
                holder["state"], loss = exe(holder["state"], data)
                return holder["state"], loss

            calls[c.label] = call
        timings = common.time_round_robin(calls, warmup=warmup, repeats=repeats, inner=inner)
        base = members[0].label
        base_mem = common.memory(compiled[base])["temp_bytes"]
        for c in members:
            t = timings[c.label]
            mem = common.memory(compiled[c.label])["temp_bytes"]
            rec = {
                "record": "model",
                "group": group,
                "label": c.label,
                "batch": c.batch,
                **c.info,
                "implementation_forced": implementation,
                "step_ms": t.median * 1e3,
                "step_min_ms": t.min * 1e3,
                "images_per_s": c.batch / t.median,
                "speed_vs_first": common.ratio(timings[base], t),
                "cpu_speed_vs_first": common.ratio(timings[base], t, cpu=True),
                "first": base,
                "temp_bytes": mem,
                "temp_vs_first": (mem / base_mem) if (mem is not None and base_mem) else None,
                "warmup": warmup,
                "repeats": repeats,
                "inner": inner,
                "group_compile_s": compile_s,
            }
            report.write(rec)
            records.append(rec)
        del built, compiled, calls
    return records


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """One table per group: images/s, speed and temp memory relative to the group's first entry."""
    recs = [r for r in records if r.get("record") == "model"]
    if not recs:
        return "(no model records)"
    out = []
    for group in dict.fromkeys(r["group"] for r in recs):
        rows = [r for r in recs if r["group"] == group]
        base = rows[0]["label"]
        table = common.markdown_table(
            ["model", "images/s", f"speed vs {base} (x)", "temp MB", f"temp vs {base} (x)"],
            [
                [
                    r["label"],
                    r["images_per_s"],
                    r["speed_vs_first"],
                    None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20,
                    r["temp_vs_first"],
                ]
                for r in rows
            ],
        )
        out.append(f"**{group}**\n\n{table}")
    return "\n\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = common.size_parser(
        "benchmarks.models", __doc__, gpu="the targets' batch sizes (H100/H200-class)", tiny="tiny models (smoke test)"
    )
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--kinds", default=",".join(sympad.KINDS))
    p.add_argument("--depths", default=None, help="comma-separated ResNet/Table-1 depths to keep")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes to keep")
    p.add_argument("--formulations", default="", help="resnet, GANs: also C2sp under these formulations")
    p.add_argument("--implementation", default=None, choices=sympad.IMPLEMENTATIONS,
                   help="force every C*sp conv to this formulation")
    common.add_run_args(
        p,
        repeats="timed rounds (default 5, 10 with --gpu)",
        inner="steps per timed sample (default 1, 3 with --gpu)",
        markdown="append the markdown tables here (default: stdout)",
        deadline="skip groups that would start after this many seconds",
    )
    return p.parse_args(argv)


def _names(flag: str, text: str, allowed: Sequence[str], *, empty_ok: bool = False) -> list[str]:
    """The comma-separated names of ``flag``; one not in ``allowed`` is a user error.

    Without this a misspelt suite selected nothing and the command exited 0.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in allowed:
            raise errors.ConfigError(f"{flag}: unknown {name!r}; choose from {', '.join(allowed)}")
    if not names and not empty_ok:
        raise errors.ConfigError(f"{flag}: empty; choose from {', '.join(allowed)}")
    return names


def _ints(flag: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or not all(v.isdigit() and int(v) > 0 for v in values):
        raise errors.ConfigError(f"{flag}: expected comma-separated positive ints, got {text!r}")
    return [int(v) for v in values]


def _available(sizes: Sizes, suites: Sequence[str]) -> str:
    """The depths and batches the selected suites have in ``sizes``, for an empty selection's message."""
    depths, batches = set(), set()
    if "resnet" in suites:
        depths |= {d for d, _, _ in sizes.resnet}
        batches |= {b for _, b, _ in sizes.resnet}
    if "table1" in suites:
        depths |= {d for d, _ in sizes.table1}
        batches |= {b for _, b in sizes.table1}
    batches |= {sizes.sngan_batch} if "sngan" in suites else set()
    batches |= {sizes.resnet19_batch} if "resnet19" in suites else set()
    kept = (("depths", depths), ("batches", batches))
    parts = [f"{name} {','.join(map(str, sorted(values)))}" for name, values in kept if values]
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    sizes = GPU if args.gpu else TINY if args.tiny else CPU
    # Checked before any model is built, so that a typo answers at once.
    suites = _names("--suites", args.suites, SUITES)
    kinds = common.parse_kinds(args.kinds)
    formulations = _names("--formulations", args.formulations, sympad.IMPLEMENTATIONS, empty_ok=True)
    depths, batches = _ints("--depths", args.depths), _ints("--batches", args.batches)
    cases = build_cases(sizes, suites=suites, kinds=kinds, formulations=formulations, depths=depths, batches=batches)
    if not cases:
        size = "--gpu" if args.gpu else "--tiny" if args.tiny else "the CPU"
        raise errors.ConfigError(
            f"--depths/--batches: no case matches {args.depths or 'any'} / {args.batches or 'any'}; "
            f"{size} sizes of {','.join(suites)} have {_available(sizes, suites)}"
        )
    report = common.Report(args.out, stream=None if args.out else sys.stdout)
    report.write({"record": "environment", "bench": "models", **common.environment()})
    records = run(
        cases,
        warmup=args.warmup,
        repeats=args.repeats or (10 if args.gpu else 5),
        implementation=args.implementation,
        report=report,
        deadline=common.Deadline(args.deadline),
        compile_workers=args.compile_workers,
        inner=args.inner or (GPU_INNER if args.gpu else 1),
    )
    report.close()
    table = markdown(records)
    common.emit_markdown(table, args.markdown)
    return records


if __name__ == "__main__":
    errors.run_cli(main)

"""Several GAN seeds in one program: the suite's real train step (``gan.step``) with 1, 2, 4 seeds.

    python -m benchmarks.seeds                        # CPU: the runlocal SNGAN (16 px, widths 32/48, batch 32)
    python -m benchmarks.seeds --gpu                  # the paper's SNGAN (32 px, batch 64, n_critic 5)
    python -m benchmarks.seeds --gpu --forms=vmap,loop --seeds=1,2,4,8
    python -m benchmarks.seeds --tiny                 # smoke test

For every form (``config.seed_batching``: 'vmap', 'loop'; default the one 'auto' picks here) the
step of N seeds (``config.num_seeds``) is compiled and timed round-robin with the step of one
seed (on-device data, state donated, as ``gan.main`` runs it). Reported per N: images/s summed
over the seeds (N x batch x n_critic D images per step), the speed against running the N seeds
one after another (``N * t_1 / t_N``), the compile time, and the compiled program's memory
(temp, arguments, outputs; on a GPU also the device's peak). Records are JSON lines as in
``benchmarks.models``; ``benchmarks.all`` runs it as one of its steps.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import jax

from benchmarks import common
from sympad.train import errors

REPO = Path(__file__).resolve().parents[1]
#: The seed counts measured by default.
SEEDS = (1, 2, 4)
#: The config each size set starts from, as ``gan.main --config=`` takes it.
CONFIG = {"gpu": "configs/gan/sngan_cifar10.py:kernel={kind},data=synthetic",
          "cpu": "configs/gan/sngan_cifar10.py:kernel={kind},data=synthetic,runlocal",
          "tiny": "configs/gan/sngan_cifar10.py:kernel={kind},data=synthetic,runlocal"}
#: The tiny set's overrides (a smoke test: seconds, not minutes).
TINY = dict(bottom_size=2, g_channels=(8, 8, 8), d_channels=(8, 8), d_downsample=(1, 0), z_dim=8, batch_size=4,
            n_critic=1)


@dataclasses.dataclass(frozen=True)
class Case:
    """One group: a form at one size; its members are the seed counts."""

    size: str
    kind: str
    form: str
    seeds: tuple[int, ...]

    @property
    def group(self) -> str:
        return f"sngan-{self.kind}/{self.size}/{self.form}"


def build_cases(size: str, *, kind: str = "C2sp", forms: Sequence[str] = (), seeds: Sequence[int] = SEEDS
                ) -> list[Case]:
    """One case per form (default: what 'auto' picks on this backend)."""
    from gan.step import resolve_seed_batching

    forms = list(forms) or [resolve_seed_batching("auto")]
    return [Case(size, kind, form, tuple(sorted({1, *seeds}))) for form in forms]


def _config(case: Case, num_seeds: int) -> Any:
    from sympad.train.config import load_config_file

    config = load_config_file(str(REPO / CONFIG[case.size].format(kind=case.kind)))
    if case.size == "tiny":
        config.update(TINY)
    config.num_seeds = num_seeds
    config.seed_batching = case.form
    return config


def _build(case: Case, num_seeds: int, images: Any, mesh: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The jitted step, its initial state (on the mesh) and what a record says of the config."""
    from gan import state as gan_state
    from gan import step as gan_step
    from sympad.train.mesh import replicate

    config = _config(case, num_seeds)
    generator, discriminator = gan_state.create_models(config)
    g_tx, d_tx = gan_state.create_optimizers(config)
    state = replicate(gan_state.create_train_state(config, generator, discriminator, g_tx, d_tx), mesh)
    step, _ = gan_step.make_train_step(generator, discriminator, g_tx, d_tx, config, mesh=mesh)
    info = {"batch": int(config.batch_size), "n_critic": int(config.n_critic), "g_widths": list(generator.widths),
            "image_size": gan_state.output_size(generator)}
    return step, state, info


def _images(case: Case, mesh: Any) -> Any:
    from gan import state as gan_state
    from sympad.train import data as sdata
    from sympad.train.mesh import replicate

    size = gan_state.output_size(gan_state.create_models(_config(case, 1))[0])
    return replicate(sdata.load("synthetic", image_size=size, max_examples=1024).images, mesh)


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run(cases: Sequence[Case], *, warmup: int = 2, repeats: int = 5, report: common.Report | None = None,
        deadline: common.Deadline | None = None, done: Collection[str] = ()) -> list[dict[str, Any]]:
    """Compiles and times each case's seed counts round-robin; one record per (case, seed count)."""
    from sympad.train.mesh import make_mesh

    report = report or common.Report()
    deadline = deadline or common.Deadline(None)
    mesh = make_mesh()
    records = []
    for case in cases:
        if case.group in done:
            continue
        if deadline.expired():
            report.write({"record": "skipped", "bench": "seeds", "group": case.group})
            continue
        report.write({"record": "started", "bench": "seeds", "group": case.group})
        images = _images(case, mesh)
        calls, compile_s, memory, info = {}, {}, {}, {}
        for n in case.seeds:  # compiled one by one: each program's compile time is a result
            step, state, info[n] = _build(case, n, images, mesh)
            t0 = time.perf_counter()
            compiled = step.lower(state, images).compile()
            compile_s[n] = time.perf_counter() - t0
            memory[n] = common.memory(compiled)
            holder = {"state": state}

            def call(compiled=compiled, holder=holder, images=images):
                holder["state"], metrics = compiled(holder["state"], images)
                return metrics

            calls[n] = call
        timings = common.time_round_robin(calls, warmup=warmup, repeats=repeats)
        peak = _peak_bytes()
        one = timings[1]
        for n in case.seeds:
            t, batch, n_critic = timings[n], info[n]["batch"], info[n]["n_critic"]
            # N seeds one after another take N single-seed steps: speed = N * t_1 / t_N, per round.
            sequential = [n * a / b for a, b in zip(one.times, t.times)]
            record = {
                "record": "seeds", "group": case.group, "form": case.form, "kind": case.kind, "size": case.size,
                "num_seeds": n, **info[n], "step_ms": t.median * 1e3, "step_min_ms": t.min * 1e3,
                "images_per_s": n * batch * n_critic / t.median,
                "speed_vs_sequential": sorted(sequential)[len(sequential) // 2],
                "compile_s": compile_s[n], **memory[n], "device_peak_bytes": peak,
                "warmup": warmup, "repeats": repeats,
            }
            report.write(record)
            records.append(record)
        del calls
    return records


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """One table per group: per seed count, images/s summed over seeds, speed vs sequential, compile, memory."""
    recs = [r for r in records if r.get("record") == "seeds"]
    if not recs:
        return "(no seeds records)"
    out = []
    for group in dict.fromkeys(r["group"] for r in recs):
        rows = [r for r in recs if r["group"] == group]
        table = common.markdown_table(
            ["seeds", "step ms", "images/s (all seeds)", "vs sequential (x)", "compile s", "temp MB", "args MB"],
            [[r["num_seeds"], r["step_ms"], r["images_per_s"], r["speed_vs_sequential"], r["compile_s"],
              None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20,
              None if r["argument_bytes"] is None else r["argument_bytes"] / 2**20] for r in rows])
        out.append(f"**{group}** (batch {rows[0]['batch']}, n_critic {rows[0]['n_critic']}, "
                   f"G widths {rows[0]['g_widths']})\n\n{table}")
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from gan.fields import SEED_BATCHING

    p = common.size_parser("benchmarks.seeds", __doc__, gpu="the paper's SNGAN (H100/H200-class)",
                           tiny="a tiny SNGAN (smoke test)")
    p.add_argument("--kind", default="C2sp", help="the generator's kernel kind (default %(default)s)")
    p.add_argument("--forms", default="", help="comma-separated config.seed_batching forms (default: 'auto''s)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seed counts (1 always)")
    common.add_run_args(p, repeats="timed rounds (default 5)", inner="(unused)",
                        markdown="append the markdown table here (default: stdout)",
                        deadline="skip groups that would start after this many seconds")
    args = p.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    bad = [f for f in forms if f not in SEED_BATCHING or f == "auto"]
    if bad:
        raise errors.ConfigError(f"--forms: unknown {bad[0]!r}; choose from vmap, loop")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = [0]
    if not seeds or min(seeds) < 1:
        raise errors.ConfigError(f"--seeds={args.seeds!r}: comma-separated positive ints, e.g. 1,2,4")
    size = "gpu" if args.gpu else "tiny" if args.tiny else "cpu"
    report = common.Report(args.out, stream=None if args.out else sys.stdout)
    report.write({"record": "environment", "bench": "seeds", **common.environment()})
    records = run(build_cases(size, kind=args.kind, forms=forms, seeds=seeds), warmup=args.warmup,
                  repeats=args.repeats or 5, report=report, deadline=common.Deadline(args.deadline))
    report.close()
    common.emit_markdown(markdown(records), args.markdown)
    return records


if __name__ == "__main__":
    errors.run_cli(main)

"""Layer benchmark: one conv of every kernel kind, forward and forward+backward.

    python -m benchmarks.conv                      # CPU-sized shapes, float32 and bfloat16
    python -m benchmarks.conv --gpu                # the suites' shapes at their batch sizes
    python -m benchmarks.conv --compare            # C3, C2 and every formulation of C2sp
    python -m benchmarks.conv --implementation select_crop --kinds C3,C2sp --dtypes float32

Each kind is built by the factory the models use (``sympad.linen.conv``, no
bias; ``--via op`` calls ``sympad.sym_pad_conv`` / ``lax.conv_general_dilated``
directly). Forward+backward returns the output ``y`` and the pullback of a
fixed random cotangent ``g`` (gradients wrt the input and the kernel); ``--passes``
also times the two gradients alone (``jax.grad`` of ``sum(y * g)``). Memory is the compiled program's temp
allocation (``memory_analysis().temp_size_in_bytes``). All kinds of one shape
and dtype are compiled first and then timed round-robin (benchmarks.common);
ratios are to C3 measured in the same run, so above 1 means faster than C3.
Output: JSON lines (stdout, or ``--out``) and markdown tables (``--markdown``,
else stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import sympad
import sympad.linen
from benchmarks import common
from sympad.train import errors

__all__ = ["CPU_SHAPES", "GPU_SHAPES", "TINY_SHAPES", "LayerShape", "main", "markdown", "run"]


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One layer: NHWC input ``(batch, size, size, channels)`` to ``features`` channels."""

    name: str
    batch: int
    size: int
    channels: int
    features: int

    def label(self) -> str:
        return f"{self.name} ({self.batch},{self.size},{self.size},{self.channels}->{self.features})"


# The suites' shapes. CIFAR ResNet: 16/32/64 channels at 32/16/8 px, batch 128.
# SNGAN generator at batch 64: C3 at 256 channels, C2/C2sp at 384 (x1.5, equal
# parameters), C4/C4sp at 192 (x0.75); 8-32 px. Plus the reference shapes.
GPU_SHAPES: tuple[LayerShape, ...] = (
    LayerShape("cifar16", 128, 32, 16, 16),
    LayerShape("cifar32", 128, 16, 32, 32),
    LayerShape("cifar64", 128, 8, 64, 64),
    LayerShape("sngan256@8", 64, 8, 256, 256),
    LayerShape("sngan256@16", 64, 16, 256, 256),
    LayerShape("sngan256@32", 64, 32, 256, 256),
    LayerShape("sngan384@8", 64, 8, 384, 384),
    LayerShape("sngan384@16", 64, 16, 384, 384),
    LayerShape("sngan384@32", 64, 32, 384, 384),
    LayerShape("sngan192@8", 64, 8, 192, 192),
    LayerShape("sngan192@16", 64, 16, 192, 192),
    LayerShape("sngan192@32", 64, 32, 192, 192),
    LayerShape("ref64", 32, 32, 64, 64),
    LayerShape("ref256", 64, 32, 256, 256),
    LayerShape("ref56", 256, 56, 64, 64),
)

# The same layers with batches a 2-core CPU runs in well under a second each;
# "ref64" is the CPU target shape (32, 32, 32, 64) itself.
CPU_SHAPES: tuple[LayerShape, ...] = (
    LayerShape("ref64", 32, 32, 64, 64),
    LayerShape("cifar16", 32, 32, 16, 16),
    LayerShape("cifar32", 32, 16, 32, 32),
    LayerShape("cifar64", 32, 8, 64, 64),
    LayerShape("sngan256@8", 16, 8, 256, 256),
    LayerShape("sngan384@16", 4, 16, 384, 384),
    LayerShape("sngan192@32", 2, 32, 192, 192),
    LayerShape("ref256", 2, 32, 256, 256),
    LayerShape("ref56", 4, 56, 64, 64),
)

TINY_SHAPES: tuple[LayerShape, ...] = (LayerShape("tiny", 2, 8, 8, 8),)

#: Calls per timed sample on an accelerator: one layer takes tens of
#: microseconds there, about one host round trip.
GPU_INNER = 20


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One column of the comparison: a kind, optionally forced to a formulation."""

    label: str
    kind: str
    implementation: str | None = None


def candidates(
    kinds: Sequence[str],
    *,
    implementation: str | None,
    compare: bool,
    formulations: Sequence[str] | None = None,
    compare_kind: str = "C2sp",
) -> list[Candidate]:
    """The columns of a run; C3 always first (the baseline).

    With ``compare``: C3, the asymmetric kind of ``compare_kind``'s size, and
    ``compare_kind`` under each formulation.
    """
    if compare:
        k = sympad.parse_kind(compare_kind)
        if not k.symmetric:
            raise ValueError(f"compare_kind must be a symmetric kind such as 'C2sp', got {compare_kind!r}")
        base = [Candidate("C3", "C3"), Candidate(f"C{k.size}", f"C{k.size}")]
        return base + [
            Candidate(f"{compare_kind}:{impl}", compare_kind, impl) for impl in formulations or sympad.IMPLEMENTATIONS
        ]
    kinds = ["C3"] + [k for k in kinds if k != "C3"]
    out = []
    for kind in kinds:
        sp = sympad.parse_kind(kind).symmetric
        impl = implementation if (sp and implementation) else None
        out.append(Candidate(kind if impl in (None, "auto") else f"{kind}:{impl}", kind, impl))
    return out


def _layer_fns(
    shape: LayerShape,
    dtype: Any,
    cand: Candidate,
    via: str,
    key: jax.Array,
    passes: bool = False,
    forward: bool = True,
    groups: int = 1,
):
    """``{pass: (jitted fn, args)}`` for one candidate: fwdbwd (and fwd, dx, dw)."""
    k = sympad.parse_kind(cand.kind)
    kx, kw, kg = jax.random.split(key, 3)
    x = jax.random.normal(kx, (shape.batch, shape.size, shape.size, shape.channels), dtype)
    g = jax.random.normal(kg, (shape.batch, shape.size, shape.size, shape.features), jnp.float32)
    extra = {"implementation": cand.implementation} if cand.implementation else {}
    if via == "linen":
        module = sympad.linen.conv(
            cand.kind, shape.features, use_bias=False, dtype=dtype, feature_group_count=groups, **extra
        )
        params = module.init(kw, x)

        def apply(p, a):
            return module.apply(p, a)

    elif via == "op":
        kernel_shape = (k.size, k.size, shape.channels // groups, shape.features)
        params = (jax.random.normal(kw, kernel_shape, jnp.float32) * 0.05).astype(dtype)

        def apply(p, a):
            if k.symmetric:
                return sympad.sym_pad_conv(a, p, feature_group_count=groups, **extra)
            return lax.conv_general_dilated(
                a, p, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
            )

    else:
        raise ValueError(f"via must be 'linen' or 'op', got {via!r}")

    def loss(p, a, cot):
        return jnp.sum(apply(p, a).astype(jnp.float32) * cot)

    def forward_backward(p, a, cot):
        # The output and the pullback of a cotangent, as a layer inside a
        # network does it; a scalar loss instead would let XLA fuse the forward
        # conv into the loss reduction, which no network does.
        y, pullback = jax.vjp(apply, p, a)
        return y, pullback(cot.astype(y.dtype))

    fns = {"fwdbwd": (jax.jit(forward_backward), (params, x, g))}
    if forward:
        fns["fwd"] = (jax.jit(apply), (params, x))
    if passes:
        # Without the value XLA drops the (linear) forward: these time one backward conv each.
        fns["dx"] = (jax.jit(jax.grad(loss, argnums=1)), (params, x, g))
        fns["dw"] = (jax.jit(jax.grad(loss, argnums=0)), (params, x, g))
    return fns


def auto_choice(shape: LayerShape, dtype: Any, kind: str = "C2sp", groups: int = 1) -> str:
    """What ``implementation='auto'`` picks for a ``kind`` layer of this shape."""
    size = sympad.parse_kind(kind).size
    x = jax.ShapeDtypeStruct((shape.batch, shape.size, shape.size, shape.channels), dtype)
    w = jax.ShapeDtypeStruct((size, size, shape.channels // groups, shape.features), dtype)
    return sympad.choose_implementation(x, w, feature_group_count=groups)


def group_key(shape: str, dtype: str) -> str:
    """The unit measured together (ratios to C3 within it): one shape and dtype."""
    return f"{shape}/{dtype}"


def run(
    shapes: Sequence[LayerShape],
    *,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    kinds: Sequence[str] = sympad.KINDS,
    implementation: str | None = None,
    compare: bool = False,
    via: str = "linen",
    warmup: int = 2,
    repeats: int = 7,
    report: common.Report | None = None,
    deadline: common.Deadline | None = None,
    compile_workers: int | None = None,
    passes: bool = False,
    depthwise: bool = False,
    formulations: Sequence[str] | None = None,
    compare_kind: str = "C2sp",
    inner: int = 1,
    forward: bool = True,
    done: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Measures every candidate on every shape and dtype; returns the records.

    Records (one per shape, dtype and candidate) carry medians and minima in ms,
    ratios to C3 of the same group, and compiled temp bytes. ``forward=False``
    leaves out the forward-only programs (their fields are None): on a GPU
    compiling (with autotuning) takes far longer than timing. Groups (one shape
    and dtype, :func:`group_key`) named in ``done`` are left out; a
    ``{"record": "started"}`` precedes each group's compilation, so that a
    run killed mid-group shows which group it was in.
    """
    report = report or common.Report()
    deadline = deadline or common.Deadline(None)
    cands = candidates(
        kinds, implementation=implementation, compare=compare, formulations=formulations, compare_kind=compare_kind
    )
    records = []
    key = jax.random.key(0)
    for dtype_name in dtypes:
        dtype = common.DTYPES[dtype_name]
        for shape in shapes:
            group = group_key(shape.name, dtype_name)
            if group in done:
                continue
            if deadline.expired():
                report.write({"record": "skipped", "bench": "conv", "group": group, "shape": shape.name,
                              "dtype": dtype_name})
                continue
            report.write({"record": "started", "bench": "conv", "group": group})
            measured = _group_records(
                shape, dtype_name, dtype, cands, via=via, key=key, passes=passes, forward=forward,
                groups=shape.channels if depthwise else 1, warmup=warmup, repeats=repeats, inner=inner,
                compile_workers=compile_workers,
            )
            # Written as each is made, so that a group failing part-way keeps the records before.
            for rec in measured:
                report.write(rec)
                records.append(rec)
    return records


def _group_records(
    shape: LayerShape,
    dtype_name: str,
    dtype: Any,
    cands: Sequence[Candidate],
    *,
    via: str,
    key: jax.Array,
    passes: bool,
    forward: bool,
    groups: int,
    warmup: int,
    repeats: int,
    inner: int,
    compile_workers: int | None,
) -> Iterator[dict[str, Any]]:
    """One group's records (one shape and dtype), one per candidate, ``cands[0]`` the baseline:
    every program of the group compiled first, then all timed round-robin."""
    jobs = {}
    for cand in cands:
        for pass_name, job in _layer_fns(shape, dtype, cand, via, key, passes, forward, groups).items():
            jobs[(cand.label, pass_name)] = job
    t0 = time.perf_counter()
    compiled = common.compile_all(jobs, max_workers=compile_workers)
    compile_s = time.perf_counter() - t0
    calls = {}
    for name, exe in compiled.items():
        args = jobs[name][1]
        calls[name] = lambda exe=exe, args=args: exe(*args)
    timings = common.time_round_robin(calls, warmup=warmup, repeats=repeats, inner=inner)
    base = cands[0].label
    base_mem = common.memory(compiled[(base, "fwdbwd")])["temp_bytes"]
    settings = {"warmup": warmup, "repeats": repeats, "inner": inner, "group_compile_s": compile_s}
    for cand in cands:
        yield _record(
            cand, shape=shape, dtype_name=dtype_name, dtype=dtype, via=via, groups=groups, forward=forward,
            compiled=compiled, timings=timings, base=base, base_mem=base_mem, settings=settings,
        )


def _record(
    cand: Candidate,
    *,
    shape: LayerShape,
    dtype_name: str,
    dtype: Any,
    via: str,
    groups: int,
    forward: bool,
    compiled: dict[tuple[str, str], Any],
    timings: dict[tuple[str, str], Any],
    base: str,
    base_mem: int | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One candidate's record: medians and minima in ms, ratios to the baseline ``base`` (C3) of
    the group, compiled temp bytes, then the run's ``settings``."""
    t_fb = timings[(cand.label, "fwdbwd")]
    t_f = timings.get((cand.label, "fwd"))
    mem_f = common.memory(compiled[(cand.label, "fwd")])["temp_bytes"] if forward else None
    mem_fb = common.memory(compiled[(cand.label, "fwdbwd")])["temp_bytes"]
    sp = sympad.parse_kind(cand.kind).symmetric
    return {
        "record": "conv",
        "group": group_key(shape.name, dtype_name),
        "shape": shape.name,
        "N": shape.batch,
        "HW": shape.size,
        "C": shape.channels,
        "F": shape.features,
        "dtype": dtype_name,
        "label": cand.label,
        "kind": cand.kind,
        "implementation": cand.implementation or ("auto" if sp else None),
        "auto_choice": auto_choice(shape, dtype, cand.kind, groups) if sp else None,
        "via": via,
        "groups": groups,
        "fwd_ms": t_f.median * 1e3 if t_f else None,
        "fwd_min_ms": t_f.min * 1e3 if t_f else None,
        "fwdbwd_ms": t_fb.median * 1e3,
        "fwdbwd_min_ms": t_fb.min * 1e3,
        "fwd_vs_C3": common.ratio(timings[(base, "fwd")], t_f) if t_f else None,
        "fwd_cpu_vs_C3": common.ratio(timings[(base, "fwd")], t_f, cpu=True) if t_f else None,
        "fwdbwd_vs_C3": common.ratio(timings[(base, "fwdbwd")], t_fb),
        "fwdbwd_cpu_ms": t_fb.cpu_median * 1e3,
        "fwdbwd_cpu_vs_C3": common.ratio(timings[(base, "fwdbwd")], t_fb, cpu=True),
        "fwd_temp_bytes": mem_f,
        "fwdbwd_temp_bytes": mem_fb,
        "fwdbwd_temp_vs_C3": (mem_fb / base_mem) if (mem_fb is not None and base_mem) else None,
        **{
            f"{p}_{stat}": value
            for p in ("dx", "dw")
            if (cand.label, p) in timings
            for stat, value in (
                ("ms", timings[(cand.label, p)].median * 1e3),
                ("vs_C3", common.ratio(timings[(base, p)], timings[(cand.label, p)])),
                ("cpu_vs_C3", common.ratio(timings[(base, p)], timings[(cand.label, p)], cpu=True)),
            )
        },
        **settings,
    }


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """Three tables (rows: shape and dtype; columns: candidates): fwd+bwd and fwd
    speed relative to C3 (C3 time / candidate time, >1 is faster), and fwd+bwd
    compiled temp memory relative to C3 (<1 is smaller)."""
    recs = [r for r in records if r.get("record") == "conv"]
    if not recs:
        return "(no conv records)"
    labels = list(dict.fromkeys(r["label"] for r in recs))
    groups = list(dict.fromkeys((r["shape"], r["dtype"]) for r in recs))
    by = {(r["shape"], r["dtype"], r["label"]): r for r in recs}
    out = []
    tables = [
        ("forward+backward speed vs C3 (x)", "fwdbwd_vs_C3"),
        ("forward+backward process CPU time, speed vs C3 (x)", "fwdbwd_cpu_vs_C3"),
        ("forward speed vs C3 (x)", "fwd_vs_C3"),
        ("forward+backward temp memory vs C3 (x)", "fwdbwd_temp_vs_C3"),
    ]
    if all(r.get("fwd_vs_C3") is None for r in recs):
        tables = [t for t in tables if t[1] != "fwd_vs_C3"]
    if any("dx_vs_C3" in r for r in recs):
        tables += [("input gradient alone, speed vs C3 (x)", "dx_vs_C3"),
                   ("kernel gradient alone, speed vs C3 (x)", "dw_vs_C3")]
    base_col = {
        "fwdbwd_vs_C3": ("C3 fwd+bwd ms", "fwdbwd_ms"),
        "fwdbwd_cpu_vs_C3": ("C3 fwd+bwd CPU ms", "fwdbwd_cpu_ms"),
        "fwd_vs_C3": ("C3 fwd ms", "fwd_ms"),
        "fwdbwd_temp_vs_C3": ("C3 temp MB", "fwdbwd_temp_bytes"),
        "dx_vs_C3": ("C3 dx ms", "dx_ms"),
        "dw_vs_C3": ("C3 dw ms", "dw_ms"),
    }
    for title, field in tables:
        rows = []
        for shape, dtype in groups:
            c3 = by.get((shape, dtype, labels[0]))
            first = next(r for r in recs if r["shape"] == shape and r["dtype"] == dtype)
            row = [f"{shape} ({first['N']},{first['HW']},{first['HW']},{first['C']}->{first['F']})", dtype]
            head, base_field = base_col[field]
            value = c3.get(base_field) if c3 else None
            row.append(value / 2**20 if (value is not None and base_field.endswith("bytes")) else value)
            row += [by.get((shape, dtype, lab), {}).get(field) for lab in labels]
            rows.append(row)
        out.append(f"**{title}**\n\n" + common.markdown_table(["shape", "dtype", base_col[field][0]] + labels, rows))
    return "\n\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = common.size_parser(
        "benchmarks.conv", __doc__, gpu="the suites' shapes and batch sizes (H100/H200-class)",
        tiny="one tiny shape (smoke test)")
    p.add_argument("--shapes", default=None, help="comma-separated shape names to keep (see GPU_SHAPES/CPU_SHAPES)")
    p.add_argument("--kinds", default=",".join(sympad.KINDS), help="comma-separated kinds; C3 is always included")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--implementation", default=None, choices=sympad.IMPLEMENTATIONS, help="force a C*sp formulation")
    p.add_argument("--compare", action="store_true", help="C3, C2 and C2sp under every formulation")
    p.add_argument("--formulations", default=None, help="with --compare: comma-separated subset of formulations")
    p.add_argument("--compare-kind", default="C2sp", help="with --compare: the symmetric kind compared (C2sp, C4sp)")
    p.add_argument("--via", default="linen", choices=("linen", "op"))
    common.add_run_args(
        p,
        repeats="timed rounds (default 7, 15 with --gpu)",
        inner="calls per timed sample (default 1, 20 with --gpu)",
        markdown="write the markdown tables here (default: stdout)",
        deadline="skip what would start after this many seconds",
    )
    p.add_argument("--passes", action="store_true", help="also time the input and the kernel gradient alone")
    p.add_argument("--depthwise", action="store_true", help="depthwise convs (feature_group_count = C = F)")
    p.add_argument("--no-forward", action="store_true", help="time forward+backward only (halves compiles)")
    return p.parse_args(argv)


def select_shapes(args: argparse.Namespace) -> tuple[LayerShape, ...]:
    shapes = GPU_SHAPES if args.gpu else TINY_SHAPES if args.tiny else CPU_SHAPES
    if args.shapes:
        keep = args.shapes.split(",")
        unknown = set(keep) - {s.name for s in shapes}
        if unknown:
            raise SystemExit(f"unknown shapes {sorted(unknown)}; valid: {[s.name for s in shapes]}")
        shapes = tuple(s for s in shapes if s.name in keep)
    return shapes


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    report = common.Report(args.out, stream=None if args.out else sys.stdout)
    report.write({"record": "environment", "bench": "conv", **common.environment()})
    records = run(
        select_shapes(args),
        dtypes=args.dtypes.split(","),
        kinds=common.parse_kinds(args.kinds),
        implementation=args.implementation,
        compare=args.compare,
        via=args.via,
        warmup=args.warmup,
        repeats=args.repeats or (15 if args.gpu else 7),
        report=report,
        deadline=common.Deadline(args.deadline),
        compile_workers=args.compile_workers,
        passes=args.passes,
        depthwise=args.depthwise,
        formulations=args.formulations.split(",") if args.formulations else None,
        compare_kind=args.compare_kind,
        inner=args.inner or (GPU_INNER if args.gpu else 1),
        forward=not args.no_forward,
    )
    report.close()
    table = markdown(records)
    common.emit_markdown(table, args.markdown)
    return records


if __name__ == "__main__":
    errors.run_cli(main)

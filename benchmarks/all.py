"""Every benchmark in one command, most important first, inside a wall-clock budget.

    python -m benchmarks.all --gpu --out results/ --deadline 200 --resume   # H100/H200: see benchmarks/gpu.sh
    python -m benchmarks.all --out /tmp/bench                                # CPU-sized
    python -m benchmarks.all --tiny --out /tmp/bench                         # smoke test

Writes ``results.jsonl`` (one environment record per run, then one record per
measurement, ``{"record": "skipped", ...}`` for what the budget left out) and
``results.md`` (the markdown tables of every step) under ``--out``.
``--resume`` continues an earlier run into the same ``--out`` on the same
device: groups already measured are not measured again, a group that two runs
started and neither finished (killed by a time limit) is given up, and
``results.md`` covers every run; the last line says what is left.

Steps, in order (GPU set; the CPU and tiny sets shrink the same steps), the
measurements still missing on a GPU first (BENCHMARKS.md):

1. SNGAN G+D step, C2sp generator at 384 channels vs C3 at 256;
2. ResNet-56 CIFAR train step at batch 512, float32 and bfloat16 (GPU: C2sp also as
   pad_select and pad_concat, see GPU_B512_FORMULATIONS);
3. layer, bfloat16, every kind through the factory (C2sp as ``'auto'`` picks; GPU:
   C3, C2 and C2sp, the kinds the targets compare);
4. Table 1 networks at depths 20/56/110;
5. ResNet-56 at batch 128, float32;
6. layer, float32, every kind (GPU: C3, C2, C2sp);
7. layer, bfloat16: C3, C2 and C2sp under each formulation;
8. layer, float32: C3, C2 and C2sp under each formulation;
9. ResNet-20 and ResNet-110 train steps, batch 128 (CPU: ResNet-20 in bfloat16);
10. ResNet19 (128 px) G+D step;
11. GPU only: layer, C4 and C4sp, float32 and bfloat16;
12. several GAN seeds in one program (``benchmarks.seeds``): the SNGAN train step with 1, 2 and 4
    seeds (GPU: vmapped and looped; elsewhere the form ``'auto'`` picks).

Formulation columns are labelled ``C2sp:<formulation>``; layer records say
what ``'auto'`` picks for their shape (``auto_choice``). On an accelerator,
where compiling with autotuning takes far longer than timing (H200: about 1 s
per layer program, 30 s and more per ResNet-56 train step), the defaults are
leaner: no forward-only layer programs, the networks with C3, C2 and C2sp only
and no per-formulation network variants, and only the formulations that can
win there in the layer comparison (``--kinds`` and ``--formulations`` override).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import sympad
from benchmarks import common, conv, models, seeds
from sympad.train import errors

#: Formulations compared (the automatic choice is one of them; records name it).
FORMULATIONS = (
    "pad_select", "pad_concat", "group_sum", "select_crop", "concat_crop", "split_grad", "split_dw", "embed", "im2col"
)
#: On a GPU the others lost to these at every suite shape (BENCHMARKS.md, "GPU: NVIDIA H200");
#: im2col (one GEMM) is not measured there yet.
GPU_FORMULATIONS = ("pad_select", "pad_concat", "embed", "im2col")
GPU_MODEL_KINDS = ("C3", "C2", "C2sp")
#: ResNet-56 at batch 512 on a GPU also runs C2sp under these: there the automatic choice
#: (embed below 128 channels, C3's FLOPs) is least certain, and the issue's baseline
#: measured pad_concat faster than C3 there (DESIGN.md section 5).
GPU_B512_FORMULATIONS = ("pad_select", "pad_concat")


def steps(
    size: str, *, kinds: Sequence[str] | None = None, formulations: Sequence[str] | None = None
) -> list[tuple[str, dict]]:
    """(title, spec) of every step for size 'gpu' | 'cpu' | 'tiny', most important first.

    ``kinds`` and ``formulations`` replace the size's defaults (see the module docstring).
    """
    gpu = size == "gpu"
    shapes = {"gpu": conv.GPU_SHAPES, "cpu": conv.CPU_SHAPES, "tiny": conv.TINY_SHAPES}[size]
    sizes = {"gpu": models.GPU, "cpu": models.CPU, "tiny": models.TINY}[size]
    resnet_main = [r for r in sizes.resnet if r[0] == 56] or list(sizes.resnet[:1])
    resnet_rest = [r for r in sizes.resnet if r not in resnet_main]
    # On a GPU the kinds the targets compare come first; C4/C4sp follow in the last step.
    layer_kinds = tuple(kinds or (GPU_MODEL_KINDS if gpu else sympad.KINDS))
    late_kinds = ("C3",) + (() if kinds else tuple(k for k in sympad.KINDS if k not in layer_kinds))
    model_kinds = tuple(kinds or (GPU_MODEL_KINDS if gpu else sympad.KINDS))
    compared = tuple(formulations if formulations is not None else (GPU_FORMULATIONS if gpu else FORMULATIONS))
    model_formulations = tuple(formulations if formulations is not None else (() if gpu else FORMULATIONS))
    b512_formulations = GPU_B512_FORMULATIONS if gpu and formulations is None else model_formulations

    def layer(dtypes: tuple[str, ...], compare: bool, kinds: tuple[str, ...] = layer_kinds) -> dict:
        return {  # C3 alone compares nothing: no shapes then
            "bench": "conv", "shapes": shapes if len(kinds) > 1 else (), "dtypes": dtypes, "compare": compare,
            "kinds": kinds, "formulations": compared, "forward": not gpu,
        }

    def nets(suites: tuple[str, ...], resnet=None, formulations: tuple[str, ...] = model_formulations) -> dict:
        spec = {"bench": "models", "sizes": sizes, "suites": suites, "formulations": formulations, "kinds": model_kinds}
        return spec if resnet is None else {**spec, "resnet": resnet}

    return [
        ("SNGAN G+D step", nets(("sngan",))),
        ("ResNet-56 CIFAR train step, larger batch / bfloat16", nets(("resnet",), resnet_main[1:], b512_formulations)),
        ("Layer, bfloat16, every kind", layer(("bfloat16",), False)),
        ("Table 1 networks", nets(("table1",), formulations=())),
        ("ResNet-56 CIFAR train step", nets(("resnet",), resnet_main[:1])),
        ("Layer, float32, every kind", layer(("float32",), False)),
        ("Layer, bfloat16, formulations of C2sp", layer(("bfloat16",), True)),
        ("Layer, float32, formulations of C2sp", layer(("float32",), True)),
        ("ResNet-20 / ResNet-110 train step", nets(("resnet",), resnet_rest, formulations=())),
        ("ResNet19 G+D step", nets(("resnet19",), formulations=())),
        ("Layer, the other kinds (GPU: C4, C4sp)", layer(("float32", "bfloat16"), False, late_kinds)),
        ("Several GAN seeds in one program", {"bench": "seeds", "size": size,
                                              "forms": ("vmap", "loop") if gpu else ()}),
    ]


def _cases(spec: dict) -> list[models.Case]:
    sizes = spec["sizes"]
    if "resnet" in spec:
        sizes = dataclasses.replace(sizes, resnet=tuple(spec["resnet"]))
    return models.build_cases(sizes, suites=spec["suites"], kinds=spec["kinds"], formulations=spec["formulations"])


def groups(spec: dict) -> list[str]:
    """The groups a step measures (each timed together, ratios within it), in order."""
    if spec["bench"] == "conv":
        return [conv.group_key(s.name, d) for d in spec["dtypes"] for s in spec["shapes"]]
    if spec["bench"] == "seeds":
        return [c.group for c in seeds.build_cases(spec["size"], forms=spec["forms"])]
    return list(dict.fromkeys(c.group for c in _cases(spec)))


def run_step(
    spec: dict,
    *,
    report: common.Report,
    deadline: common.Deadline,
    repeats: int | None,
    accelerator: bool,
    done: Collection[str] = (),
    compile_workers: int | None = None,
) -> list[dict]:
    if spec["bench"] == "conv":
        return conv.run(
            spec["shapes"],
            dtypes=spec["dtypes"],
            compare=spec["compare"],
            kinds=spec["kinds"],
            formulations=spec["formulations"] if spec["compare"] else None,
            repeats=repeats or 10,
            inner=conv.GPU_INNER if accelerator else 1,
            forward=spec["forward"],
            report=report,
            deadline=deadline,
            done=done,
            compile_workers=compile_workers,
        )
    if spec["bench"] == "seeds":
        return seeds.run(seeds.build_cases(spec["size"], forms=spec["forms"]), repeats=repeats or 5, report=report,
                         deadline=deadline, done=done)
    inner = models.GPU_INNER if accelerator else 1
    return models.run(
        _cases(spec), repeats=repeats or 5, inner=inner, report=report, deadline=deadline, done=done,
        compile_workers=compile_workers,
    )


#: A group that this many runs started and none finished is given up on resume.
MAX_TRIES = 2


def read_records(path: Path) -> list[dict]:
    """The records of an earlier run; a last line cut off by a kill is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def progress(records: Sequence[dict], step: int) -> tuple[set[str], set[str]]:
    """(measured, given up) groups of one step in ``records``."""
    mine = [r for r in records if r.get("step") == step]
    measured = {r["group"] for r in mine if r.get("record") in ("conv", "model", "seeds")}
    tries = collections.Counter(r["group"] for r in mine if r.get("record") == "started")
    return measured, {g for g, n in tries.items() if n >= MAX_TRIES and g not in measured}


def _check_same_device(records: Sequence[dict], env: dict, size: str, out: Path) -> None:
    for r in records:
        if r.get("record") == "environment" and (r.get("device"), r.get("size")) != (env["device"], size):
            raise SystemExit(
                f"--resume: {out} holds results measured on {r.get('device')!r} ({r.get('size')} set); "
                f"this run is on {env['device']!r} ({size} set). Ratios are only compared within one device: "
                "use another --out."
            )


def render(records: Sequence[dict], numbered: Sequence[tuple[int, str, dict]]) -> tuple[str, list[str]]:
    """results.md for ``records`` of every run, and what is left ("step N: group [(given up)]")."""
    runs = [r for r in records if r.get("record") == "environment"]
    lines = [f"# sympad benchmarks ({runs[-1]['size'] if runs else '?'})", ""]
    for env in runs:
        lines.append(
            f"- run of {env['date']} · {env['device']} ({env['backend']}, {env['cpu']}) · jax {env['jax']} · "
            f"jaxlib {env['jaxlib']} · flax {env['flax']} · XLA_FLAGS={env['XLA_FLAGS']!r} · git {env['git']} · "
            f"`{' '.join(env['argv'])}`"
        )
    sections, left = ["\n".join(lines)], []
    for number, title, spec in numbered:
        mine = [r for r in records if r.get("step") == number]
        measured, given_up = progress(records, number)
        planned = groups(spec)
        todo = [g for g in planned if g not in measured]
        left += [f"step {number}: {g}" + (" (given up)" if g in given_up else "") for g in todo]
        body = {"conv": conv.markdown, "seeds": seeds.markdown}.get(spec["bench"], models.markdown)(mine)
        notes = []
        if given_up:
            notes.append(f"given up (started {MAX_TRIES} times, never finished): {', '.join(sorted(given_up))}")
        if not planned:
            notes.append("(nothing to measure in this size set)")
        if todo and len(given_up) < len(todo):
            notes.append(f"not measured yet: {', '.join(g for g in todo if g not in given_up)}")
        sections.append(f"## {number}. {title}\n\n" + "\n\n".join(([body] if measured else []) + notes))
    return "\n\n".join(sections) + "\n", left


def main(argv: Sequence[str] | None = None) -> Path:
    p = common.size_parser(
        "benchmarks.all", __doc__, gpu="the GPU set (H100/H200-class)", tiny="the tiny set (smoke test)"
    )
    p.add_argument("--out", required=True, help="directory for results.jsonl and results.md")
    p.add_argument("--deadline", type=float, default=None, help="seconds; steps and groups after it are skipped")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default: each bench's)")
    p.add_argument("--steps", default=None, help="comma-separated step numbers to run (default: all)")
    p.add_argument("--kinds", default=None, help="comma-separated kinds (default: all; C3 always)")
    p.add_argument(
        "--formulations",
        default=None,
        help="C2sp formulations compared (layers) and added (networks); '' for none (default: per size)",
    )
    p.add_argument(
        "--compile-workers", type=int, default=None,
        help="programs compiled at once (default: CPUs, at most 16); 1 keeps GPU autotuning runs apart",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out: measure only what it lacks")
    p.add_argument("--summary", action="store_true", help="measure nothing: rewrite results.md, print what is left")
    args = p.parse_args(argv)

    size = "gpu" if args.gpu else "tiny" if args.tiny else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, md = out / "results.jsonl", out / "results.md"
    keep = {int(s) for s in args.steps.split(",")} if args.steps else None
    kinds = common.parse_kinds(args.kinds) if args.kinds else None
    formulations = None if args.formulations is None else [f for f in args.formulations.split(",") if f]
    numbered = [
        (number, title, spec)
        for number, (title, spec) in enumerate(steps(size, kinds=kinds, formulations=formulations), 1)
        if keep is None or number in keep
    ]
    prior = read_records(jsonl) if (args.resume or args.summary) else []
    report = common.Report(None if args.summary else jsonl)
    if not args.summary:
        env = common.environment()
        if args.resume:
            _check_same_device(prior, env, size, out)
        report.write({"record": "environment", "bench": "all", "size": size, **env})
        deadline = common.Deadline(args.deadline)
        start = time.monotonic()
        for number, title, spec in numbered:
            report.context = {"step": number}
            measured, given_up = progress(prior, number)
            if set(groups(spec)) <= measured | given_up:
                continue
            if deadline.expired():
                report.write({"record": "skipped", "bench": "all", "title": title})
                continue
            print(f"[{time.monotonic() - start:6.1f}s] step {number}: {title}", flush=True)
            run_step(
                spec,
                report=report,
                deadline=deadline,
                repeats=args.repeats,
                accelerator=env["backend"] != "cpu",
                done=measured | given_up,
                compile_workers=args.compile_workers,
            )
            md.write_text(render(prior + report.records, numbered)[0])
        report.context = {}
    text, left = render(prior + report.records, numbered)
    md.write_text(text)
    report.close()
    status = f"{len(left)} groups left ({'; '.join(left[:6])}{' ...' if len(left) > 6 else ''})" if left else "complete"
    if left and all(g.endswith("(given up)") for g in left):
        status = f"complete but for {len(left)} groups given up ({'; '.join(left)})"
    print(f"done: {jsonl} {md}; {status}", flush=True)
    return out


if __name__ == "__main__":
    errors.run_cli(main)

"""Every benchmark in one command, most important first, inside a wall-clock budget.

    python -m benchmarks.all --gpu --out results/ --deadline 210   # H100/H200: see benchmarks/gpu.sh
    python -m benchmarks.all --out /tmp/bench                        # CPU-sized
    python -m benchmarks.all --tiny --out /tmp/bench                 # smoke test

Writes ``results.jsonl`` (one environment record, then one record per
measurement, ``{"record": "skipped", ...}`` for what the budget left out) and
``results.md`` (the markdown tables of every step) under ``--out``.

Steps, in order (GPU set; the CPU and tiny sets shrink the same steps), the
measurements still missing on a GPU first (BENCHMARKS.md):

1. SNGAN G+D step, C2sp generator at 384 channels vs C3 at 256;
2. ResNet-56 CIFAR train step at batch 512, float32 and bfloat16;
3. Table 1 networks at depths 20/56/110;
4. ResNet-56 at batch 128, float32;
5. layer, float32, every kind through the factory (C2sp as ``'auto'`` picks);
6. layer, bfloat16: C3, C2 and C2sp under each formulation;
7. layer, bfloat16, every kind;
8. layer, float32: C3, C2 and C2sp under each formulation;
9. ResNet-20 and ResNet-110 train steps, batch 128;
10. ResNet19 (128 px) G+D step.

Formulation columns are labelled ``C2sp:<formulation>``; layer records say
what ``'auto'`` picks for their shape (``auto_choice``). On an accelerator,
where compiling with autotuning takes far longer than timing (H200: about 1 s
per layer program, 30 s and more per ResNet-56 train step), the defaults are
leaner: no forward-only layer programs, the networks with C3, C2 and C2sp only
and no per-formulation network variants, and only the formulations that can
win there in the layer comparison (``--kinds`` and ``--formulations`` override).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sympad
from benchmarks import common, conv, models

#: Formulations compared (the automatic choice is one of them; records name it).
FORMULATIONS = (
    "pad_select", "pad_concat", "group_sum", "select_crop", "concat_crop", "split_grad", "split_dw", "embed", "im2col"
)
#: On a GPU the others measured 0.3-0.9x of C3 at every suite shape (BENCHMARKS.md);
#: im2col (one GEMM) is not measured there yet.
GPU_FORMULATIONS = ("pad_select", "pad_concat", "embed", "im2col")
GPU_MODEL_KINDS = ("C3", "C2", "C2sp")


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
    layer_kinds = tuple(kinds or sympad.KINDS)
    model_kinds = tuple(kinds or (GPU_MODEL_KINDS if gpu else sympad.KINDS))
    compared = tuple(formulations if formulations is not None else (GPU_FORMULATIONS if gpu else FORMULATIONS))
    model_formulations = tuple(formulations if formulations is not None else (() if gpu else FORMULATIONS))

    def layer(dtype: str, compare: bool) -> dict:
        return {
            "bench": "conv", "shapes": shapes, "dtypes": (dtype,), "compare": compare,
            "kinds": layer_kinds, "formulations": compared, "forward": not gpu,
        }

    def nets(suites: tuple[str, ...], resnet=None, formulations: tuple[str, ...] = model_formulations) -> dict:
        spec = {"bench": "models", "sizes": sizes, "suites": suites, "formulations": formulations, "kinds": model_kinds}
        return spec if resnet is None else {**spec, "resnet": resnet}

    return [
        ("SNGAN G+D step", nets(("sngan",))),
        ("ResNet-56 CIFAR train step, larger batch / bfloat16", nets(("resnet",), resnet_main[1:])),
        ("Table 1 networks", nets(("table1",), formulations=())),
        ("ResNet-56 CIFAR train step", nets(("resnet",), resnet_main[:1])),
        ("Layer, float32, every kind", layer("float32", False)),
        ("Layer, bfloat16, formulations of C2sp", layer("bfloat16", True)),
        ("Layer, bfloat16, every kind", layer("bfloat16", False)),
        ("Layer, float32, formulations of C2sp", layer("float32", True)),
        ("ResNet-20 / ResNet-110 train step", nets(("resnet",), resnet_rest, formulations=())),
        ("ResNet19 G+D step", nets(("resnet19",), formulations=())),
    ]


def run_step(
    spec: dict, *, report: common.Report, deadline: common.Deadline, repeats: int | None, accelerator: bool
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
        )
    sizes = spec["sizes"]
    if "resnet" in spec:
        if not spec["resnet"]:
            return []
        sizes = dataclasses.replace(sizes, resnet=tuple(spec["resnet"]))
    cases = models.build_cases(sizes, suites=spec["suites"], kinds=spec["kinds"], formulations=spec["formulations"])
    inner = models.GPU_INNER if accelerator else 1
    return models.run(cases, repeats=repeats or 5, inner=inner, report=report, deadline=deadline)


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--gpu", action="store_true")
    size.add_argument("--tiny", action="store_true")
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
    args = p.parse_args(argv)

    size = "gpu" if args.gpu else "tiny" if args.tiny else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, md = out / "results.jsonl", out / "results.md"
    report = common.Report(jsonl)
    env = common.environment()
    report.write({"record": "environment", "bench": "all", "size": size, **env})
    deadline = common.Deadline(args.deadline)
    keep = {int(s) for s in args.steps.split(",")} if args.steps else None
    start = time.monotonic()
    sections = [
        f"# sympad benchmarks ({size})\n\n{env['date']} · {env['device']} ({env['backend']}, {env['cpu']}) · "
        f"jax {env['jax']} · jaxlib {env['jaxlib']} · flax {env['flax']} · XLA_FLAGS={env['XLA_FLAGS']!r} · "
        f"git {env['git']}\n\nCommand: `{' '.join(sys.argv)}`"
    ]
    kinds = args.kinds.split(",") if args.kinds else None
    formulations = None if args.formulations is None else [f for f in args.formulations.split(",") if f]
    for number, (title, spec) in enumerate(steps(size, kinds=kinds, formulations=formulations), 1):
        if keep is not None and number not in keep:
            continue
        if deadline.expired():
            report.write({"record": "skipped", "bench": "all", "step": number, "title": title})
            sections.append(f"## {number}. {title}\n\nskipped: over the time budget")
            continue
        t0 = time.monotonic()
        print(f"[{time.monotonic() - start:6.1f}s] step {number}: {title}", flush=True)
        records = run_step(
            spec, report=report, deadline=deadline, repeats=args.repeats, accelerator=env["backend"] != "cpu"
        )
        table = conv.markdown(records) if spec["bench"] == "conv" else models.markdown(records)
        sections.append(f"## {number}. {title}\n\n({time.monotonic() - t0:.0f} s)\n\n{table}")
        md.write_text("\n\n".join(sections) + "\n")
    md.write_text("\n\n".join(sections) + "\n")
    report.close()
    print(f"[{time.monotonic() - start:6.1f}s] done: {jsonl} {md}", flush=True)
    return out


if __name__ == "__main__":
    main()

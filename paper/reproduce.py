"""Reruns the paper's experiments at a chosen budget and writes REPRODUCTION.md.

    python -m paper.reproduce --budget=smoke            # CPU, minutes: every pipeline end to end
    python -m paper.reproduce --budget=short            # about ten minutes on one H100/H200-class GPU
    python -m paper.reproduce --budget=paper            # the paper's settings (days on one GPU)

Every row runs the project's own command line in a subprocess (the exact command is recorded
beside the number), so a row can be rerun by hand. Results of each budget go to
``<out>/results_<budget>.json``; the report is rebuilt from every results file in ``<out>`` so
budgets accumulate, and rows never measured say so. Claims are judged on what was measured; a
claim that fails is reported as a finding, never hidden.

Experiments: Figure 3 (Q curves), Figure 2 (feature-map shift), Figure 4 left (CIFAR-10 ResNet
test error against parameters for C3/C2/C2sp/C4/C4sp) and Table 4 top (SNGAN CIFAR-10 with
C2/C2sp/C3/C4sp generators, FID/KID in whichever feature network is available).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUDGETS", "Budget", "main", "render_report"]

ALL_KINDS = ("C3", "C2", "C2sp", "C4", "C4sp")
GAN_KINDS = ("C2", "C2sp", "C3", "C4sp")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of each experiment a budget runs."""

    name: str
    description: str
    q_images: int
    q_inits: int
    q_depth: int  # plain ResNet depth of the Q-curve and shift networks (the paper: 56)
    classify_depths: tuple[int, ...]
    classify_args: str  # appended to the config argument (after the colon)
    classify_overrides: tuple[str, ...]  # --config.* flags
    gan_args: str
    gan_overrides: tuple[str, ...]
    gan_samples: int
    real_data: bool  # CIFAR-10 from the shared JPEG folders (else the bundled digits)


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke",
        description="CPU smoke run: tiny models for a handful of steps on the bundled digits; checks the pipelines, not the claims",
        q_images=32,
        q_inits=1,
        q_depth=20,
        classify_depths=(8,),
        classify_args="runlocal",
        classify_overrides=("--config.num_train_steps=4", "--config.eval_every=4", "--config.checkpoint_every=4"),
        gan_args="runlocal",
        gan_overrides=("--config.num_train_steps=4", "--config.log_every=2", "--config.sample_every=4", "--config.checkpoint_every=4"),
        gan_samples=128,
        real_data=False,
    ),
    "short": Budget(
        name="short",
        description="about ten minutes on one H100/H200-class GPU: ResNet-20 for 10 epochs, SNGAN for 2k G steps, CIFAR-10 folders",
        q_images=1000,
        q_inits=3,
        q_depth=56,
        classify_depths=(20,),
        classify_args="",
        classify_overrides=("--config.num_epochs=10",),
        gan_args="",
        gan_overrides=("--config.num_train_steps=2000", "--config.sample_every=500", "--config.checkpoint_every=1000"),
        gan_samples=5000,
        real_data=True,
    ),
    "paper": Budget(
        name="paper",
        description="the paper's settings: ResNet depths 20-146 for 300 epochs, SNGAN 200k D steps, 10k samples vs the test split",
        q_images=10000,
        q_inits=10,
        q_depth=56,
        classify_depths=(20, 38, 56, 74, 92, 110, 128, 146),
        classify_args="",
        classify_overrides=(),
        gan_args="budget=table4",
        gan_overrides=(),
        gan_samples=10000,
        real_data=True,
    ),
}

# The paper's numbers (Table 4 top: SNGAN on CIFAR-10, FID; C2 did not converge).
PAPER_FID = {"C3": "24.12", "C2sp": "23.35", "C4sp": "24.86", "C4": "26.45", "C2": "does not converge"}


# ----------------------------------------------------------------------------
# Running commands.
# ----------------------------------------------------------------------------


def _run(argv: Sequence[str], *, log: Path) -> tuple[str, float]:
    """Runs one command of this project, logging its output; returns (command, seconds)."""
    command = shlex.join(["python", *argv[1:]]) if argv[0] == sys.executable else shlex.join(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(list(argv), stdout=f, stderr=subprocess.STDOUT, cwd=_repo_root(), check=False)
    seconds = time.time() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"`{command}` failed with exit code {proc.returncode}; log {log}:\n{tail}")
    return command, seconds


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def cifar10_folder(cache_dir: Path) -> Path | None:
    """The CIFAR-10 JPEG folders (train/ and test/), extracted from ../shared/data once; None if absent."""
    target = cache_dir / "cifar10-jpeg"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    shared = _repo_root().parent / "shared" / "data"
    archives = [shared / "cifar10-train.tar.gz", shared / "cifar10-test.tar.gz"]
    if not all(a.is_file() for a in archives):
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(cache_dir, filter="data")
    return target


# ----------------------------------------------------------------------------
# Experiments.
# ----------------------------------------------------------------------------


def run_q_curves(budget: Budget, out: Path, *, data: str, kinds: Sequence[str]) -> dict[str, Any]:
    """Figure 3: Q of every conv output of an untrained plain ResNet-56."""
    argv = [sys.executable, "-m", "paper.analysis", "q-curves", f"--out={out / 'q_curves'}", f"--kinds={','.join(kinds)}",
            f"--num_images={budget.q_images}", f"--inits={budget.q_inits}", f"--depth={budget.q_depth}", f"--data={data}"]
    command, seconds = _run(argv, log=out / "logs" / "q_curves.log")
    payload = json.loads((out / "q_curves" / "q_curves.json").read_text())
    return {
        "command": command,
        "seconds": seconds,
        "data": payload.get("source", data),
        "q_final_over_q0": {k: v["q_final_over_q0"] for k, v in payload["kinds"].items()},
        "claims": payload["claims"],
    }


def run_shift(budget: Budget, out: Path, *, data: str, kinds: Sequence[str]) -> dict[str, Any]:
    """Figure 2: centroid drift of the mean post-ReLU maps, untrained plain ResNet-56."""
    argv = [sys.executable, "-m", "paper.analysis", "shift", f"--out={out / 'shift'}", f"--kinds={','.join(kinds)}",
            f"--num_images={budget.q_images}", f"--inits={max(1, min(budget.q_inits, 3))}", f"--depth={budget.q_depth}",
            f"--data={data}"]
    command, seconds = _run(argv, log=out / "logs" / "shift.log")
    payload = json.loads((out / "shift" / "shift.json").read_text())
    stages = {k: [list(map(float, o)) for o in v["stage_offsets_mean"]] for k, v in payload["kinds"].items()}
    return {"command": command, "seconds": seconds, "stage_ends": payload["stage_ends"], "stage_offsets": stages}


def run_classify(budget: Budget, out: Path, *, data: str, kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Figure 4 left: CIFAR-10 ResNet (no bottleneck) per depth and kernel kind."""
    rows = []
    for depth in budget.classify_depths:
        for kind in kinds:
            workdir = out / "classify" / f"resnet{depth}_{kind}"
            args = ",".join(a for a in (f"depth={depth}", f"kernel={kind}", f"data={data}", budget.classify_args) if a)
            argv = [sys.executable, "-m", "classify.main", f"--config=configs/classify/resnet_cifar.py:{args}",
                    f"--workdir={workdir}", *budget.classify_overrides]
            command, seconds = _run(argv, log=out / "logs" / f"classify_resnet{depth}_{kind}.log")
            final = json.loads((workdir / "final_metrics.json").read_text())
            rows.append({
                "depth": depth, "kind": kind, "command": command, "seconds": seconds,
                "test_error": final.get("test_error"), "num_params": final.get("num_params"),
            })
    return rows


def run_gan(budget: Budget, out: Path, *, data: str, kinds: Sequence[str], reference: str) -> list[dict[str, Any]]:
    """Table 4 top: SNGAN with each generator kind; FID/KID in the available feature network."""
    rows = []
    for kind in kinds:
        workdir = out / "gan" / f"sngan_{kind}"
        args = ",".join(a for a in (f"kernel={kind}", f"data={data}", budget.gan_args) if a)
        train = [sys.executable, "-m", "gan.main", f"--config=configs/gan/sngan_cifar10.py:{args}",
                 f"--workdir={workdir}", *budget.gan_overrides]
        train_cmd, train_s = _run(train, log=out / "logs" / f"gan_{kind}_train.log")
        samples = workdir / "samples.npz"
        sample = [sys.executable, "-m", "gan.sample", f"--workdir={workdir}", f"--num={budget.gan_samples}",
                  f"--out={samples}"]
        sample_cmd, _ = _run(sample, log=out / "logs" / f"gan_{kind}_sample.log")
        result_json = workdir / "eval.json"
        evaluate = [sys.executable, "-m", "gan.evaluate", f"--samples={samples}", f"--reference={reference}",
                    f"--out={result_json}"]
        eval_cmd, _ = _run(evaluate, log=out / "logs" / f"gan_{kind}_eval.log")
        result = json.loads(result_json.read_text())
        diverged = _diverged(workdir)
        rows.append({
            "kind": kind,
            "commands": [train_cmd, sample_cmd, eval_cmd],
            "seconds": train_s,
            "metrics": result.get("metrics", {}),
            "feature_network": result.get("feature_network", {}).get("name"),
            "num_samples": result.get("num_samples"),
            "protocol": result.get("protocol"),
            "generator_params": _generator_params(workdir),
            "diverged": diverged,
        })
    return rows


def _generator_params(workdir: Path) -> int | None:
    summary = workdir / "model_summary.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("generator", {}).get("params")


def _diverged(workdir: Path) -> bool:
    """True when any logged loss is not finite."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return False
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if any(isinstance(v, float) and v != v for v in record.values()):
            return True
    return False


def environment() -> dict[str, Any]:
    """Hardware and software of this run."""
    import jax

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in ("jaxlib", "flax", "optax", "orbax.checkpoint"):
        try:
            versions[name] = __import__(name, fromlist=["__version__"]).__version__
        except (ImportError, AttributeError):
            pass
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "holds" if value else "does not hold"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _claims_section(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Claims at each measured budget", "",
             "| claim | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]

    def q_claim(r, key):
        return r.get("q_curves", {}).get("claims", {}).get(key)

    def drift_claim(r):
        shift = r.get("shift", {}).get("stage_offsets")
        if not shift or "C2" not in shift or "C2sp" not in shift:
            return None
        last_c2 = shift["C2"][-1]
        last_sp = shift["C2sp"][-1]
        return bool(min(last_c2) < -1.0 and max(abs(v) for v in last_sp) < 1.0)

    def error_claim(r):
        rows = {(x["depth"], x["kind"]): x for x in r.get("classify", [])}
        pairs = [(rows[(d, "C2sp")], rows[(d, "C3")]) for d, k in rows if k == "C2sp" and (d, "C3") in rows]
        if not pairs:
            return None
        return all(sp["test_error"] <= c3["test_error"] + 0.005 and sp["num_params"] < c3["num_params"] for sp, c3 in pairs)

    def gan_claim(r):
        rows = {x["kind"]: x for x in r.get("gan", [])}
        fid = {k: _fid(x) for k, x in rows.items()}
        if not {"C2sp", "C3"} <= set(fid) or fid["C2sp"] is None or fid["C3"] is None:
            return None
        return fid["C2sp"] <= fid["C3"]

    claims = [
        ("Fig. 3: C2 and C4 lose Q fastest", lambda r: q_claim(r, "c2_c4_lose_q_fastest")),
        ("Fig. 3: C2sp above C2, C4sp above C4 at the last layer",
         lambda r: (None if q_claim(r, "c2sp_above_c2_at_end") is None else
                    bool(q_claim(r, "c2sp_above_c2_at_end") and q_claim(r, "c4sp_above_c4_at_end")))),
        ("Fig. 3: C2sp above C3 at the last layer", lambda r: q_claim(r, "c2sp_above_c3_at_end")),
        ("Fig. 2: C2 maps drift toward the top-left (>1 px by the last stage), C2sp stay within 1 px", drift_claim),
        ("Fig. 4: C2sp reaches C3's test error (within 0.5 pt) with fewer parameters", error_claim),
        ("Table 4: C2sp FID <= C3 FID (same feature network)", gan_claim),
    ]
    for name, fn in claims:
        lines.append(f"| {name} | " + " | ".join(_fmt(fn(r)) for r in results.values()) + " |")
    lines += ["", "A smoke budget trains for a handful of steps: its verdicts check the pipeline, not the paper.", ""]
    return lines


def _fid(row: dict[str, Any]) -> float | None:
    for key, value in row.get("metrics", {}).items():
        if key.startswith("fid"):
            return float(value)
    return None


def render_report(results: dict[str, dict[str, Any]]) -> str:
    """REPRODUCTION.md from the results of each budget (keyed by budget name)."""
    order = [b for b in BUDGETS if b in results]
    results = {b: results[b] for b in order}
    lines = ["# Reproduction report", "",
             "Generated by `python -m paper.reproduce`; every number below was measured by the command beside it. ",
             "The paper's numbers are from Wu et al. 2019. Budgets:", ""]
    for name, budget in BUDGETS.items():
        status = f"measured {results[name]['env']['date']} on {results[name]['env']['device']}" if name in results else "not measured yet"
        lines.append(f"- **{name}**: {budget.description} — {status}.")
    lines.append("")
    for name, r in results.items():
        env = r["env"]
        lines.append(f"- {name}: {env['device']}, {env['cpu_count']} CPU cores, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
                     + f"; `{r['command']}`")
    lines.append("")
    lines += _claims_section(results)

    lines += ["## Figure 3: Q of the last conv over Q of the first (untrained plain ResNet; depth 56 except smoke: 20)", "",
              "Paper: C2 and C4 attenuate fastest, C2sp and C4sp slower, C2sp above C3 (figure only, no numbers).", "",
              "| budget | data | " + " | ".join(ALL_KINDS) + " | command |", "|---|---|" + "---|" * len(ALL_KINDS) + "---|"]
    for name, r in results.items():
        q = r.get("q_curves")
        if q:
            lines.append(f"| {name} | {q['data']} | " + " | ".join(_fmt(q["q_final_over_q0"].get(k)) for k in ALL_KINDS) + f" | `{q['command']}` |")
    lines.append("")

    lines += ["## Figure 2: centroid offset (dy, dx) of the mean post-ReLU map at each stage end, input px", "",
              "Paper: C2 maps shift toward the top-left, C2sp maps stay centred (figure only).", "",
              "| budget | kind | offsets per stage | command |", "|---|---|---|---|"]
    for name, r in results.items():
        s = r.get("shift")
        if s:
            for kind, offsets in s["stage_offsets"].items():
                text = ", ".join(f"({dy:+.2f}, {dx:+.2f})" for dy, dx in offsets)
                lines.append(f"| {name} | {kind} | {text} | `{s['command']}` |")
    lines.append("")

    lines += ["## Figure 4 left: CIFAR-10 ResNet, test error against parameters", "",
              "Paper: C2sp reaches C3's accuracy with 60-70% of the parameters; C2 and C4 are worse and saturate early (figure only).", "",
              "| budget | depth | kind | params | test error | train s | command |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for row in r.get("classify", []):
            lines.append(f"| {name} | {row['depth']} | {row['kind']} | {row['num_params']:,} | {_fmt(row['test_error'])} | "
                         f"{row['seconds']:.0f} | `{row['command']}` |")
    lines.append("")

    lines += ["## Table 4 top: SNGAN on CIFAR-10", "",
              "The paper's FID is Inception FID on 10k samples vs the test split. Numbers from another feature network",
              "(`*_offline_cifar10`: the project's small CIFAR-10 classifier) are not comparable with it.", "",
              "| budget | G kind | G params | paper FID | measured | network | samples | diverged | commands |",
              "|---|---|---|---|---|---|---|---|---|"]
    for kind in GAN_KINDS:
        measured_any = False
        for name, r in results.items():
            for row in r.get("gan", []):
                if row["kind"] != kind:
                    continue
                measured_any = True
                metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in row["metrics"].items() if k.startswith(("fid", "kid", "is")))
                commands = "<br>".join(f"`{c}`" for c in row["commands"])
                params = f"{row['generator_params']:,}" if row.get("generator_params") else "?"
                lines.append(f"| {name} | {kind} | {params} | {PAPER_FID[kind]} | {metrics} | {row['feature_network']} | "
                             f"{row['num_samples']} | {'yes' if row['diverged'] else 'no'} | {commands} |")
        if not measured_any:
            lines.append(f"| - | {kind} | - | {PAPER_FID[kind]} | not measured | - | - | - | - |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=tuple(BUDGETS), required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="results, logs and run directories")
    parser.add_argument("--report", type=Path, default=Path("REPRODUCTION.md"), help="report path ('' for none)")
    parser.add_argument("--kinds", default=",".join(ALL_KINDS), help="kernel kinds to train (subset of C3,C2,C2sp,C4,C4sp)")
    parser.add_argument("--skip", default="", help="comma-separated experiments to skip: q_curves,shift,classify,gan")
    parser.add_argument("--data", default="", help="override the dataset (a sympad.data name or folder:PATH)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown:
        raise SystemExit(f"--kinds: unknown kinds {unknown}; choose from {','.join(ALL_KINDS)}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if not {"C2", "C2sp", "C3"} & set(kinds):
        skip.add("shift")  # The shift comparison needs at least one of C2, C2sp, C3.
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    data = args.data
    reference = "digits"
    analysis_data = "digits"
    if not data and budget.real_data:
        folder = cifar10_folder(out / "data")
        if folder is None:
            data, reference = "cifar10", "cifar10"  # TFDS; its error says how to prepare it.
        else:
            data, reference = f"folder:{folder}", f"folder:{folder}"
        analysis_data = "auto"
    data = data or "digits"
    if args.data:
        reference = analysis_data = args.data

    result: dict[str, Any] = {"budget": budget.name, "command": shlex.join(["python", "-m", "paper.reproduce", *(argv or sys.argv[1:])]),
                              "env": environment()}
    steps = [
        ("q_curves", lambda: run_q_curves(budget, out, data=analysis_data, kinds=kinds)),
        ("shift", lambda: run_shift(budget, out, data=analysis_data, kinds=[k for k in ("C2", "C2sp", "C3") if k in kinds])),
        ("classify", lambda: run_classify(budget, out, data=data, kinds=kinds)),
        ("gan", lambda: run_gan(budget, out, data=data, kinds=[k for k in GAN_KINDS if k in kinds], reference=reference)),
    ]
    for name, step in steps:
        if name in skip:
            continue
        print(f"[reproduce:{budget.name}] {name} ...", flush=True)
        result[name] = step()
        # Written after every experiment so an interrupted run keeps what it measured.
        (out / f"results_{budget.name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")

    if str(args.report):
        all_results = {}
        for path in sorted(out.glob("results_*.json")):
            loaded = json.loads(path.read_text())
            all_results[loaded["budget"]] = loaded
        args.report.write_text(render_report(all_results), encoding="utf-8")
        print(f"[reproduce] wrote {args.report}")
    return result


if __name__ == "__main__":
    main()

"""The paper's headline results on real CIFAR-10, one sub-10-minute device run at a time.

    python -m paper.reproduce --budget=device --deadline=480 --out=OUT   # GPU machine: next entries of the plan
    python -m paper.reproduce --evaluate --out=OUT                       # CPU: merge OUT's results, FID/KID
    python -m paper.reproduce --report                                   # CPU: REPRODUCTION.md
    python -m paper.reproduce --write-plan                               # CPU: re-size the plan from measured steps
    python -m paper.reproduce --budget=smoke --out=/tmp/smoke            # CPU: the same pipeline, tiny, on digits

The plan (``paper/plan.json``, written by ``paper.campaign.plan.build_plan``) is an ordered queue
of experiments, each with its exact config and budget; the results file (``paper/results.jsonl``)
is committed. A device run reads both, runs the entries not yet done whose estimates fit its
deadline and writes ``OUT/results.jsonl``, ``OUT/log.txt`` and the GAN samples (uint8 ``.npz``,
16 MiB at most each). Data: copy ``../shared/data/cifar10-*.tar.gz`` into ``data/`` (git-ignored)
and carry it to the device. See ``paper.campaign``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from paper.campaign import evaluate as evaluate_lib
from paper.campaign import plan as plan_lib
from paper.campaign import report as report_lib
from paper.campaign import results as results_lib
from paper.campaign import runner
from sympad.train import errors

REPO = Path(__file__).resolve().parents[1]
PLAN = Path("paper/plan.json")
RESULTS = Path("paper/results.jsonl")
SECTIONS = REPO / "paper" / "sections"


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m paper.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=("device", "smoke"), help="run the plan (device) or the CPU smoke plan")
    p.add_argument("--deadline", type=float, default=plan_lib.RUN_SECONDS,
                   help="seconds this run may take; no entry starts that cannot finish by then")
    p.add_argument("--out", type=Path, help="the run's results directory (written by --budget, read by --evaluate)")
    p.add_argument("--plan", type=Path, default=PLAN, help="plan file (default %(default)s)")
    p.add_argument("--results", type=Path, default=RESULTS, help="committed results file (default %(default)s)")
    p.add_argument("--workroot", type=Path, default=None, help="run directories (default runs/campaign)")
    p.add_argument("--data", default="", help="CIFAR-10 as 'folder:PATH' (default: extract the archives in data/)")
    p.add_argument("--commit", default="", help="the code's commit (default: git rev-parse HEAD)")
    p.add_argument("--retry", default="", help="comma-separated entry ids to run again though failed or given up")
    p.add_argument("--evaluate", action="store_true", help="merge --out's results, FID/KID of its samples (CPU)")
    p.add_argument("--feature_network", default="inception", choices=("auto", "inception", "offline"),
                   help="gan.metrics feature network for --evaluate (default %(default)s: the paper's)")
    p.add_argument("--inception_weights", default="", help="gan.metrics inception weights file ('' = its default)")
    p.add_argument("--reference", default="", help="reference dataset for --evaluate (default: CIFAR-10 test JPEGs)")
    p.add_argument("--num_reference", type=int, default=0, help="reference images (default 0: the protocol's 10k)")
    p.add_argument("--report", nargs="?", const=Path("REPRODUCTION.md"), type=Path, default=None,
                   help="write the report (default path REPRODUCTION.md)")
    p.add_argument("--write-plan", action="store_true", help="rewrite --plan from build_plan and measured step times")
    return p


def measured_step_times(entries: Sequence[plan_lib.Entry], records: Sequence[dict]) -> dict[str, float]:
    """Median measured step time per sizing key, from 'done' GPU results of the plan's entries."""
    sizing = {e.id: e.sizing for e in entries if e.sizing}
    times: dict[str, list[float]] = {}
    for r in records:
        if (r.get("record") == "result" and r.get("status") == "done" and r.get("step_time_s")
                and r.get("id") in sizing and "gpu" in str(r.get("device", ""))):
            times.setdefault(sizing[r["id"]], []).append(float(r["step_time_s"]))
    return {k: statistics.median(v) for k, v in times.items()}


def _evaluate(args: argparse.Namespace, command: str) -> list[dict]:
    import ml_collections

    from gan.metrics import (
        build_evaluator,  # the CPU side only: the device run never needs it
    )

    if args.out is None:
        raise SystemExit("--evaluate needs --out=DIR (a device run's results directory)")
    added = evaluate_lib.merge_run(args.out, args.results)
    print(f"[reproduce] merged {added} records of {args.out} into {args.results}")
    reference = args.reference
    if not reference:
        folder = runner.cifar10_folder(REPO / "data")
        if folder is None:
            raise SystemExit("--reference: no CIFAR-10 JPEG archives in data/ or ../shared/data; pass --reference")
        reference = f"folder:{folder}"
    config = ml_collections.ConfigDict({"data": reference, "eval": dict(
        feature_network=args.feature_network, inception_weights=args.inception_weights, protocol="test10k",
        reference_dataset=reference, num_reference=args.num_reference)})
    evaluator = build_evaluator(config)
    network = evaluate_lib.network_label(evaluator.network.identity)
    env = runner.environment()
    conditional = [e.id for e in plan_lib.load_plan(args.plan) if e.set.get("conditional")] \
        if args.plan.is_file() else []
    new = evaluate_lib.evaluate_samples(results_lib.read(args.results), run_dir=args.out, scorer=evaluator.report,
                                        network=network, device=env["device"], command=command,
                                        conditional=conditional)
    for record in new:
        results_lib.append(args.results, record)
        print(f"[reproduce] {record['id']}: {record['metrics']}")
    print(f"[reproduce] {len(new)} evaluations with {network} appended to {args.results}")
    return new


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = shlex.join(["python", "-m", "paper.reproduce", *(sys.argv[1:] if argv is None else argv)])
    if not (args.budget or args.evaluate or args.report or args.write_plan):
        raise SystemExit("nothing to do: pass --budget=device|smoke, --evaluate, --report or --write-plan")
    if args.write_plan:
        entries = plan_lib.load_plan(args.plan) if args.plan.is_file() else plan_lib.build_plan()
        times = measured_step_times(entries, results_lib.read(args.results))
        new = plan_lib.build_plan(times)
        args.plan.write_text(plan_lib.plan_json(new, step_times={**plan_lib.STEP_TIMES, **times}), encoding="utf-8")
        print(f"[reproduce] wrote {args.plan} ({len(new)} entries; measured step times: {times or 'none'})")
    if args.budget:
        if args.out is None:
            raise SystemExit("--budget needs --out=DIR")
        smoke = args.budget == "smoke"
        entries = plan_lib.build_smoke_plan() if smoke else plan_lib.load_plan(args.plan)
        # Smoke runs never see (or feed) the committed results.
        committed = [] if smoke else results_lib.read(args.results)
        retry = [s for s in args.retry.split(",") if s]
        unknown = sorted(set(retry) - {e.id for e in entries})
        if unknown:
            raise SystemExit(f"--retry: unknown entry ids {unknown}")
        runner.run_plan(entries, out=args.out, deadline_s=args.deadline, committed=committed, workroot=args.workroot,
                        data=args.data, commit=args.commit, command=command, retry=retry, budget=args.budget)
    if args.evaluate:
        _evaluate(args, command)
    if args.report:
        entries = plan_lib.load_plan(args.plan)
        records = results_lib.read(args.results)
        sections = sorted(SECTIONS.glob("*.md")) if SECTIONS.is_dir() else []
        args.report.write_text(report_lib.render_report(entries, records, sections=sections,
                                                        plan_path=str(args.plan), results_path=str(args.results)),
                               encoding="utf-8")
        print(f"[reproduce] wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run_cli(main))

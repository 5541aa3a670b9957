"""The paper's headline results on real CIFAR-10, one sub-10-minute device run at a time.

    bash paper/device/prepare.sh                          # here: what the GPU run carries
    bash paper/device/run.sh OUT                          # GPU machine: pre-flight, the next entries, scored there
    python -m paper.reproduce evaluate --out=OUT          # CPU: merge, check the device's features
    python -m paper.reproduce report                      # CPU: REPRODUCTION.md
    python -m paper.reproduce write-plan                  # CPU: re-size the plan from measured steps
    python -m paper.reproduce run smoke --out=/tmp/smoke  # CPU: the same pipeline, tiny, on digits

The plan (``paper/plan.json``, written by ``paper.campaign.plan.build_plan``) is an ordered queue
of experiments, each with its exact config and budget; the results file (``paper/results.jsonl``)
is committed. A device run reads both, runs the entries not yet done whose estimates fit its
deadline (a group's entries at once, sized to one step count), scores each GAN entry's 10k samples
there (``--score``, Inception FID/KID from the carried weights) and writes ``OUT/results.jsonl``,
``OUT/log.txt`` and the first samples of each GAN entry with their device features (uint8
``.npz``). ``paper/device/`` prepares and runs it; see ``paper.campaign``. Before the plan, the
pre-flight (``paper.campaign.preflight``) trains the first group's processes one step each and
scores one Inception batch; a failed check stops the run (exit status 3), and so does a run in which
no entry finished (exit status 1). A kind's seeds train in one process (the plan's
``seeds_per_process``; a GPU never seen before measures how many pay off first,
``paper.campaign.calibration``). ``--set`` and ``--samples`` cut every entry (a check of the path,
recorded as such, never merged into the committed results).

Each mode is a subcommand (``run [device|smoke]``, ``score``, ``evaluate``, ``report [PATH]``,
``write-plan``, ``probe``) that shares the run's flags (``--out``, ``--plan``, ``--results``, the
scorer's). The subcommand is a spelling of its flag: ``evaluate --out=OUT`` is ``--evaluate
--out=OUT``, and flags can still combine modes in one call (``--budget=smoke --evaluate``: the
smoke test's whole pipeline).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from paper.campaign import calibration, runner
from paper.campaign import evaluate as evaluate_lib
from paper.campaign import plan as plan_lib
from paper.campaign import preflight as preflight_lib
from paper.campaign import report as report_lib
from paper.campaign import results as results_lib
from sympad.train import errors

REPO = Path(__file__).resolve().parents[1]
PLAN = Path("paper/plan.json")
RESULTS = Path("paper/results.jsonl")
SECTIONS = REPO / "paper" / "sections"
#: What ``paper/device/prepare.sh`` writes (git-ignored) and the device run carries.
CARRY = REPO / "paper" / "device" / "carry"
#: The compact Inception weights in CARRY (gan.metrics.inception_formats.HALF_FORM).
CARRIED_WEIGHTS = CARRY / "fid_inception_f16.npz"
#: Exit status of a run stopped by its pre-flight, and of one in which no entry finished.
PREFLIGHT_FAILED, NOTHING_FINISHED = 3, 1


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m paper.reproduce", description=__doc__.splitlines()[0],
                              usage="%(prog)s {run [device|smoke],score,evaluate,report [PATH],write-plan,probe} "
                                    "[flags]\n       %(prog)s [--budget=device|smoke] [--score] [--evaluate] "
                                    "[--report [PATH]] [--write-plan] [flags]")
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
    p.add_argument("--return_samples", type=int, default=runner.RETURN_SAMPLES,
                   help="samples of each GAN entry copied to --out (default %(default)s)")
    p.add_argument("--no_score", action="store_true", help="--budget: do not score the samples on this machine")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="--budget: override NAME of every entry's 'set' (the plan's names, e.g. steps=2, "
                        "batch_size=8; repeatable): a check of the path, recorded as a cut, never merged")
    p.add_argument("--samples", type=int, default=None,
                   help="--budget: GAN samples of every entry instead of the plan's (a cut, as --set)")
    p.add_argument("--no_preflight", action="store_true", help="--budget: start the plan without the pre-flight")
    p.add_argument("--preflight_s", type=float, default=0.0,
                   help="--budget: seconds the pre-flight may take (default 0: 60 on a GPU, 900 on a CPU)")
    p.add_argument("--seeds_per_process", type=int, default=0,
                   help="--budget: seeds of a kind one process trains (default 0: the device's calibration, "
                        "else the plan's)")
    p.add_argument("--no_calibrate", action="store_true",
                   help="--budget: on a GPU never calibrated, keep the plan's seeds_per_process (no measurement)")
    p.add_argument("--calibrate_s", type=float, default=calibration.CALIBRATION_S,
                   help="--budget: seconds the calibration may take (default %(default)s)")
    p.add_argument("--probe", action="store_true",
                   help="the pre-flight's device checks, in a process of their own (the pre-flight starts it)")
    p.add_argument("--score", action="store_true",
                   help="FID/KID of run --run's samples in --workroot, written to --out (the runner starts it)")
    p.add_argument("--run", default="", help="--score: the run id")
    p.add_argument("--evaluate", action="store_true",
                   help="merge --out's results; check the device's features on this CPU; score what the device did not")
    p.add_argument("--feature_network", default="inception", choices=("auto", "inception", "offline"),
                   help="gan.metrics feature network for --score/--evaluate (default %(default)s: the paper's)")
    p.add_argument("--inception_weights", default="",
                   help="Inception weights file ('' = the carried paper/device/carry/fid_inception_f16.npz if "
                        "present, else gan.metrics' fetched cache)")
    p.add_argument("--reference", default="", help="reference dataset for --evaluate (default: CIFAR-10 test JPEGs)")
    p.add_argument("--num_reference", type=int, default=0, help="reference images (default 0: the protocol's 10k)")
    p.add_argument("--feature_batch", type=int, default=200,
                   help="images per feature-network call (default %(default)s)")
    p.add_argument("--report", nargs="?", const=Path("REPRODUCTION.md"), type=Path, default=None,
                   help="write the report (default path REPRODUCTION.md)")
    p.add_argument("--write-plan", action="store_true", help="rewrite --plan from build_plan and measured step times")
    return p


#: The subcommands and the mode flag each one spells.
SUBCOMMANDS = {"run": "--budget", "score": "--score", "evaluate": "--evaluate", "report": "--report",
               "write-plan": "--write-plan", "probe": "--probe"}


def from_subcommand(argv: Sequence[str]) -> list[str]:
    """A command line with its subcommand as the mode flag it spells: ``run [device|smoke]`` ->
    ``--budget=device|smoke`` (device by default), ``report [PATH]`` -> ``--report [PATH]``, any
    other -> its flag. A command line that starts with a flag is returned as it is."""
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        return argv
    name, rest = argv[0], argv[1:]
    if name == "run":
        budget = rest.pop(0) if rest and rest[0] in ("device", "smoke") else "device"
        return [f"--budget={budget}", *rest]
    return [SUBCOMMANDS[name], *rest]


def measured_step_times(entries: Sequence[plan_lib.Entry], records: Sequence[dict]) -> dict[str, float]:
    """Median measured step time per sizing key, from 'done' GPU results of the plan's entries."""
    sizing = {e.id: e.sizing for e in entries if e.sizing}
    times: dict[str, list[float]] = {}
    for r in records:
        if (r.get("record") == "result" and r.get("status") == "done" and r.get("step_time_s")
                and r.get("id") in sizing and "gpu" in str(r.get("device", ""))):
            times.setdefault(sizing[r["id"]], []).append(float(r["step_time_s"]))
    return {k: statistics.median(v) for k, v in times.items()}


def _inception_weights(args: argparse.Namespace) -> str:
    if args.inception_weights or args.feature_network == "offline":
        return args.inception_weights
    return str(CARRIED_WEIGHTS) if CARRIED_WEIGHTS.is_file() else ""


def _evaluator(args: argparse.Namespace):
    """gan.metrics' evaluator of the paper's protocol: 10k samples vs the CIFAR-10 test JPEGs."""
    import ml_collections

    from gan.metrics import build_evaluator

    reference = args.reference
    if not reference:
        folder = runner.cifar10_folder(REPO / "data")
        if folder is None:
            raise SystemExit("--reference: no CIFAR-10 JPEG archives in data/ or ../shared/data; pass --reference")
        reference = f"folder:{folder}"
    config = ml_collections.ConfigDict({"data": reference, "eval": dict(
        feature_network=args.feature_network, inception_weights=_inception_weights(args), protocol="test10k",
        reference_dataset=reference, num_reference=args.num_reference, batch_size=args.feature_batch,
        precision_recall=False)})  # the paper reports FID; k-NN precision/recall would cost the run's time
    return build_evaluator(config)


def _pool_features(evaluator):
    from gan.metrics import extract_features

    batch = evaluator.settings.batch_size
    return lambda images: extract_features(evaluator.network, images, batch_size=batch, keys=("pool",))["pool"]


def _score(args: argparse.Namespace, command: str) -> list[dict]:
    """The device side: scores run --run's samples where they were made."""
    if args.out is None or not args.run or args.workroot is None:
        raise SystemExit("--score needs --out, --run and --workroot (the runner passes them)")
    evaluator = _evaluator(args)
    network = evaluate_lib.network_label(evaluator.network.identity)
    env = runner.environment()
    out_results = args.out / "results.jsonl"
    new = evaluate_lib.score_run(results_lib.read(out_results), run_id=args.run, workroot=args.workroot,
                                 out=args.out, scorer=evaluator.report, features=_pool_features(evaluator),
                                 network=network, device=env["device"], command=command)
    for record in new:
        results_lib.append(out_results, record)
        print(f"[reproduce] {record['id']}: {record['metrics']}", flush=True)
    return new


def _evaluate(args: argparse.Namespace, command: str) -> list[dict]:
    """The CPU side: merges a device run, checks its features here, scores what it did not."""
    if args.out is None:
        raise SystemExit("--evaluate needs --out=DIR (a device run's results directory)")
    cut = next((r["cut"] for r in results_lib.read(args.out / "results.jsonl") if r.get("cut")), None)
    if cut:
        raise SystemExit(f"--evaluate: {args.out} holds a cut run ({cut}: --set/--samples), a check of the path; "
                         "not merged")
    added = evaluate_lib.merge_run(args.out, args.results)
    print(f"[reproduce] merged {added} records of {args.out} into {args.results}")
    evaluator = _evaluator(args)
    network = evaluate_lib.network_label(evaluator.network.identity)
    env = runner.environment()
    records = results_lib.read(args.results)
    new = evaluate_lib.crosscheck(records, run_dir=args.out, features=_pool_features(evaluator), network=network,
                                  identity=evaluator.network.identity, device=env["device"], command=command)
    scored = {(r["id"], r["of_run"]) for r in records if r.get("record") == "evaluation"}
    conditional = [e.id for e in plan_lib.load_plan(args.plan) if e.set.get("conditional")] \
        if args.plan.is_file() else []
    # Results the device already scored are only cross-checked, never scored again here.
    unscored = [r for r in records if not (r.get("record") == "result" and (r["id"], r["run"]) in scored)]
    new += evaluate_lib.evaluate_samples(unscored, run_dir=args.out, scorer=evaluator.report,
                                         network=network, device=env["device"], command=command,
                                         conditional=conditional)
    for record in new:
        results_lib.append(args.results, record)
        shown = record.get("metrics") or {k: record[k] for k in ("max_rel_diff", "mean_rel_diff") if k in record}
        print(f"[reproduce] {record['record']} {record['id']}: {shown}")
    print(f"[reproduce] {len(new)} records with {network} appended to {args.results}")
    return new


def _feature_flags(args: argparse.Namespace) -> list[str]:
    """The scorer's flags: its network, weights, reference and batch (the scorer's and the probe's)."""
    weights = _inception_weights(args)
    flags = [f"--feature_network={args.feature_network}", f"--num_reference={args.num_reference}",
             f"--feature_batch={args.feature_batch}"]
    flags += [f"--inception_weights={weights}"] if weights else []
    return flags + ([f"--reference={args.reference}"] if args.reference else [])


def _score_command(args: argparse.Namespace) -> list[str]:
    """The runner's scoring step for this run's samples; [] (with a note) without Inception weights."""
    from gan.metrics.inception_weights import cached_weights

    if args.feature_network != "offline" and not _inception_weights(args) and cached_weights() is None:
        print("[reproduce] note: no Inception weights carried or cached: samples come back unscored "
              "(bash paper/device/prepare.sh carries them)", flush=True)
        return []
    return ["python", "-m", "paper.reproduce", "--score", f"--out={args.out}", *_feature_flags(args)]


def _probe(args: argparse.Namespace) -> int:
    """The pre-flight's device checks (``--probe``): one JSON line on stdout; exit 1 when one fails."""

    def network():
        evaluator = _evaluator(args)
        return _pool_features(evaluator), evaluator.network.identity

    result = preflight_lib.probe(network=None if args.no_score else network, batch=args.feature_batch,
                                 wheels=sorted((CARRY / "wheels").glob("*.whl")), expect_gpu=bool(runner.gpus()))
    print(preflight_lib.PROBE_PREFIX + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def _cut(args: argparse.Namespace, entries: list[plan_lib.Entry]) -> tuple[list[plan_lib.Entry], dict]:
    """``entries`` with ``--set`` and ``--samples`` applied, and the cut as recorded ({} for none)."""
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set: expected NAME=VALUE, got {item!r}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    cut = {**overrides, **({"samples": args.samples} if args.samples is not None else {})}
    if not cut:
        return entries, {}
    out = []
    for e in entries:
        changed = {"set": {**e.set, **overrides}} if overrides and e.suite in plan_lib.CONFIG_KEYS else {}
        if args.samples is not None and e.samples:
            changed["samples"] = args.samples
        try:
            out.append(plan_lib.Entry.from_dict({**e.to_dict(), **changed}))
        except ValueError as err:
            raise SystemExit(f"--set: {err}") from None
    return out, cut


def _preflight(args: argparse.Namespace, entries: Sequence[plan_lib.Entry], *, records: Sequence[dict],
               retry: Sequence[str], packing: int, seeds_per_process: int, data: str, score: Sequence[str]
               ) -> dict | None:
    """Runs the pre-flight on the entries the run starts first; prints its verdict; None when none is left."""
    batch = runner.first_batch(entries, records, retry=retry, packing=packing, seeds_per_process=seeds_per_process)
    if not batch:
        return None
    probe = ["python", "-m", "paper.reproduce", "--probe", *(_feature_flags(args) if score else ["--no_score"])]
    limit = args.preflight_s or preflight_lib.default_limit(gpu=bool(runner.gpus()))
    workroot = args.workroot or runner.WORKROOT
    summary = preflight_lib.preflight(batch, workroot=workroot, data=data, probe_argv=probe, limit_s=limit,
                                      seeds_per_process=seeds_per_process)
    print(summary["verdict"], flush=True)
    with open(args.out / "log.txt", "a", encoding="utf-8") as f:
        f.write(f"{summary['verdict']}\n")
        if summary.get("log_tail"):
            f.write(f"===== the failed check's output =====\n{summary['log_tail']}\n")
    workroot.mkdir(parents=True, exist_ok=True)
    (workroot / "preflight.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _seeds_per_process(args: argparse.Namespace, entries: Sequence[plan_lib.Entry], records: Sequence[dict], *,
                       smoke: bool, calibrate: bool, spare_s: float = math.inf) -> int:
    """Seeds of a kind one process trains: ``--seeds_per_process``, else this device's calibration
    record, else (``calibrate``, on a GPU never calibrated) a calibration now, else the plan's.

    A calibration takes at most ``--calibrate_s`` and ``spare_s`` (the seconds the run can give it:
    before the plan, what its first group leaves; after it, what is left), and none below
    :data:`paper.campaign.calibration.MIN_S`.
    """
    default = plan_lib.SEEDS_PER_PROCESS if smoke else plan_lib.load_seeds_per_process(args.plan)
    if args.seeds_per_process:
        return args.seeds_per_process
    device = runner.environment()["device"]
    found = calibration.recorded(records, device)
    if found is not None:
        return int(found["seeds_per_process"])
    if not calibrate or smoke or args.no_calibrate or not runner.gpus() or calibration.max_seeds_per_kind(entries) < 2:
        return default
    limit = min(args.calibrate_s, spare_s)
    if limit < calibration.MIN_S:
        print(f"[calibration] not now: {max(0.0, spare_s):.0f} s to spare; {default} seeds per process (the plan's)",
              flush=True)
        return default
    record = calibration.calibrate(entries, out=args.out, workroot=args.workroot or runner.WORKROOT, device=device,
                                   default=default, limit_s=limit)
    rates = ", ".join(f"{m['num_seeds']}: {m['images_per_s']:.0f}" for m in record["measured"]) or "none"
    print(f"[calibration] {record['status']} in {record['seconds']:.0f} s: images/s by seeds per process {rates}; "
          f"{record['seeds_per_process']} per process", flush=True)
    return int(record["seeds_per_process"])


def _run_budget(args: argparse.Namespace, command: str, started: float) -> int:
    """``--budget``: the pre-flight, the seeds per process, then the plan until the deadline."""
    if args.out is None:
        raise SystemExit("--budget needs --out=DIR")
    smoke = args.budget == "smoke"
    entries, cut = _cut(args, plan_lib.build_smoke_plan() if smoke else plan_lib.load_plan(args.plan))
    # Smoke and cut runs never see (or feed) the committed results.
    committed = [] if smoke or cut else results_lib.read(args.results)
    retry = [s for s in args.retry.split(",") if s]
    unknown = sorted(set(retry) - {e.id for e in entries})
    if unknown:
        raise SystemExit(f"--retry: unknown entry ids {unknown}")
    packing = plan_lib.PACKING if smoke else plan_lib.load_packing(args.plan)
    # A smoke run scores only with weights named (a CPU needs minutes per 1k images).
    score = () if args.no_score or (smoke and not args.inception_weights) else _score_command(args)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or (runner.cifar10_arg() if runner.needs_cifar10(entries) else "")
    records = [*committed, *results_lib.read(args.out / "results.jsonl")]
    # The pre-flight compiles what the run will: the recorded (or the plan's) seeds per process.
    seeds = _seeds_per_process(args, entries, records, smoke=smoke, calibrate=False)
    summary = None
    if not args.no_preflight:
        summary = _preflight(args, entries, records=records, retry=retry, packing=packing, seeds_per_process=seeds,
                             data=data, score=score)
        if summary is not None and not summary["ok"]:
            return PREFLIGHT_FAILED
    # Calibrate now only if the first group still fits after it; else with the time the plan leaves.
    first = runner.first_batch(entries, records, retry=retry, packing=packing, seeds_per_process=seeds)
    left = args.deadline - (time.monotonic() - started)
    seeds = _seeds_per_process(args, entries, records, smoke=smoke, calibrate=True,
                               spare_s=left - max((e.estimate_s for e in first), default=0.0))
    written = runner.run_plan(
        entries, out=args.out, deadline_s=max(1.0, args.deadline - (time.monotonic() - started)), committed=committed,
        workroot=args.workroot, data=data, commit=args.commit, command=command, retry=retry, budget=args.budget,
        packing=packing, seeds_per_process=seeds, overhead=plan_lib.OVERHEAD_S, return_samples=args.return_samples,
        score=score, cut=cut, preflight={k: v for k, v in summary.items() if k != "verdict"} if summary else None)
    records = [*committed, *results_lib.read(args.out / "results.jsonl")]
    _seeds_per_process(args, entries, records, smoke=smoke, calibrate=True,
                       spare_s=args.deadline - (time.monotonic() - started) - calibration.END_MARGIN_S)
    why = _unfinished(entries, written, records)
    if why:
        print(f"[reproduce] {why}", file=sys.stderr, flush=True)
        return NOTHING_FINISHED
    return 0


def _unfinished(entries: Sequence[plan_lib.Entry], written: Sequence[dict], records: Sequence[dict]) -> str:
    """Why a run in which no entry finished (done, or partial: a benchmark resumed next time)
    failed; '' when one did, or when the plan is complete (``records``: all so far)."""
    results = [r for r in written if r.get("record") == "result"]
    if any(r["status"] in ("done", "partial") for r in results):
        return ""
    left = [e.id for e in entries if e.id not in results_lib.done_ids(records)]
    if not left:
        return ""
    if not results:
        return f"no entry started: {len(left)} left, none ready or fitting the deadline (see the [campaign] lines)"

    def last_line(text: str) -> str:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    return "no entry finished: " + "; ".join(
        f"{r['id']} {r['status']} (exit {r.get('exit_code')}: {last_line(r.get('log_tail', ''))})" for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(from_subcommand(sys.argv[1:] if argv is None else argv))
    command = shlex.join(["python", "-m", "paper.reproduce", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    if args.probe:
        return _probe(args)
    if not (args.budget or args.score or args.evaluate or args.report or args.write_plan):
        raise SystemExit("nothing to do: pass a subcommand (run [device|smoke], score, evaluate, report, write-plan) "
                         "or its flag (--budget=device|smoke, --score, --evaluate, --report, --write-plan)")
    if args.write_plan:
        entries = plan_lib.load_plan(args.plan) if args.plan.is_file() else plan_lib.build_plan()
        times = measured_step_times(entries, results_lib.read(args.results))
        new = plan_lib.build_plan(times)
        args.plan.write_text(plan_lib.plan_json(new, step_times={**plan_lib.STEP_TIMES, **times}), encoding="utf-8")
        print(f"[reproduce] wrote {args.plan} ({len(new)} entries; measured step times: {times or 'none'})")
    if args.budget:
        status = _run_budget(args, command, started)
        if status:
            return status
    if args.score:
        _score(args, command)
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

"""Runs the plan's next experiments inside a deadline; what it measures goes to ``OUT``.

One call = one device run: it reads the plan and the results so far (the committed file plus
``OUT/results.jsonl``), skips what is done, and starts an entry only if its estimate fits the time
left; every entry runs as the suites' own command lines in subprocesses, killed at the deadline
whatever they are doing. ``OUT`` receives ``results.jsonl`` (records: :mod:`paper.campaign.results`),
``log.txt`` (the tail of every command's output) and, for GAN entries, the samples as uint8
``.npz`` files of at most :data:`MAX_FILE_BYTES` (with their int32 class labels for a conditional
generator); run directories (checkpoints) stay in a separate
work root, so nothing large comes back. The runner itself never initializes JAX: the GPU belongs
to the experiment's process.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import shlex
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from paper import shared_data
from paper.campaign import artifacts
from paper.campaign import plan as plan_lib
from paper.campaign import results as results_lib
from paper.campaign.artifacts import MAX_FILE_BYTES, write_samples
from paper.campaign.plan import Entry, config_overrides
from paper.campaign.processes import Gpu, Process, gpus, group_env, spawn
from sympad.train import environment as renv

__all__ = ["MAX_FILE_BYTES", "MAX_TRIES", "RETURN_SAMPLES", "WORKROOT", "Gpu", "Process", "cifar10_arg",
           "cifar10_folder", "entry_commands", "environment", "first_batch", "gpus", "group_env", "group_steps",
           "needs_cifar10", "run_plan", "size_group", "spawn", "Trainer", "trainers", "write_samples"]

#: An entry killed or interrupted this many times is not started again (``retry`` overrides).
MAX_TRIES = 2
#: A killed entry's next estimate: this much more than the time it was given.
KILLED_GROWTH = 1.2
LOG_TAIL_CHARS = 6000
#: Samples of each GAN entry copied back (uint8, 6 MB at 32 px): with the 8-file, 64 MiB return
#: limit the scores are computed where the samples were made, and these let the CPU check them.
RETURN_SAMPLES = 2000
#: Steady logged intervals (after the first, which holds the compile) every packed trainer shows
#: before its group gets its step count.
CALIBRATION_INTERVALS = 2
#: Share of a measured rate the sizing counts on: trainers speed up as others finish, never slow.
RATE_SAFETY = 0.9
#: Seconds between looks at packed trainers.
POLL_S = 1.0

REPO = Path(__file__).resolve().parents[2]
#: The run directories (checkpoints, full samples) when the caller names none.
WORKROOT = REPO / "runs" / "campaign"


# ----------------------------------------------------------------------------------------------
# Environment and data, through the runtime's helpers.


def environment(*, commit: str = "") -> dict[str, Any]:
    """Device, versions and commit of this run, found without initializing JAX in this process
    (the runner leaves the accelerator to the experiments it starts): the GPU from nvidia-smi."""
    device = ""
    found_gpus = gpus()
    if found_gpus:
        device = f"{len(found_gpus)} x {found_gpus[0].name} (gpu)"
    if not device:
        device = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    found = {k: v for k, v in renv.versions().items() if v}
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
            "cpu_count": os.cpu_count(), "versions": found, "commit": commit or renv.git_commit() or "unknown"}


def cifar10_folder(target: Path) -> Path | None:
    """The CIFAR-10 JPEG folders (train/ and test/) extracted into ``target`` by paper.shared_data's
    one helper; the git-ignored ``data/`` copy carried to a device comes before the folder its
    resolver finds (``$SYMPAD_SHARED_DATA``, ``../shared/data``). None when no archives are found."""
    carried = REPO / "data"
    names = ("cifar10-train.tar.gz", "cifar10-test.tar.gz")
    try:
        return shared_data.cifar10_folder(
            cache_dir=target, archives=carried if all((carried / n).is_file() for n in names) else None)
    except FileNotFoundError:
        return None


def cifar10_arg() -> str:
    """The entries' ``{cifar10}``: ``'folder:PATH'`` of :func:`cifar10_folder` in ``data/``."""
    folder = cifar10_folder(REPO / "data")
    if folder is None:
        raise FileNotFoundError("no CIFAR-10 JPEG archives in data/ or ../shared/data: copy "
                                "cifar10-train.tar.gz and cifar10-test.tar.gz into data/ (git-ignored)")
    return f"folder:{folder}"


def needs_cifar10(entries: Sequence[Entry]) -> bool:
    """Whether any of ``entries`` trains on CIFAR-10 (its args hold ``'{cifar10}'``)."""
    return any("{cifar10}" in e.args.values() for e in entries)


# ----------------------------------------------------------------------------------------------
# Commands.


def _shown(path: Path | str) -> str:
    """A path as the report shows it: relative to the repository root when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _config_arg(entry: Entry, data: str) -> str:
    args = ",".join(f"{k}={data if v == '{cifar10}' else v}" for k, v in entry.args.items())
    return f"--config={entry.config}" + (f":{args}" if args else "")


def entry_commands(entry: Entry, *, workdir: Path, data: str = "", deadline_s: float = 0.0) -> list[list[str]]:
    """The command lines (argv, ``python`` first) an entry runs, in order."""
    if entry.suite == "gan":
        train = ["python", "-m", "gan.main", _config_arg(entry, data), f"--workdir={workdir}", *config_overrides(entry)]
        sample = ["python", "-m", "gan.sample", f"--workdir={workdir}", f"--num={entry.samples}",
                  f"--out={workdir / 'samples.npz'}"]
        return [train, sample] if entry.samples else [train]
    if entry.suite == "classify":
        return [["python", "-m", "classify.main", _config_arg(entry, data), f"--workdir={workdir}",
                 *config_overrides(entry)]]
    if entry.suite == "bench":
        return [[*entry.argv, f"--out={workdir}", f"--deadline={max(1, int(deadline_s))}"]]
    return [list(entry.argv)]


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One training process of a packed group: one entry, or several that differ only in their
    consecutive ``seed`` args, trained at once (``seeds=N``, the GAN suite's vmapped seeds).

    Attributes:
      entries: its entries in seed order.
    """

    entries: tuple[Entry, ...]

    @property
    def name(self) -> str:
        """Its work directory's name: the entry's id, or ``<first id>..<last seed>`` for several."""
        first = self.entries[0]
        return first.id if len(self.entries) == 1 else f"{first.id}..{self.entries[-1].args['seed']}"

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds it trains (() for one entry: its process is the entry's own command)."""
        return tuple(int(e.args["seed"]) for e in self.entries) if len(self.entries) > 1 else ()

    @property
    def entry(self) -> Entry:
        """What its commands are made from: the first entry, with ``seeds=N`` for several."""
        first = self.entries[0]
        if len(self.entries) == 1:
            return first
        return dataclasses.replace(first, id=self.name, args={**first.args, "seeds": len(self.entries)})


def _same_but_seed(a: Entry, b: Entry) -> bool:
    """Whether ``b`` is ``a`` with the next seed (and nothing else changed)."""
    if a.suite != "gan" or "seed" not in a.args or "seed" not in b.args:
        return False
    def rest(e: Entry) -> tuple:
        return {k: v for k, v in e.args.items() if k != "seed"}, dict(e.set), e.config, e.samples, e.group

    return rest(a) == rest(b) and int(b.args["seed"]) == int(a.args["seed"]) + 1


def trainers(entries: Sequence[Entry], *, seeds_per_process: int = 1) -> list[Trainer]:
    """``entries`` (in order) as the processes that train them: runs of consecutive entries that
    differ only by the next seed share one, up to ``seeds_per_process`` each."""
    if seeds_per_process < 1:
        raise ValueError(f"seeds_per_process must be >= 1, got {seeds_per_process}")
    out: list[list[Entry]] = []
    for e in entries:
        if out and len(out[-1]) < seeds_per_process and _same_but_seed(out[-1][-1], e):
            out[-1].append(e)
        else:
            out.append([e])
    return [Trainer(tuple(t)) for t in out]


# ----------------------------------------------------------------------------------------------
# The queue.


def _estimate(entry: Entry, tried: Mapping[str, Any], *, deadline_s: float, retry: bool) -> float:
    # A run that killed this entry gave it ``allotted_s``: it needs more than that, but never more
    # than a whole run, so a fresh run can always start it again; --retry asks for the plan's figure.
    if retry:
        return float(entry.estimate_s)
    return min(deadline_s, max(float(entry.estimate_s), KILLED_GROWTH * float(tried.get("allotted_s", 0.0))))


@dataclasses.dataclass
class _Run:
    """What one runner call shares between its entries."""

    out: Path
    workroot: Path
    end: float
    deadline_s: float
    run_id: str
    env: dict[str, Any]
    budget: str
    data: str
    clock: Callable[[], float]
    records: list[dict[str, Any]]
    written: list[dict[str, Any]]
    score: Sequence[str] = ()
    overhead: Mapping[str, float] = dataclasses.field(default_factory=dict)
    return_samples: int = RETURN_SAMPLES
    cut: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds_per_process: int = 1

    def write(self, record: dict[str, Any]) -> None:
        results_lib.append(self.out / "results.jsonl", record)
        self.records.append(record)
        self.written.append(record)

    def left(self) -> float:
        return self.end - self.clock()

    def cifar10(self) -> str:
        self.data = self.data or cifar10_arg()
        return self.data

    def fresh_workdir(self, entry: Entry) -> Path:
        workdir = self.workroot / entry.id
        if workdir.exists():
            shutil.rmtree(workdir)  # a fresh start: step and compile times of one uninterrupted run
        workdir.mkdir(parents=True)
        return workdir

    def result(self, entry: Entry, *, status: str, commands: Sequence[Sequence[str]], seconds: Sequence[float],
               rc: int, tail: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "record": "result", "id": entry.id, "run": self.run_id, "campaign": self.budget, "status": status,
            "experiment": entry.experiment, "suite": entry.suite, "budget": entry.budget, "fraction": entry.fraction,
            "seed": entry.args.get("seed"), "commands": [shlex.join(_shown_argv(c, self.data)) for c in commands],
            "seconds": [round(t, 1) for t in seconds], "exit_code": rc, "device": self.env["device"],
            "versions": self.env["versions"], "commit": self.env["commit"], "date": self.env["date"],
        }
        if entry.set.get("conditional"):
            record["conditional"] = True
        if self.cut:
            record["cut"] = self.cut
        if status != "done":
            record["log_tail"] = tail[-1500:]
        return record


def _log_tail(entry: Entry, workdir: Path, status: str, out: Path) -> str:
    log = workdir / "log.txt"
    tail = log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""
    with open(out / "log.txt", "a", encoding="utf-8") as f:
        f.write(f"\n===== {entry.id} ({status}) =====\n{tail}\n")
    return tail


def run_plan(entries: Sequence[Entry], *, out: Path, deadline_s: float, committed: Sequence[Mapping[str, Any]] = (),
             workroot: Path | None = None, data: str = "", commit: str = "", command: str = "",
             retry: Sequence[str] = (), budget: str = "device", packing: int = 1, seeds_per_process: int = 1,
             score: Sequence[str] = (),
             overhead: Mapping[str, float] | None = None, return_samples: int = RETURN_SAMPLES,
             cut: Mapping[str, Any] | None = None, preflight: Mapping[str, Any] | None = None,
             clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Runs the plan's pending entries in order until ``deadline_s`` seconds from now.

    Entries of one ``group`` (Table 4's kinds and seeds) run at once on the one device, in up to
    ``packing`` processes, a kind's consecutive seeds in one process (up to ``seeds_per_process``,
    trained as one vmapped program); once every one of them has logged a few steady
    step rates, the runner gives them all the same step count, the most that the slowest reaches
    before the deadline leaves time to sample and score (:func:`_run_group`). Other entries run
    one at a time with the step counts of the plan.

    Args:
      entries: the plan.
      out: results directory (``results.jsonl``, ``log.txt``, samples); a later call with the same
        ``out`` (or with its records committed) continues where it stopped.
      deadline_s: seconds from now; an entry starts only if its estimate fits what is left, and
        every command is killed at the deadline.
      committed: records of earlier runs (the committed results file).
      workroot: run directories (default ``runs/campaign`` under the repository root).
      data: the CIFAR-10 dataset argument ('folder:PATH'); '' to extract the shared archives on
        first use.
      commit: the code's commit, recorded with every result (default: ``git rev-parse HEAD``).
      command: the command line of this call, recorded.
      retry: entry ids to run again even if failed or given up (with the plan's estimate).
      budget: 'device' or 'smoke', recorded as the 'campaign' of the run and result records
        (a smoke run is never merged into the committed results).
      packing: processes of one group run at once (the plan's ``packing``).
      seeds_per_process: entries of a group that differ only in their seed train in one process,
        up to this many consecutive seeds (the plan's ``seeds_per_process``, or the device's
        calibration: :mod:`paper.campaign.calibration`).
      score: the command (argv, ``python`` first) that scores this run's GAN samples where they
        were made (``python -m paper.reproduce score ...``); run once after each group, with
        ``--run=<this run's id>`` added; () = no scoring here.
      overhead: the plan's fixed costs (seconds): 'sample', 'score' and 'margin' are kept free at
        the end of a group's training.
      return_samples: samples of each GAN entry copied to ``out`` (uint8, with their labels).
      cut: what the entries were cut to for a check of the path (e.g. ``{'steps': 2}``), recorded
        in the run and result records (such results are never the paper's); None for the plan.
      preflight: the pre-flight's summary (:mod:`paper.campaign.preflight`), recorded in the run record.
      clock: seconds (monotonic); tests may pass a fake.

    Returns:
      The records this call wrote.
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, got {deadline_s}")
    if packing < 1 or seeds_per_process < 1:
        raise ValueError(f"packing and seeds_per_process must be >= 1, got {packing} and {seeds_per_process}")
    out.mkdir(parents=True, exist_ok=True)
    env = environment(commit=commit)
    run = _Run(out=out, workroot=workroot or WORKROOT, end=clock() + deadline_s,
               deadline_s=deadline_s, run_id=f"{env['date'].replace(' ', 'T')}-{os.getpid()}", env=env,
               budget=budget, data=data, clock=clock, records=[*committed, *results_lib.read(out / "results.jsonl")],
               written=[], score=tuple(score), overhead=dict(overhead or {}), return_samples=return_samples,
               cut=dict(cut or {}), seeds_per_process=seeds_per_process)
    run.write({"record": "run", "run": run.run_id, "campaign": budget, "deadline_s": deadline_s, "command": command,
               "packing": packing, "seeds_per_process": seeds_per_process, **({"cut": run.cut} if run.cut else {}),
               **({"preflight": dict(preflight)} if preflight else {}), **env})
    for entry, batch in _batches(entries):
        ready, notes = _ready(batch, run.records, retry=retry, deadline_s=deadline_s)
        for note in notes:
            print(f"[campaign] {note}", flush=True)
        for part in _parts(ready, entry, packing, run.seeds_per_process):
            estimate, left = max(t for _, t in part), run.left()
            if estimate > left:
                why = ("never fits one run: re-size it" if estimate > deadline_s
                       else f"needs {estimate:.0f} s, {left:.0f} s left")
                print(f"[campaign] {', '.join(e.id for e, _ in part)}: not started ({why})", flush=True)
                continue
            if entry.group:
                _run_group([e for e, _ in part], run, estimate=estimate, group=batch)
            else:
                _run_single(part[0][0], run, estimate=estimate)
    done = results_lib.done_ids(run.records)
    left_ids = [e.id for e in entries if e.id not in done]
    print(f"[campaign] {len(done & {e.id for e in entries})}/{len(entries)} done; "
          f"left: {', '.join(left_ids) if left_ids else 'none'}", flush=True)
    return run.written


def _batches(entries: Sequence[Entry]) -> Iterator[tuple[Entry, list[Entry]]]:
    """Each group's first entry and the group in plan order, or an entry without a group and itself, in plan order."""
    handled: set[str] = set()
    for entry in entries:
        if entry.id in handled:
            continue
        batch = [e for e in entries if e.group and e.group == entry.group] if entry.group else [entry]
        handled.update(e.id for e in batch)
        yield entry, batch


def _ready(batch: Sequence[Entry], records: Sequence[Mapping[str, Any]], *, retry: Sequence[str],
           deadline_s: float) -> tuple[list[tuple[Entry, float]], list[str]]:
    """(entry, estimate) of each of ``batch``'s entries a run starts, and why it skips the others."""
    done = results_lib.done_ids(records)
    ready, notes = [], []
    for e in batch:
        if e.id in done:
            continue
        tried = results_lib.attempts(records, e.id)
        if e.id not in retry and tried["failed"]:
            notes.append(f"{e.id}: failed before; not retried (--retry={e.id} to run it)")
            continue
        if e.id not in retry and tried["killed"] + tried["interrupted"] >= MAX_TRIES:
            notes.append(f"{e.id}: given up after {MAX_TRIES} unfinished tries")
            continue
        ready.append((e, _estimate(e, tried, deadline_s=deadline_s, retry=e.id in retry)))
    return ready, notes


def _parts(ready: Sequence[tuple[Entry, float]], entry: Entry, packing: int, seeds_per_process: int = 1
           ) -> list[list[tuple[Entry, float]]]:
    """The ready entries in the sets that run at once: a group's in up to ``packing`` processes
    (:func:`trainers`: up to ``seeds_per_process`` seeds of a kind each), any other alone."""
    if not entry.group:
        return [[r] for r in ready]
    estimates = dict((e.id, t) for e, t in ready)
    procs = trainers([e for e, _ in ready], seeds_per_process=seeds_per_process)
    return [[(e, estimates[e.id]) for t in procs[k:k + packing] for e in t.entries]
            for k in range(0, len(procs), packing)]


def first_batch(entries: Sequence[Entry], records: Sequence[Mapping[str, Any]], *, retry: Sequence[str] = (),
                packing: int = 1, seeds_per_process: int = 1) -> list[Entry]:
    """The entries :func:`run_plan` starts first with these records (a group's entries, run at
    once, or one entry); [] when none is left. The pre-flight checks them."""
    for entry, batch in _batches(entries):
        ready, _ = _ready(batch, records, retry=retry, deadline_s=math.inf)
        if ready:
            return [e for e, _ in _parts(ready, entry, packing, seeds_per_process)[0]]
    return []


def _run_single(entry: Entry, run: _Run, *, estimate: float) -> None:
    """One entry, its commands in turn, killed at the deadline."""
    data = run.cifar10() if needs_cifar10([entry]) else run.data
    workdir = run.fresh_workdir(entry)
    if entry.suite == "bench":
        # benchmarks.all --resume measures only what earlier runs' records lack.
        # Only the same device's: benchmarks.all refuses to resume another device's records.
        earlier = [b for r in run.records if r.get("id") == entry.id and r.get("record") == "result"
                   and r.get("device") == run.env["device"] for b in r.get("bench_records", [])]
        for b in earlier:
            results_lib.append(workdir / "results.jsonl", b)
    left = run.left()
    print(f"[campaign] {entry.id}: start (estimate {estimate:.0f} s, {left:.0f} s left)", flush=True)
    run.write({"record": "started", "id": entry.id, "run": run.run_id, "allotted_s": round(left, 1),
               "estimate_s": estimate})
    commands = entry_commands(entry, workdir=workdir, data=data, deadline_s=left - 30)
    status, seconds, rc = "done", [], 0
    for argv in commands:
        rc, took, killed = spawn(argv, log=workdir / "log.txt", end=run.end, clock=run.clock)
        seconds.append(took)
        if killed:
            status = "killed"
            break
        if rc != 0:
            status = "failed"
            break
    tail = _log_tail(entry, workdir, status, run.out)
    record = run.result(entry, status=status, commands=commands, seconds=seconds, rc=rc, tail=tail)
    if status == "killed":
        record["allotted_s"] = round(left, 1)
    try:
        record.update(artifacts.collect(entry, workdir, run.out))
    except (OSError, ValueError, KeyError) as e:  # what was measured still gets recorded
        record["collect_error"] = repr(e)
    if entry.suite == "bench" and status == "done":
        # benchmarks.all's last line: "done: ... complete" or "... N groups left (...)".
        summary = [line for line in tail.splitlines() if line.startswith("done: ")]
        if not summary or "complete" not in summary[-1]:
            record["status"] = "partial"  # stopped at its deadline; the next run resumes it
    run.write(record)
    print(f"[campaign] {entry.id}: {record['status']} after {sum(seconds):.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------
# Packed groups: several GAN entries on one device, sized while they train.


def _rates(workdir: Path) -> tuple[int, list[float]]:
    """(last logged step, steps/s of every logged interval after the first, which holds the compile)."""
    lines = [r for r in artifacts.metric_lines(workdir) if r.get("steps_per_s")]
    return (int(lines[-1]["step"]) if lines else 0), [float(r["steps_per_s"]) for r in lines[1:]]


def group_steps(entries: Sequence[Entry], records: Sequence[Mapping[str, Any]]) -> int | None:
    """The step count a group's finished entries trained for (the rest must match it), or None."""
    ids = {e.id for e in entries}
    steps = [int(r["steps"]) for r in records if r.get("record") == "result" and r.get("status") == "done"
             and r.get("id") in ids and r.get("steps")]
    return max(steps) if steps else None


def size_group(progress: Mapping[str, tuple[int, Sequence[float]]], *, seconds_left: float, cap: int,
               quantum: int, safety: float = RATE_SAFETY) -> int:
    """The one step count for every trainer of a group: what the slowest reaches in ``seconds_left``.

    Args:
      progress: per trainer, (its last logged step, its measured steps/s intervals); a trainer
        without a measured interval counts at the slowest measured rate.
      seconds_left: training time left (the deadline less the time kept for sampling and scoring).
      cap: the plan's step count (never more).
      quantum: the result is a multiple of it (the trainers' ``log_every``), at least two beyond
        every trainer's last logged step (a trainer may have dispatched one period past its log).
      safety: share of the measured rate counted on.
    """
    measured = [statistics.median(r) for _, r in progress.values() if r]
    if not measured:
        raise ValueError("size_group: no trainer has a measured rate yet")
    slowest = min(measured)
    reach = [step + safety * (statistics.median(r) if r else slowest) * max(0.0, seconds_left)
             for step, r in progress.values()]
    floor = max(step for step, _ in progress.values()) // quantum * quantum + 2 * quantum
    return int(min(cap, max(floor, int(min(reach)) // quantum * quantum)))


def _write_limit(path: Path, steps: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{steps}\n", encoding="utf-8")
    os.replace(tmp, path)  # the trainer never reads half a number


@dataclasses.dataclass
class _Training:
    """One trainer of a running group: its process now, and what it has done."""

    trainer: Trainer
    workdir: Path
    commands: list[list[str]]
    proc: Process | None
    next: int = 1  # the index of the command after the running one
    seconds: list[float] = dataclasses.field(default_factory=list)
    rc: int = 0
    status: str = ""  # '' while running, then 'done' | 'failed' | 'killed'
    trained: bool = False

    @property
    def training(self) -> bool:
        return self.next == 1 and self.proc is not None

    def advance(self, *, env: Mapping[str, str], clock: Callable[[], float]) -> None:
        """If its process exited: starts its next command (the samples), or settles its status."""
        if self.proc is None or (rc := self.proc.poll()) is None:
            return
        self.seconds.append(self.proc.seconds)
        self.rc, self.proc = rc, None
        if rc != 0:
            self.status = "failed"
            return
        self.trained = True
        if self.next < len(self.commands):
            self.proc = Process(self.commands[self.next], log=self.workdir / "log.txt", env=env, clock=clock)
            self.next += 1
        else:
            self.status = "done"

    def stop(self) -> None:
        """At the deadline: SIGTERM (the trainer checkpoints), recorded as killed."""
        if self.proc is not None:
            self.rc = self.proc.stop()
            self.seconds.append(self.proc.seconds)
            self.proc, self.status = None, "killed"


def _reserve_s(run: _Run, procs: Sequence[Trainer]) -> float:
    """Seconds a group keeps free at the end of training: sampling (a trainer samples its seeds one
    after another), scoring (:func:`paper.campaign.plan.score_s` of its entries) and the margin."""
    seeds = max(len(t.entries) for t in procs)
    entries = sum(len(t.entries) for t in procs)
    return (run.overhead.get("sample", 0.0) * seeds + plan_lib.score_s(entries, overhead=run.overhead)
            + run.overhead.get("margin", 0.0))


def _start_training(trainer: Trainer, run: _Run, *, data: str, fixed: int | None, env: Mapping[str, str],
                    estimate: float, left: float, k: int) -> _Training:
    workdir = run.fresh_workdir(trainer.entry)
    limit = workdir / "step_limit"
    if fixed:
        _write_limit(limit, fixed)
    commands = entry_commands(trainer.entry, workdir=workdir, data=data)
    commands[0] = [*commands[0], f"--config.step_limit_file={limit}"]
    for e in trainer.entries:
        run.write({"record": "started", "id": e.id, "run": run.run_id, "allotted_s": round(left, 1),
                   "estimate_s": estimate, "group": e.group, "packing": k,
                   **({"seeds": list(trainer.seeds)} if trainer.seeds else {})})
    proc = Process(commands[0], log=workdir / "log.txt", env=env, clock=run.clock)
    return _Training(trainer, workdir, commands, proc)


def _size(state: Mapping[str, _Training], run: _Run, *, reserve: float) -> int | None:
    """The group's one step count once every trainer has logged its calibration intervals (or one
    finished: the count it reached); None before. Written to every trainer's step-limit file."""
    progress = {i: _rates(t.workdir) for i, t in state.items() if t.status != "failed"}
    calibrated = all(len(progress[i][1]) >= CALIBRATION_INTERVALS for i, t in state.items() if t.training)
    finished = [progress[i][0] for i, t in state.items() if t.trained and i in progress]
    if not finished and not (calibrated and progress):
        return None
    entries = [e for t in state.values() for e in t.trainer.entries]
    cap = max(int(e.set.get("steps", 0)) for e in entries) or 1
    quantum = max(1, int(entries[0].set.get("log_every", 1)))
    sized = max(finished) if finished else size_group(
        progress, seconds_left=run.end - reserve - run.clock(), cap=cap, quantum=quantum)
    for t in state.values():
        _write_limit(t.workdir / "step_limit", sized)
    group = entries[0].group
    run.write({"record": "sizing", "group": group, "run": run.run_id, "packing": len(state), "steps": sized,
               "at_s": round(run.deadline_s - run.left(), 1), "train_left_s": round(run.end - reserve - run.clock(), 1),
               "reserve_s": reserve, "rates": {i: round(statistics.median(r), 3) if r else None
                                               for i, (_, r) in progress.items()},
               "at_steps": {i: step for i, (step, _) in progress.items()}})
    print(f"[campaign] {group}: {sized} steps for all {len(state)} "
          f"(rates {', '.join(f'{statistics.median(r):.1f}' for _, r in progress.values() if r)} steps/s)", flush=True)
    return sized


def _record_training(t: _Training, run: _Run, *, sized: int | None, left: float, k: int) -> list[str]:
    """One result record per entry of a trainer; returns the ids with samples to score."""
    tail = _log_tail(t.trainer.entry, t.workdir, t.status, run.out)
    scored = []
    for e in t.trainer.entries:
        record = run.result(e, status=t.status, commands=t.commands, seconds=t.seconds, rc=t.rc, tail=tail)
        record.update(group=e.group, packing=k, step_limit=sized)
        if t.trainer.seeds:
            record["seeds"] = list(t.trainer.seeds)
        if t.status == "killed":
            record["allotted_s"] = round(left, 1)
        try:
            record.update(artifacts.collect(e, t.workdir, run.out, return_samples=run.return_samples,
                                   seed=int(e.args["seed"]) if t.trainer.seeds else None))
        except (OSError, ValueError, KeyError) as err:
            record["collect_error"] = repr(err)
        run.write(record)
        if record["status"] == "done" and record.get("artifacts"):
            scored.append(e.id)
        print(f"[campaign] {e.id}: {record['status']} at step {record.get('steps', '?')} after "
              f"{sum(t.seconds):.0f} s", flush=True)
    return scored


def _score_group(run: _Run, scored: Sequence[str]) -> None:
    """Scores a group's samples on this device (``run.score``), killed at the deadline."""
    log = run.workroot / "score.log"
    argv = [*run.score, f"--run={run.run_id}", f"--workroot={run.workroot}"]
    rc, took, killed = spawn(argv, log=log, end=run.end, clock=run.clock)
    tail = log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""
    with open(run.out / "log.txt", "a", encoding="utf-8") as f:
        f.write(f"\n===== scoring {', '.join(scored)} (exit {rc}{', killed' if killed else ''}) =====\n{tail}\n")
    print(f"[campaign] scored {', '.join(scored)} on this device: exit {rc} after {took:.0f} s"
          f"{' (killed at the deadline)' if killed else ''}", flush=True)


def _run_group(entries: Sequence[Entry], run: _Run, *, estimate: float, group: Sequence[Entry]) -> None:
    """Trains a group's GAN entries at once, sizes them to one step count, samples, scores.

    The entries train in :func:`trainers` (a kind's consecutive seeds in one process, up to
    ``run.seeds_per_process``). Each trainer gets ``--config.step_limit_file``; the runner writes
    the group's step count there once every trainer has logged :data:`CALIBRATION_INTERVALS`
    steady intervals (or a trainer finished before: the count it reached). Entries of a ``group``
    whose other entries finished in an earlier run get those entries' count from the start. A
    trainer still running at the deadline is stopped by SIGTERM (it saves its checkpoint) and its
    entries recorded as killed at the step it reached.
    """
    data = run.cifar10() if needs_cifar10(entries) else run.data
    fixed = group_steps(group, run.records)
    left = run.left()
    procs = trainers(entries, seeds_per_process=run.seeds_per_process)
    k, reserve, env = len(procs), _reserve_s(run, procs), group_env(len(procs))
    how = f"{fixed} steps as the group before" if fixed else "sized while training"
    print(f"[campaign] {', '.join(e.id for e in entries)}: start {len(entries)} in {k} processes (estimate "
          f"{estimate:.0f} s, {left:.0f} s left, {how})", flush=True)
    state = {t.name: _start_training(t, run, data=data, fixed=fixed, env=env, estimate=estimate, left=left, k=k)
             for t in procs}
    sized = fixed
    while any(t.proc is not None for t in state.values()):
        for t in state.values():
            t.advance(env=env, clock=run.clock)
        if sized is None and any(t.training for t in state.values()):
            sized = _size(state, run, reserve=reserve)
        if run.left() <= 0:
            for t in state.values():
                t.stop()
            break
        time.sleep(POLL_S)
    scored = [i for t in state.values() for i in _record_training(t, run, sized=sized, left=left, k=k)]
    if scored and run.score:
        _score_group(run, scored)


def _shown_argv(argv: Sequence[str], data: str) -> list[str]:
    """A command as recorded: paths relative to the repository root, the data folder as given."""
    shown = []
    for a in argv:
        if data and data in a:
            a = a.replace(data, "folder:" + _shown(data[len("folder:"):]) if data.startswith("folder:") else data)
        if a.startswith(("--workdir=", "--out=")):
            flag, value = a.split("=", 1)
            a = f"{flag}={_shown(value)}"
        shown.append(a)
    return shown

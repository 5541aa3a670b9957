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

import ctypes
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper.campaign import results as results_lib
from paper.campaign.plan import Entry, config_overrides
from sympad.train import environment as renv

__all__ = ["MAX_FILE_BYTES", "MAX_TRIES", "cifar10_folder", "entry_commands", "environment", "run_plan",
           "write_samples"]

#: Largest file the device machine sends back (the issue: 16 MiB a file, 8 files, 64 MiB in all).
MAX_FILE_BYTES = 16 * 2**20
#: An entry killed or interrupted this many times is not started again (``retry`` overrides).
MAX_TRIES = 2
#: A killed entry's next estimate: this much more than the time it was given.
KILLED_GROWTH = 1.2
#: Seconds a killed command gets to exit after SIGTERM (the trainers checkpoint on it).
TERM_GRACE_S = 10.0
LOG_TAIL_CHARS = 6000

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Environment and data, through the runtime's helpers.


def environment(*, commit: str = "") -> dict[str, Any]:
    """Device, versions and commit of this run, found without initializing JAX in this process
    (the runner leaves the accelerator to the experiments it starts): the GPU from nvidia-smi."""
    device = ""
    if shutil.which("nvidia-smi"):
        probe = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, check=False)
        names = [n.strip() for n in probe.stdout.splitlines() if n.strip()]
        if probe.returncode == 0 and names:
            device = f"{len(names)} x {names[0]} (gpu)"
    if not device:
        device = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    found = {k: v for k, v in renv.versions().items() if v}
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
            "cpu_count": os.cpu_count(), "versions": found, "commit": commit or renv.git_commit() or "unknown"}


def cifar10_folder(target: Path) -> Path | None:
    """The CIFAR-10 JPEG folders (train/ and test/) extracted into ``target`` by the runtime's one
    helper; the git-ignored ``data/`` copy carried to a device comes before ``../shared/data``.
    None when no archives are found."""
    from sympad.train import data

    carried = REPO / "data"
    names = ("cifar10-train.tar.gz", "cifar10-test.tar.gz")
    previous = os.environ.get(data.SHARED_DATA_ENV)
    if all((carried / n).is_file() for n in names):
        os.environ[data.SHARED_DATA_ENV] = str(carried)
    try:
        return data.cifar10_folder(cache_dir=target)
    except FileNotFoundError:
        return None
    finally:
        if previous is None:
            os.environ.pop(data.SHARED_DATA_ENV, None)
        else:
            os.environ[data.SHARED_DATA_ENV] = previous


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


def _set_pdeathsig() -> None:
    # The command dies with the runner, also when the runner is SIGKILLed (Linux only).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(argv: Sequence[str], *, log: Path, end: float, clock: Callable[[], float]) -> tuple[int, float, bool]:
    """Runs one command until it exits or ``end``; returns (exit code, seconds, killed at the deadline)."""
    argv = [sys.executable if a == "python" and i == 0 else a for i, a in enumerate(argv)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = clock()
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        try:
            rc = proc.wait(timeout=max(0.0, end - clock()))
            return rc, clock() - start, False
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return proc.returncode, clock() - start, True


# ----------------------------------------------------------------------------------------------
# What an entry measured.


def _metric_lines(workdir: Path) -> list[dict[str, Any]]:
    return results_lib.read(workdir / "metrics.jsonl")


def _timing(lines: Sequence[Mapping[str, Any]], *, rate_key: str) -> dict[str, float | None]:
    """Steady step time (median over logged intervals after the first) and a compile estimate
    (the first interval's excess over that: compiling happens in the first step)."""
    rated = [(int(r["step"]), float(r[rate_key])) for r in lines if r.get(rate_key)]
    if len(rated) < 2:
        return {"step_time_s": 1.0 / rated[0][1] if rated else None, "compile_s": None}
    step_time = float(np.median([1.0 / rate for _, rate in rated[1:]]))
    first_steps, first_rate = rated[0]
    return {"step_time_s": step_time, "compile_s": max(0.0, first_steps / first_rate - first_steps * step_time)}


def write_samples(images: np.ndarray, *, out: Path, stem: str, max_bytes: int = MAX_FILE_BYTES,
                  labels: np.ndarray | None = None) -> list[str]:
    """Writes uint8 ``images`` (N, H, W, C) as ``stem-<k>.npz`` files (key 'images', and 'labels'
    int32 (n,) when ``labels`` are given) of at most ``max_bytes`` each; returns the file names in order."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int32)
    per_image = int(np.prod(images.shape[1:])) + (4 if labels is not None else 0)
    per_file = (max_bytes - 4096) // per_image  # 4 KiB for the zip and .npy headers
    if per_file < 1:
        raise ValueError(f"max_bytes={max_bytes} holds no {images.shape[1:]} image")
    names = []
    for k, lo in enumerate(range(0, len(images), per_file)):
        name = f"{stem}-{k}.npz"
        part = {"labels": labels[lo:lo + per_file]} if labels is not None else {}
        np.savez(out / name, images=images[lo:lo + per_file], **part)
        names.append(name)
    return names


def _collect(entry: Entry, workdir: Path, out: Path) -> dict[str, Any]:
    """Metrics, timings and artifacts of a finished entry."""
    if entry.suite == "gan":
        lines = _metric_lines(workdir)
        found: dict[str, Any] = dict(_timing(lines, rate_key="steps_per_s"))
        last = lines[-1] if lines else {}
        found["metrics"] = {k: last[k] for k in ("step", "d_steps", "d_loss", "g_loss") if k in last}
        summary = workdir / "model_summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            found["params"] = {"generator": s.get("generator", {}).get("params"),
                               "discriminator": s.get("discriminator", {}).get("params"),
                               "generator_widths": s.get("generator", {}).get("widths")}
        samples = workdir / "samples.npz"
        if entry.samples and samples.is_file():
            with np.load(samples) as z:
                images = z["images"]
                labels = z["labels"] if "labels" in z.files else None  # gan.sample's, for a conditional G
            found["artifacts"] = write_samples(images, out=out, stem=f"samples-{entry.id}", labels=labels)
            found["num_samples"] = int(len(images))
            found["labelled_samples"] = labels is not None
        return found
    if entry.suite == "classify":
        lines = _metric_lines(workdir)
        found = dict(_timing(lines, rate_key="steps_per_s"))
        final = workdir / "final_metrics.json"
        found["metrics"] = json.loads(final.read_text()) if final.is_file() else {}
        return found
    if entry.suite == "bench":
        return {"bench_records": results_lib.read(workdir / "results.jsonl")}
    return {}


# ----------------------------------------------------------------------------------------------
# The queue.


def _estimate(entry: Entry, tried: Mapping[str, Any]) -> float:
    # A run that killed this entry gave it ``allotted_s``: it needs more than that.
    return max(float(entry.estimate_s), KILLED_GROWTH * float(tried.get("allotted_s", 0.0)))


def run_plan(entries: Sequence[Entry], *, out: Path, deadline_s: float, committed: Sequence[Mapping[str, Any]] = (),
             workroot: Path | None = None, data: str = "", commit: str = "", command: str = "",
             retry: Sequence[str] = (), budget: str = "device",
             clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Runs the plan's pending entries in order until ``deadline_s`` seconds from now.

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
      retry: entry ids to run again even if failed or given up.
      budget: 'device' or 'smoke', recorded as the 'campaign' of the run and result records
        (a smoke run is never merged into the committed results).
      clock: seconds (monotonic); tests may pass a fake.

    Returns:
      The records this call wrote.
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, got {deadline_s}")
    start = clock()
    end = start + deadline_s
    out.mkdir(parents=True, exist_ok=True)
    out_results = out / "results.jsonl"
    workroot = workroot or REPO / "runs" / "campaign"
    records = [*committed, *results_lib.read(out_results)]
    env = environment(commit=commit)
    run_id = f"{env['date'].replace(' ', 'T')}-{os.getpid()}"
    written: list[dict[str, Any]] = []

    def write(record: dict[str, Any]) -> None:
        results_lib.append(out_results, record)
        records.append(record)
        written.append(record)

    write({"record": "run", "run": run_id, "campaign": budget, "deadline_s": deadline_s, "command": command, **env})
    done = results_lib.done_ids(records)
    for entry in entries:
        if entry.id in done:
            continue
        tried = results_lib.attempts(records, entry.id)
        if entry.id not in retry and tried["failed"]:
            print(f"[campaign] {entry.id}: failed before; not retried (--retry={entry.id} to run it)", flush=True)
            continue
        if entry.id not in retry and tried["killed"] + tried["interrupted"] >= MAX_TRIES:
            print(f"[campaign] {entry.id}: given up after {MAX_TRIES} unfinished tries", flush=True)
            continue
        estimate = _estimate(entry, tried)
        left = end - clock()
        if estimate > left:
            why = "never fits one run: re-size it" if estimate > deadline_s else f"needs {estimate:.0f} s, {left:.0f} s left"
            print(f"[campaign] {entry.id}: not started ({why})", flush=True)
            continue
        if "{cifar10}" in entry.args.values() and not data:
            folder = cifar10_folder(REPO / "data")
            if folder is None:
                raise FileNotFoundError("no CIFAR-10 JPEG archives in data/ or ../shared/data: copy "
                                        "cifar10-train.tar.gz and cifar10-test.tar.gz into data/ (git-ignored)")
            data = f"folder:{folder}"
        workdir = workroot / entry.id
        if workdir.exists():
            shutil.rmtree(workdir)  # a fresh start: step and compile times of one uninterrupted run
        workdir.mkdir(parents=True)
        if entry.suite == "bench":
            # benchmarks.all --resume measures only what earlier runs' records lack.
            # Only the same device's: benchmarks.all refuses to resume another device's records.
            earlier = [b for r in records if r.get("id") == entry.id and r.get("record") == "result"
                       and r.get("device") == env["device"] for b in r.get("bench_records", [])]
            for b in earlier:
                results_lib.append(workdir / "results.jsonl", b)
        print(f"[campaign] {entry.id}: start (estimate {estimate:.0f} s, {left:.0f} s left)", flush=True)
        write({"record": "started", "id": entry.id, "run": run_id, "allotted_s": round(left, 1),
               "estimate_s": estimate})
        commands = entry_commands(entry, workdir=workdir, data=data, deadline_s=left - 30)
        shown = [shlex.join(_shown_argv(c, data)) for c in commands]
        status, seconds, rc = "done", [], 0
        log = workdir / "log.txt"
        for argv in commands:
            rc, took, killed = _spawn(argv, log=log, end=end, clock=clock)
            seconds.append(round(took, 1))
            if killed:
                status = "killed"
                break
            if rc != 0:
                status = "failed"
                break
        tail = log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""
        with open(out / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"\n===== {entry.id} ({status}) =====\n{tail}\n")
        record: dict[str, Any] = {
            "record": "result", "id": entry.id, "run": run_id, "campaign": budget, "status": status, "experiment": entry.experiment,
            "suite": entry.suite, "budget": entry.budget, "fraction": entry.fraction, "seed": entry.args.get("seed"),
            "commands": shown, "seconds": seconds, "exit_code": rc, "device": env["device"],
            "versions": env["versions"], "commit": env["commit"], "date": env["date"],
        }
        if entry.set.get("conditional"):
            record["conditional"] = True
        if status == "killed":
            record["allotted_s"] = round(left, 1)
        if status != "done":
            record["log_tail"] = tail[-1500:]
        try:
            record.update(_collect(entry, workdir, out))
        except (OSError, ValueError, KeyError) as e:  # what was measured still gets recorded
            record["collect_error"] = repr(e)
        if entry.suite == "bench" and status == "done":
            # benchmarks.all's last line: "done: ... complete" or "... N groups left (...)".
            summary = [line for line in tail.splitlines() if line.startswith("done: ")]
            if not summary or "complete" not in summary[-1]:
                record["status"] = "partial"  # stopped at its deadline; the next run resumes it
        write(record)
        if record["status"] == "done":
            done.add(entry.id)
        print(f"[campaign] {entry.id}: {record['status']} after {sum(seconds):.0f} s", flush=True)
    left_ids = [e.id for e in entries if e.id not in done]
    print(f"[campaign] {len(done & {e.id for e in entries})}/{len(entries)} done; "
          f"left: {', '.join(left_ids) if left_ids else 'none'}", flush=True)
    return written


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

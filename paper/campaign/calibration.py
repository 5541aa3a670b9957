"""How many seeds of a kind one process trains on this device: measured once per device, recorded.

A packed group trains a kind's consecutive seeds in one process (``seeds=N``: one vmapped program,
:func:`paper.campaign.runner.trainers`). How many pay off depends on the device: a big GPU runs two
SNGAN seeds in about the time of one, a small one may not hold them. So the first device run on a
device without a ``calibration`` record measures it: before its plan when the first group still
fits after it, else with the time the plan leaves at the end. It runs ``benchmarks.seeds`` (the
GAN suite's real train step at the plan's size, vmapped, timed round-robin) for 1 .. N seeds of the
first group's first kind, N the most seeds of one kind the plan's groups hold, within
:data:`CALIBRATION_S`. It keeps the count with the highest images/s summed over seeds (the total
D steps/s) among those that ran; a count that did not compile or fit in memory, or a calibration
that failed or ran out of time, leaves the plan's ``seeds_per_process``. The record (every
count's images/s, compile seconds and memory) goes to the results; later runs on that device read
its choice instead of measuring again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from paper.campaign import results as results_lib
from paper.campaign import runner
from paper.campaign.plan import Entry

__all__ = ["CALIBRATION_S", "END_MARGIN_S", "MIN_S", "calibrate", "calibration_command", "choose",
           "max_seeds_per_kind", "recorded"]

#: Seconds the calibration may take: two compiles of the paper's SNGAN and a few timed rounds.
CALIBRATION_S = 60.0
#: Fewer seconds than this to spare: no calibration in this run (the next one on the device tries).
MIN_S = 30.0
#: Seconds kept free after a calibration at the end of a run (the runner's own exit).
END_MARGIN_S = 10.0


def max_seeds_per_kind(entries: Sequence[Entry]) -> int:
    """The most seeds of one kind a group of ``entries`` holds (what one process could train)."""
    procs = runner.trainers([e for e in entries if e.group], seeds_per_process=len(entries) or 1)
    return max((len(t.entries) for t in procs), default=1)


def calibration_command(*, kind: str, seeds: Sequence[int], out: Path, deadline_s: float) -> list[str]:
    """``benchmarks.seeds`` at the paper's size (``--gpu``), vmapped, for ``seeds`` seed counts."""
    return ["python", "-m", "benchmarks.seeds", "--gpu", "--forms=vmap", f"--kind={kind}",
            f"--seeds={','.join(map(str, seeds))}", "--warmup=1", "--repeats=3", f"--out={out}",
            f"--deadline={max(1, int(deadline_s))}"]


def choose(measured: Sequence[Mapping[str, Any]], *, default: int) -> int:
    """The seed count with the highest images/s summed over seeds; ``default`` when none was measured."""
    rated = [(float(m["images_per_s"]), int(m["num_seeds"])) for m in measured if m.get("images_per_s")]
    return max(rated)[1] if rated else default


def recorded(records: Sequence[Mapping[str, Any]], device: str) -> Mapping[str, Any] | None:
    """The latest calibration record of ``device`` that settled it (None: never calibrated). One
    that ran out of time does not count, so a later run with more time to spare measures again;
    one that failed does (a count that does not compile or fit fails the same way next time)."""
    found = [r for r in records if r.get("record") == "calibration" and r.get("device") == device
             and r.get("status", "done") != "killed"]
    return found[-1] if found else None


def calibrate(entries: Sequence[Entry], *, out: Path, workroot: Path, device: str, default: int,
              limit_s: float = CALIBRATION_S, argv: Sequence[str] | None = None,
              clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Measures 1 .. :func:`max_seeds_per_kind` seeds per process; appends and returns the record.

    Args:
      entries: the plan (its first group's first kind is measured).
      out: the run's results directory (the record is appended to ``out/results.jsonl``).
      workroot: the run's work root (the benchmark's JSON lines and output go to ``calibration/``).
      device: the device's name, as the run records it.
      default: the plan's ``seeds_per_process``, kept when nothing was measured.
      limit_s: seconds the benchmark may take; it is killed after.
      argv: the benchmark's command (default :func:`calibration_command`); tests pass a stand-in.
      clock: seconds (monotonic).

    Returns:
      ``{'record': 'calibration', 'device', 'kind', 'seeds_per_process' (the choice), 'measured'
      (per seed count: images/s, step ms, compile s, memory), 'status' ('done' | 'failed' |
      'killed'), 'seconds', 'default'}``.
    """
    first = next(e for e in entries if e.group)
    kind = str(first.args.get("kernel", "C3"))
    counts = list(range(1, max_seeds_per_kind(entries) + 1))
    folder = workroot / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    lines = folder / "seeds.jsonl"
    lines.unlink(missing_ok=True)
    argv = list(argv or calibration_command(kind=kind, seeds=counts, out=lines, deadline_s=limit_s))
    rc, took, killed = runner.spawn(argv, log=folder / "log.txt", end=clock() + limit_s, clock=clock)
    keys = ("num_seeds", "images_per_s", "step_ms", "compile_s", "temp_bytes", "argument_bytes", "device_peak_bytes")
    measured = [{k: r.get(k) for k in keys} for r in results_lib.read(lines) if r.get("record") == "seeds"]
    record = {"record": "calibration", "device": device, "kind": kind, "counts": counts,
              "status": "killed" if killed else "failed" if rc != 0 else "done", "seconds": round(took, 1),
              "measured": measured, "default": default, "seeds_per_process": choose(measured, default=default),
              "command": " ".join(argv[1:] if argv[0] == "python" else argv)}
    if record["status"] != "done":
        log = folder / "log.txt"
        record["log_tail"] = log.read_text(encoding="utf-8", errors="replace")[-1500:] if log.is_file() else ""
    results_lib.append(out / "results.jsonl", record)
    return record

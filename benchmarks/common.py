"""Timing, memory and reporting shared by the benchmarks (not tests: nothing here asserts a time).

Protocol (every benchmark): compile everything first (in threads: XLA compiles
concurrently), run each candidate ``warmup`` times, then ``repeats`` rounds in
which every candidate runs once, in turn (round-robin, so that load from other
processes on a shared machine hits all candidates alike); report the median and
the minimum over rounds, and the median of the per-round ratios to the
baseline. Every call ends in ``jax.block_until_ready``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp

import sympad
from sympad.train import errors
from sympad.train.environment import environment  # the header record of every run

__all__ = [
    "DTYPES",
    "Deadline",
    "Report",
    "Timing",
    "add_run_args",
    "compile_all",
    "environment",
    "markdown_table",
    "memory",
    "ratio",
    "size_parser",
    "time_round_robin",
]


#: The dtypes the benchmarks measure, by the name their options and records use.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of one candidate over the timed rounds: wall clock, and process
    CPU time (all threads; less sensitive to other processes on the machine)."""

    times: tuple[float, ...]
    cpu_times: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)


def compile_all(
    jobs: Mapping[Any, tuple[Any, Sequence[Any]]], *, max_workers: int | None = None
) -> dict[Any, Any]:
    """Lowers ``fn(*args)`` for every job (in turn: tracing is Python), then
    compiles them concurrently (XLA compiles outside the GIL).

    Args:
      jobs: name -> (jitted function, or anything with ``.lower(*args)``, example args).
      max_workers: compile threads (default: the number of CPUs, at most 16).

    Returns:
      name -> ``jax.stages.Compiled``, callable with the same args.
    """
    lowered = {name: fn.lower(*args) for name, (fn, args) in jobs.items()}
    workers = max_workers or min(16, os.cpu_count() or 1)
    if workers == 1 or len(lowered) == 1:
        return {name: low.compile() for name, low in lowered.items()}
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(low.compile) for name, low in lowered.items()}
        return {name: f.result() for name, f in futures.items()}


def time_round_robin(
    calls: Mapping[str, Callable[[], Any]], *, warmup: int = 2, repeats: int = 7, inner: int = 1
) -> dict[str, Timing]:
    """Times zero-argument callables, interleaved: round r runs each once.

    Args:
      calls: name -> callable returning (a pytree of) jax arrays.
      warmup: untimed calls of each before the rounds.
      repeats: timed rounds.
      inner: calls per timed sample, dispatched back to back and waited for
        once (the sample is their mean). On an accelerator a sub-millisecond
        program would otherwise be timed together with one host round trip.

    Returns:
      name -> :class:`Timing`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if inner < 1:
        raise ValueError(f"inner must be >= 1, got {inner}")
    for fn in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner - 1):
                fn()
            jax.block_until_ready(fn())
            cpu[name].append((time.process_time() - start_cpu) / inner)
            times[name].append((time.perf_counter() - start) / inner)
    return {name: Timing(tuple(times[name]), tuple(cpu[name])) for name in calls}


def ratio(baseline: Timing, other: Timing, *, cpu: bool = False) -> float:
    """Speed of ``other`` relative to ``baseline``: median over rounds of t_base / t_other
    (wall clock, or process CPU time with ``cpu=True``)."""
    pairs = zip(baseline.cpu_times, other.cpu_times) if cpu else zip(baseline.times, other.times)
    return statistics.median(b / o for b, o in pairs)


def memory(compiled: Any) -> dict[str, int | None]:
    """Compiled memory in bytes: temp (scratch the program allocates), arguments, outputs."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # Some backends do not implement it.
        stats = None
    get = (lambda name: int(getattr(stats, name))) if stats is not None else (lambda name: None)
    return {
        "temp_bytes": get("temp_size_in_bytes"),
        "argument_bytes": get("argument_size_in_bytes"),
        "output_bytes": get("output_size_in_bytes"),
    }




def parse_kinds(text: str) -> list[str]:
    """``--kinds``: comma-separated kinds, any 'C<k>' or 'C<k>sp' (not only the paper's five).

    Raises:
      sympad.train.errors.ConfigError: an unknown kind or none at all, before anything is built.
    """
    choose = f"choose from {', '.join(sympad.KINDS)} or any 'C<k>' / 'C<k>sp'"
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        try:
            sympad.parse_kind(kind)
        except ValueError:
            raise errors.ConfigError(f"--kinds: unknown {kind!r}; {choose}") from None
    if not kinds:
        raise errors.ConfigError(f"--kinds: empty; {choose}")
    return kinds


def size_parser(module: str, doc: str, *, gpu: str, tiny: str) -> argparse.ArgumentParser:
    """A benchmark CLI's parser with its size set: ``--gpu`` | ``--tiny`` (default: CPU-sized).

    Args:
      module: e.g. ``"benchmarks.conv"`` (the program name is ``python -m <module>``).
      doc: the module docstring; its first paragraph is the description.
      gpu, tiny: help texts of the two size flags.
    """
    parser = errors.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--gpu", action="store_true", help=gpu)
    size.add_argument("--tiny", action="store_true", help=tiny)
    return parser


def add_run_args(parser: argparse.ArgumentParser, *, repeats: str, inner: str, markdown: str, deadline: str) -> None:
    """The options every benchmark CLI shares: warm-up, rounds, outputs, budget, compile threads.

    The keyword arguments are the help texts that differ between benchmarks.
    """
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help=repeats)
    parser.add_argument("--inner", type=int, default=None, help=inner)
    parser.add_argument("--out", default=None, help="append JSON lines here (default: stdout)")
    parser.add_argument("--markdown", default=None, help=markdown)
    parser.add_argument("--deadline", type=float, default=None, help=deadline)
    parser.add_argument(
        "--compile-workers", type=int, default=None, help="programs compiled at once (default: CPUs, at most 16)"
    )


class Deadline:
    """A wall-clock budget: ``expired()`` once ``seconds`` have passed (None: never)."""

    def __init__(self, seconds: float | None):
        self._end = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() > self._end

    def left(self) -> float:
        return float("inf") if self._end is None else self._end - time.monotonic()


class Report:
    """Writes JSON lines (one record per measurement) to stdout or a file.

    The first record is ``{"record": "environment", ...}``.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, stream: TextIO | None = None):
        self.records: list[dict[str, Any]] = []
        #: Fields added to every record written (``benchmarks.all`` sets the step).
        self.context: dict[str, Any] = {}
        self._file = open(path, "a") if path else None  # closed in close()
        if self._file and self._file.tell() and not Path(path).read_bytes().endswith(b"\n"):
            self._file.write("\n")  # after a run killed mid-line, start a line of our own
        self._stream = stream

    def write(self, record: dict[str, Any]) -> None:
        record = {**record, **self.context}
        self.records.append(record)
        line = json.dumps(record, sort_keys=False, default=_json_default)
        if self._file:
            self._file.write(line + "\n")
            self._file.flush()
        if self._stream:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 2 decimals, None as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit_markdown(table: str, path: str | None) -> None:
    """Appends a markdown table to ``path`` (so runs accumulate), or prints it when no path is given."""
    if path:
        with open(path, "a") as f:
            f.write(table + "\n\n")
    else:
        print(table)

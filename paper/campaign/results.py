"""The campaign's results file: JSON lines, one record per event, appended, never rewritten.

Records (``record`` field), each read as a frozen dataclass of its kind:

- ``run`` (:class:`Run`): one per runner call: device, versions, commit, deadline, plan.
- ``started`` (:class:`Started`): an entry began (a run killed from outside leaves this without
  an outcome).
- ``result`` (:class:`Result`): an entry's outcome, ``status`` 'done' | 'killed' (its time ran
  out) | 'partial' (a benchmark entry that stopped at its deadline; the next run resumes it) |
  'failed' (non-zero exit), with metrics, step and compile times, the command, the steps reached,
  the seeds its process trained, and the artifacts it wrote (GAN samples).
- ``sizing`` (:class:`Sizing`): the step count a packed group was given, and the rates behind it.
- ``evaluation`` (:class:`Evaluation`): FID/KID of a result's samples, where they were made
  (``--score``) or on the CPU (``--evaluate``).
- ``crosscheck`` (:class:`Crosscheck`): this CPU's features of returned samples against the
  device's.
- ``calibration`` (:class:`Calibration`): how many seeds one process trains on a device, measured
  there once.

:func:`load` reads and validates a file in one place: a record that lacks a field its kind needs,
or has one of the wrong type, is one :class:`RecordError` naming the file, the line and the field.
Keys a record has beyond its kind's fields (a newer runner's) are kept in ``extra``, and a record
of a kind this version does not know is kept as :class:`Other`. Writers append plain dicts
(:func:`append`); :func:`read` is the raw JSON-lines reader (also of the suites' ``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sympad.train.errors import UserError

__all__ = ["STATUSES", "Attempts", "Calibration", "Crosscheck", "Evaluation", "Other", "Record", "RecordError",
           "Records", "Result",
           "Run", "Sizing", "Started", "append", "attempts", "done_ids", "load", "merge", "read"]

#: A result's outcomes.
STATUSES = ("done", "killed", "partial", "failed")


class RecordError(UserError, ValueError):
    """A record of a results file that its kind cannot read; the message names file, line and field."""


class _FieldError(ValueError):
    """A field's value that its declared type or its kind's rule rejects (wrapped into a RecordError)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r} {message}")


# ----------------------------------------------------------------------------------------------
# The records.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """What every record has.

    Attributes:
      extra: the keys its kind does not declare, as they were (fields a newer runner writes).
      line: its 1-based line in the file it was read from (0 when not read from a file).
    """

    KIND: ClassVar[str] = ""

    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    line: int = dataclasses.field(default=0, compare=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run(Record):
    """One runner call (one device run)."""

    KIND: ClassVar[str] = "run"

    run: str
    campaign: str = ""
    device: str | None = None
    date: str | None = None
    commit: str | None = None
    command: str = ""
    deadline_s: float | None = None
    packing: int = 1
    cpu_count: int | None = None
    versions: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Started(Record):
    """An entry began; without a later :class:`Result` of the same entry the run was killed from outside."""

    KIND: ClassVar[str] = "started"

    id: str
    run: str
    allotted_s: float = 0.0
    estimate_s: float | None = None
    group: str = ""
    packing: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result(Record):
    """An entry's outcome.

    Attributes:
      status: one of :data:`STATUSES`.
      seed: the entry's seed (None for an entry without one).
      seeds: every seed its process trained (the entry's among them; empty: one seed per process).
      steps: the steps it reached (G steps for a GAN; None where not collected).
      step_limit: the step count its packed group was given (None: not sized).
      allotted_s: for a killed entry, the seconds the runner gave it.
      metrics: the suite's last logged or final metrics.
      params: a GAN's parameter counts ('generator', 'discriminator', 'generator_widths').
      samples_file: where all its samples are, relative to the runner's work root ('': none).
      artifacts: sample files (``.npz``) in the run's results directory, in order.
      bench_records: a benchmark entry's records (``benchmarks.all``'s).
    """

    KIND: ClassVar[str] = "result"

    id: str
    run: str
    status: str
    campaign: str = ""
    experiment: str = ""
    suite: str = ""
    budget: str = ""
    fraction: float | None = None
    seed: int | None = None
    seeds: tuple[int, ...] = ()
    commands: tuple[str, ...] = ()
    seconds: tuple[float, ...] = ()
    exit_code: int | None = None
    device: str | None = None
    versions: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    commit: str | None = None
    date: str | None = None
    conditional: bool = False
    log_tail: str = ""
    allotted_s: float = 0.0
    group: str = ""
    packing: int = 1
    step_limit: int | None = None
    collect_error: str = ""
    step_time_s: float | None = None
    compile_s: float | None = None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    steps: int | None = None
    params: Mapping[str, Any] | None = None
    num_samples: int | None = None
    returned_samples: int | None = None
    samples_file: str = ""
    artifacts: tuple[str, ...] = ()
    labelled_samples: bool = False
    bench_records: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise _FieldError("status", f"must be one of {' | '.join(STATUSES)}, got {self.status!r}")

    @property
    def key(self) -> tuple[str, str]:
        """(entry id, run id): what an :class:`Evaluation` refers to."""
        return self.id, self.run


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sizing(Record):
    """The one step count a packed group's trainers were given while they trained."""

    KIND: ClassVar[str] = "sizing"

    group: str
    run: str
    steps: int
    packing: int = 1
    at_s: float | None = None
    train_left_s: float | None = None
    reserve_s: float | None = None
    rates: Mapping[str, float | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation(Record):
    """FID/KID of one result's samples by one feature network.

    Attributes:
      of_run: the run of the result scored (with ``id``: :attr:`Result.key`).
      network: the scorer's label (its name and weights digest).
      feature_network: its identity ('name', 'sha256', 'form', ...).
      metrics: gan.metrics' scores, keyed ``<metric>_<network name>`` (``fid_inception``).
      device: where the scoring ran.
      feature_check: the returned sample file holding the device's features ('file', 'num').
    """

    KIND: ClassVar[str] = "evaluation"

    id: str
    of_run: str
    network: str
    metrics: Mapping[str, Any]
    feature_network: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_samples: int | None = None
    num_reference: int | None = None
    protocol: str | None = None
    reference: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    device: str | None = None
    command: str = ""
    date: str | None = None
    labels: str | None = None
    intra_class: Mapping[str, Any] | None = None
    feature_check: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.feature_check is not None and not isinstance(self.feature_check.get("file"), str):
            raise _FieldError("feature_check", f"must name its sample file ('file'), got {dict(self.feature_check)}")

    @property
    def result_key(self) -> tuple[str, str]:
        """(entry id, run id) of the result scored."""
        return self.id, self.of_run

    @property
    def network_name(self) -> str | None:
        """The feature network's name ('inception', 'offline_cifar10', ...; None when unnamed)."""
        return self.feature_network.get("name")

    def metric(self, metric: str) -> float | None:
        """``metric`` ('fid', 'kid', 'fid_intra') by this evaluation's network, or None."""
        value = self.metrics.get(f"{metric}_{self.network_name}") if self.network_name else None
        return None if value is None else float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Crosscheck(Record):
    """This CPU's pool3 features of returned samples against those the device stored."""

    KIND: ClassVar[str] = "crosscheck"

    id: str
    of_run: str
    of_network: str
    network: str
    num: int
    max_rel_diff: float
    mean_rel_diff: float | None = None
    form: str | None = None
    device: str | None = None
    command: str = ""
    date: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibration(Record):
    """How many seeds one process trains on a device, as measured there (:mod:`paper.campaign.calibration`).

    Attributes:
      seeds_per_process: the choice (the plan's ``default`` when nothing was measured).
      measured: per seed count: ``num_seeds``, ``images_per_s`` (summed over seeds), ``step_ms``,
        ``compile_s`` and memory bytes.
      status: 'done' | 'failed' | 'killed' (its time ran out).
    """

    KIND: ClassVar[str] = "calibration"

    device: str
    seeds_per_process: int
    kind: str = ""
    status: str = "done"
    counts: tuple[int, ...] = ()
    measured: tuple[Mapping[str, Any], ...] = ()
    default: int = 1
    seconds: float = 0.0
    command: str = ""
    log_tail: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Other(Record):
    """A record of a kind this version does not know, kept whole (its fields in ``extra``)."""

    kind: str


KINDS: dict[str, type[Record]] = {cls.KIND: cls for cls in (Run, Started, Result, Sizing, Evaluation, Crosscheck,
                                                            Calibration)}


# ----------------------------------------------------------------------------------------------
# Validation: one record from its JSON object.


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        named = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is Mapping:
        return "an object"
    return {str: "a string", int: "an int", float: "a number", bool: "a boolean"}.get(hint, "a value")


def _convert(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the declared ``hint`` (lists as tuples, ints as floats where a number is declared)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, name)
            except _FieldError:
                continue
    elif origin is tuple and isinstance(value, list):
        return tuple(_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    elif origin is Mapping and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _convert(v, args[1], f"{name}.{k}") for k, v in value.items()}
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    raise _FieldError(name, f"must be {_describe(hint)}, got {json.dumps(value, default=str)[:80]}")


_HINTS: dict[type[Record], dict[str, Any]] = {}


def _hints(cls: type[Record]) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in ("extra", "line")}
    return _HINTS[cls]


def parse(raw: Any, *, where: str = "record", line: int = 0) -> Record:
    """One record from its JSON object.

    Args:
      raw: the decoded JSON line.
      where: the record's place for the error message ('FILE:LINE').
      line: its line number, kept on the record.

    Raises:
      RecordError: it is not an object, has no ``record`` kind, lacks a field its kind requires,
        or a field has the wrong type or value.
    """
    if not isinstance(raw, Mapping):
        raise RecordError(f"{where}: a record is a JSON object, got {json.dumps(raw, default=str)[:80]}")
    kind = raw.get("record")
    if not isinstance(kind, str) or not kind:
        raise RecordError(f"{where}: field 'record' must name the record's kind "
                          f"({' | '.join(KINDS)}), got {json.dumps(kind, default=str)}")
    cls = KINDS.get(kind)
    if cls is None:
        return Other(kind=kind, extra={k: v for k, v in raw.items() if k != "record"}, line=line)
    hints = _hints(cls)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise RecordError(f"{where}: {kind} record lacks field {missing[0]!r} (required: {', '.join(required)})")
    try:
        known = {name: _convert(raw[name], hint, name) for name, hint in hints.items() if name in raw}
        return cls(**known, extra={k: v for k, v in raw.items() if k not in hints and k != "record"}, line=line)
    except _FieldError as e:
        raise RecordError(f"{where}: {kind} record {raw.get('id', raw.get('run', ''))!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# A file's records and the questions asked of them.


@dataclasses.dataclass(frozen=True)
class Attempts:
    """How an entry fared so far.

    Attributes:
      done, killed, partial, failed: its results by status.
      interrupted: starts without a result (the run was killed from outside).
      allotted_s: the longest time a run gave it before killing it.
    """

    done: int = 0
    killed: int = 0
    partial: int = 0
    failed: int = 0
    interrupted: int = 0
    allotted_s: float = 0.0


R = TypeVar("R", bound=Record)


class Records(Sequence[Record]):
    """The records of a results file, in file order, with the questions the campaign asks of them."""

    def __init__(self, records: Iterable[Record] = (), *, source: str = "<records>"):
        self._records = list(records)
        self.source = source

    @classmethod
    def of(cls, records: Records | Iterable[Mapping[str, Any]], *, source: str = "<records>") -> Records:
        """``records`` as typed records: as they are when typed already, else each dict validated."""
        if isinstance(records, Records):
            return records
        out = cls(source=source)
        for raw in records:
            out.add(raw)
        return out

    def add(self, raw: Mapping[str, Any], *, line: int = 0) -> Record:
        """Validates one more record (as just appended to the file) and keeps it; returns it typed."""
        record = parse(raw, where=f"{self.source}:{line}" if line else f"{self.source}, record {len(self) + 1}",
                       line=line)
        self._records.append(record)
        return record

    def __getitem__(self, index):
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"Records({self.source!r}, {len(self)} records)"

    def of_kind(self, cls: type[R]) -> list[R]:
        return [r for r in self._records if isinstance(r, cls)]

    def runs(self) -> list[Run]:
        return self.of_kind(Run)

    def started(self, entry_id: str | None = None) -> list[Started]:
        return [r for r in self.of_kind(Started) if entry_id is None or r.id == entry_id]

    def results(self, entry_id: str | None = None) -> list[Result]:
        """Every result (of ``entry_id`` when given), in file order."""
        return [r for r in self.of_kind(Result) if entry_id is None or r.id == entry_id]

    def sizings(self) -> list[Sizing]:
        return self.of_kind(Sizing)

    def latest_results(self) -> dict[str, Result]:
        """Each entry's last result, a 'done' one preferred over any later other outcome."""
        latest: dict[str, Result] = {}
        for r in self.results():
            if r.id not in latest or r.status == "done" or latest[r.id].status != "done":
                latest[r.id] = r
        return latest

    def evaluations(self, result: Result | None = None, *, network: str | None = None) -> list[Evaluation]:
        """Evaluations (of ``result``'s samples, by the scorer labelled ``network``, when given)."""
        return [e for e in self.of_kind(Evaluation)
                if (result is None or e.result_key == result.key) and (network is None or e.network == network)]

    def crosschecks(self, evaluation: Evaluation | None = None, *, network: str | None = None) -> list[Crosscheck]:
        """Cross-checks (of ``evaluation``'s device features, by ``network`` here, when given)."""
        of = None if evaluation is None else (*evaluation.result_key, evaluation.network)
        return [c for c in self.of_kind(Crosscheck)
                if (of is None or (c.id, c.of_run, c.of_network) == of) and (network is None or c.network == network)]

    def done_ids(self) -> set[str]:
        """Entries with a 'done' result."""
        return {r.id for r in self.results() if r.status == "done"}

    def attempts(self, entry_id: str) -> Attempts:
        """How ``entry_id`` fared so far (a start is closed by the next result of the same entry)."""
        counts = dict.fromkeys(STATUSES, 0)
        open_starts, allotted = 0, 0.0
        for r in self._records:
            if isinstance(r, Started) and r.id == entry_id:
                open_starts += 1
            elif isinstance(r, Result) and r.id == entry_id:
                open_starts = max(0, open_starts - 1)
                counts[r.status] += 1
                if r.status == "killed":
                    allotted = max(allotted, r.allotted_s)
        return Attempts(**counts, interrupted=open_starts, allotted_s=allotted)


def load(path: str | Path) -> Records:
    """The validated records of ``path`` (none if it does not exist).

    A last line cut off by a kill (not JSON) is dropped; any other line that is not a record is a
    :class:`RecordError` naming the file and line.
    """
    path = Path(path)
    records = Records(source=str(path))
    if not path.is_file():
        return records
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise RecordError(f"{path}:{number}: not a JSON line ({e.msg} at column {e.colno})") from None
        records.add(raw, line=number)
    return records


# ----------------------------------------------------------------------------------------------
# Raw JSON lines: the writers' side, and the functions the runner and paper.reproduce call.


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON line of ``path`` as a dict, unvalidated (none if it does not exist); lines that
    are not JSON (a last line cut off by a kill) are dropped. Campaign records: :func:`load`."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append(path: str | Path, record: Mapping[str, Any]) -> None:
    """Appends one record and flushes it to disk (a kill right after loses nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        f.flush()


def _key(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=float)


def merge(into: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Appends the records ``into`` lacks (compared whole); returns how many were added."""
    have = {_key(r) for r in read(into)}
    added = 0
    for record in records:
        if _key(record) not in have:
            append(into, record)
            have.add(_key(record))
            added += 1
    return added


def done_ids(records: Records | Iterable[Mapping[str, Any]]) -> set[str]:
    """Entries with a 'done' result (:meth:`Records.done_ids`)."""
    return Records.of(records).done_ids()


def attempts(records: Records | Iterable[Mapping[str, Any]], entry_id: str) -> dict[str, Any]:
    """:meth:`Records.attempts` as a dict: counts by outcome ('interrupted' = started, no result:
    the run was killed from outside) and the longest time the runner gave it before killing it
    (``allotted_s``)."""
    return dataclasses.asdict(Records.of(records).attempts(entry_id))

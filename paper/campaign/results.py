"""The campaign's results file: JSON lines, one record per event, appended, never rewritten.

Records (``record`` field):

- ``run``: one per runner call: device, versions, commit, deadline, plan.
- ``started``: an entry began (a run killed from outside leaves this without an outcome).
- ``result``: an entry's outcome, ``status`` 'done' | 'killed' (its time ran out) | 'partial' (a
  benchmark entry that stopped at its deadline; the next run resumes it) | 'failed'
  (non-zero exit), with metrics, step and compile times, the command, and the artifacts it
  wrote (GAN samples).
- ``evaluation``: FID/KID of a result's samples, computed on the CPU (``--evaluate``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["append", "attempts", "done_ids", "merge", "read"]


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every record of ``path`` (none if it does not exist); a last line cut off by a kill is dropped."""
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


def done_ids(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """Entries with a 'done' result."""
    return {r["id"] for r in records if r.get("record") == "result" and r.get("status") == "done"}


def attempts(records: Sequence[Mapping[str, Any]], entry_id: str) -> dict[str, Any]:
    """How an entry fared so far: counts by outcome ('interrupted' = started, no result: the run was
    killed from outside) and the longest time the runner gave it before killing it (``allotted_s``)."""
    out = {"done": 0, "killed": 0, "failed": 0, "interrupted": 0, "allotted_s": 0.0}
    open_starts = 0
    for r in records:
        if r.get("id") != entry_id:
            continue
        if r.get("record") == "started":
            open_starts += 1
        elif r.get("record") == "result":
            open_starts = max(0, open_starts - 1)
            out[r["status"]] = out.get(r["status"], 0) + 1
            if r["status"] == "killed":
                out["allotted_s"] = max(out["allotted_s"], float(r.get("allotted_s", 0.0)))
    out["interrupted"] = open_starts
    return out

"""The campaign's processes: the GPUs nvidia-smi lists, and the commands it runs, killed with it.

The runner never initializes JAX: every experiment is a command in a process of its own
(:class:`Process`), started in the repository root with the repository on ``PYTHONPATH``; the GPU
is found through nvidia-smi (:func:`gpus`), and a packed group's processes share its memory
(:func:`group_env`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["TERM_GRACE_S", "Gpu", "Process", "gpus", "group_env", "spawn"]

#: Seconds a killed command gets to exit after SIGTERM (the trainers checkpoint on it).
TERM_GRACE_S = 10.0

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi lists it (memory in MiB)."""

    name: str
    memory_free_mib: int
    memory_total_mib: int


def gpus() -> list[Gpu]:
    """The GPUs nvidia-smi lists ([] without nvidia-smi or when it fails), found without JAX."""
    if not shutil.which("nvidia-smi"):
        return []
    probe = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.free,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, check=False)
    found = []
    for line in probe.stdout.splitlines() if probe.returncode == 0 else []:
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            found.append(Gpu(parts[0], int(parts[1]), int(parts[2])))
    return found


def group_env(k: int) -> dict[str, str]:
    """Environment of each of ``k`` processes sharing the one device: no preallocation, and an
    equal share of its memory with one share left for sampling and scoring (none for ``k`` = 1)."""
    if k <= 1:
        return {}
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / (k + 1):.3f}"}


def _set_pdeathsig() -> None:
    # The command dies with the runner, also when the runner is SIGKILLed (Linux only).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Process:
    """One command of an entry, started at once; its output appended to ``log``."""

    def __init__(self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        argv = [sys.executable if a == "python" and i == 0 else a for i, a in enumerate(argv)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        log.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.start = clock()
        with open(log, "ab") as f:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=full_env,
                                         preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """SIGTERM (the trainers checkpoint on it), SIGKILL after :data:`TERM_GRACE_S`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now, if still running (a scratch run: nothing to save)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def seconds(self) -> float:
        return self.clock() - self.start


def spawn(argv: Sequence[str], *, log: Path, end: float, clock: Callable[[], float]) -> tuple[int, float, bool]:
    """Runs one command until it exits or ``end``; returns (exit code, seconds, killed at the deadline)."""
    proc = Process(argv, log=log, clock=clock)
    rc = proc.wait(end - clock())
    if rc is not None:
        return rc, proc.seconds, False
    return proc.stop(), proc.seconds, True

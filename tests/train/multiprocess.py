"""Test helper: runs a suite's CLI as N real JAX processes (or 1 process with N CPU devices).

Not a test module (no ``test_`` prefix): shared by test_multiprocess.py and test_preemption.py.
Every process is started in its own session and killed (its whole process group) when the
command times out or the caller's block exits, so a hung collective never outlives a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.shared import COMPILE_CACHE_ENV, FAST_COMPILE_FLAG

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the coordinator's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(devices: int = 1) -> dict[str, str]:
    """CPU-only JAX with ``devices`` host devices per process, the checkout on the path."""
    # The test run's compilation cache (tests/conftest.py) stays: the runs compile the same programs.
    env = {k: v for k, v in os.environ.items()
           if k in COMPILE_CACHE_ENV or not k.startswith(("JAX_", "XLA_", "SLURM_", "OMPI_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        # The test run's compile setting (tests/conftest.py) and the devices of this process.
        XLA_FLAGS=f"{FAST_COMPILE_FLAG} --xla_force_host_platform_device_count={devices}",
        PYTHONUNBUFFERED="1",
    )
    return env


def kill(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL to each process's group (the process and anything it started); then reap."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def start(argv: Sequence[str], *, processes: int, devices_per_process: int, logdir: Path) -> list[subprocess.Popen]:
    """Starts ``python -m argv...`` as ``processes`` JAX processes (gloo collectives, local coordinator)."""
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(processes):
        env = base_env(devices_per_process)
        if processes > 1:
            env.update(
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=str(processes),
                JAX_PROCESS_ID=str(rank),
            )
        log = open(logdir / f"process{rank}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return procs


def run(argv: Sequence[str], *, processes: int, devices_per_process: int, logdir: Path, timeout: float) -> None:
    """Runs to completion; on a non-zero exit or timeout kills all and fails with the logs' tails."""
    procs = start(argv, processes=processes, devices_per_process=devices_per_process, logdir=logdir)
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(procs)
        raise AssertionError(f"timed out after {timeout}s: {' '.join(argv)}\n{tails(logdir)}") from None
    finally:
        kill(procs)
    codes = [p.returncode for p in procs]
    if any(codes):
        raise AssertionError(f"exit codes {codes}: {' '.join(argv)}\n{tails(logdir)}")


def tails(logdir: Path, lines: int = 25) -> str:
    out = []
    for path in sorted(logdir.glob("process*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


def records(workdir: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl as {step: record} (a step's lines merged)."""
    out: dict[int, dict[str, float]] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(int(r["step"]), {}).update(r)
    return out


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())

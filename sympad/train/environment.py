"""Where and with what a run ran: the header record of benchmarks, analyses and reproductions.

    >>> from sympad.train.environment import environment
    >>> env = environment()
    >>> env["backend"], env["device"], env["jax"]  # doctest: +SKIP
    ('cpu', 'cpu', '0.10.2')

One flat dict of JSON-ready values, so that records from different tools compare key by key.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax

__all__ = ["VERSIONED", "environment", "git_commit", "versions"]

#: Distributions whose versions every record carries (None where not installed).
VERSIONED = ("jax", "jaxlib", "numpy", "flax", "optax", "orbax-checkpoint")


def versions() -> dict[str, str | None]:
    """Python's version and those of :data:`VERSIONED`, by distribution name."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The short commit of the checkout ``sympad`` runs from, ``+dirty`` with uncommitted changes.

    None for an installed copy: only a folder that holds ``.git`` beside the
    ``sympad`` package counts, so a venv inside some other repository does not
    report that repository's commit.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # A directory, or a file in a git worktree.
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=root)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=root)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """Date, devices, host, versions, XLA/JAX settings, commit and command line of this process.

    Keys: ``date`` (UTC, ISO 8601), ``backend``, ``device`` (the first device's
    kind), ``device_count``, ``cpu`` (model name), ``cpu_count``, ``platform``,
    ``python`` and one key per distribution of :data:`VERSIONED`, ``XLA_FLAGS``,
    ``jax_env`` (every ``JAX_*`` variable), ``git`` (:func:`git_commit`),
    ``argv``, and ``loadavg`` where the OS has one.
    """
    device = jax.devices()[0]
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        **versions(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "jax_env": {k: v for k, v in os.environ.items() if k.startswith("JAX_")},
        "git": git_commit(),
        "argv": list(sys.argv),
    }
    try:
        env["loadavg"] = list(os.getloadavg())
    except OSError:  # Not on every OS.
        pass
    return env

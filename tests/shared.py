"""Test data built once per test run and shared by every pytest-xdist worker (used by the conftests).

The shared CIFAR-10 archives are found as the paper's commands find them (``paper.shared_data``:
``$SYMPAD_SHARED_DATA``, else ``../shared/data`` beside the checkout), so a fresh clone with
``../shared`` beside it needs no setting, in the tests or in the processes they start.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

_DONE = ".complete"

#: The test run's compile settings (tests/conftest.py sets them in the environment): the processes
#: tests start keep them (tests/train/multiprocess.py, the device-like sandbox).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
COMPILE_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_ENABLE_COMPILATION_CACHE")

#: Where the processes tests start take the test run's warning filters from (tests/conftest.py sets
#: both): tests/site/sitecustomize.py reads the pytest ``filterwarnings`` lines from the variable.
WARNING_FILTERS_ENV = "SYMPAD_TEST_FILTERWARNINGS"
CHILD_SITE = Path(__file__).resolve().parent / "site"


def production_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) without the test run's compile settings: what a user runs.

    Drops the compilation-cache variables and :data:`FAST_COMPILE_FLAG` from ``XLA_FLAGS`` (the
    variable goes when nothing else is left in it); every other variable stays.
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in COMPILE_CACHE_ENV}
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if f != FAST_COMPILE_FLAG]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's temporary folder, the same for every pytest-xdist worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """``RUN/name``, built by ``build(path)`` in the first worker that asks; the others wait on a lock.

    Tests read it and never change it (a test that changes a run copies it first).
    """
    root = run_folder(tmp_path_factory)
    target = root / name
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _DONE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # a build that failed half-way
            target.mkdir(parents=True)
            build(target)
            (target / _DONE).touch()
    return target

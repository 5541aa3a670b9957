"""The op at the compile settings users run: default XLA flags, no compilation cache.

The suite compiles at LLVM -O0 through a persistent cache (tests/conftest.py), and the processes
tests start inherit both; XLA reads its flags once per process, so the grid runs in a process of
its own (tests/library/op_grid.py) with both taken away, once per full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.library import op_grid
from tests.shared import COMPILE_CACHE_ENV, FAST_COMPILE_FLAG, production_env

REPO = Path(__file__).resolve().parents[2]


def test_production_env_drops_only_the_test_compile_settings():
    environ = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAG}",
               **{k: "x" for k in COMPILE_CACHE_ENV}, "JAX_PLATFORMS": "cpu", "PATH": "/bin"}
    assert production_env(environ) == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                                       "JAX_PLATFORMS": "cpu", "PATH": "/bin"}
    assert production_env({"XLA_FLAGS": FAST_COMPILE_FLAG}) == {}


@pytest.mark.integration
def test_op_grid_matches_the_reference_at_default_flags_without_the_cache(tmp_path):
    # This process has both settings (otherwise the test would prove nothing about taking them away).
    assert FAST_COMPILE_FLAG in os.environ["XLA_FLAGS"].split() and os.environ.get("JAX_COMPILATION_CACHE_DIR")
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "tests.library.op_grid", str(report)], cwd=REPO,
                            env=production_env(), capture_output=True, text=True)
    assert report.is_file(), result.stdout + result.stderr
    got = json.loads(report.read_text())
    settings = got["settings"]
    assert FAST_COMPILE_FLAG not in settings["XLA_FLAGS"].split(), settings
    assert not settings["cache_env"] and settings["jax_compilation_cache_dir"] is None, settings
    assert got["cases"] == len(op_grid.cases()) > 90
    assert not got["failures"], "\n".join(f"{case}:\n{error}" for case, error in got["failures"].items())
    assert result.returncode == 0, result.stdout + result.stderr

"""sympad.train.environment: the one run-header record (benchmarks, analyses, reproduction)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path

import jax

from sympad.train import environment as environment_module
from sympad.train.environment import environment, git_commit, versions

REPO = Path(__file__).resolve().parents[2]


def test_environment_record(monkeypatch):
    jax.devices()  # XLA reads XLA_FLAGS once, when the backend starts: before the change below.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("JAX_TEST_SETTING", "on")
    env = environment()
    assert json.loads(json.dumps(env)) == env  # JSON-ready as it is
    assert env["backend"] == jax.default_backend() and env["device_count"] == jax.device_count()
    assert env["device"] == jax.devices()[0].device_kind
    assert env["jax"] == jax.__version__ and env["python"] == platform.python_version()
    assert env["flax"] == importlib.metadata.version("flax")
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1" and env["jax_env"]["JAX_TEST_SETTING"] == "on"
    assert env["date"].endswith("+00:00") and env["cpu_count"] >= 1
    assert set(versions()) <= set(env)


def test_versions_of_missing_distributions_are_none(monkeypatch):
    monkeypatch.setattr(environment_module, "VERSIONED", ("jax", "surely-not-installed-sympad-test"))
    assert versions() == {"python": platform.python_version(), "jax": jax.__version__,
                          "surely-not-installed-sympad-test": None}


def test_git_commit_of_the_checkout_only(monkeypatch, tmp_path):
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        assert git_commit().removesuffix("+dirty") == head.stdout.strip()
    # An installed copy (no .git beside the package) has no commit, even inside another repository.
    site = tmp_path / "venv" / "lib" / "site-packages"
    monkeypatch.setattr(environment_module, "__file__", str(site / "sympad" / "train" / "environment.py"))
    assert git_commit() is None

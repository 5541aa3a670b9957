"""Suite-wide fixtures and the tier rule.

Hermetic: no test sees the user's fetched Inception weights or stats cache.
``feature_network='auto'`` uses Inception whenever ``python -m gan.metrics.fetch`` has filled
the cache; pointing ``SYMPAD_CACHE`` at a fresh directory makes 'auto' mean the offline network
in every test unless the test itself provides weights.

Shared: the CIFAR-10 test JPEGs, extracted once per test run (``cifar10_test_root``), and one
JAX persistent compilation cache per test run (``JAX_COMPILATION_CACHE_DIR``, inherited by the
pytest-xdist workers and every Python process a test starts): many tests compile the same
programs (the same tiny GAN step in-process and in CLI subprocesses), and on a 2-core CPU the
compiles are most of the full tier's time. A cached executable is the same compiled program, so
values do not change. A contributor who sets ``JAX_COMPILATION_CACHE_DIR`` keeps theirs.
The op grid at default flags (tests/library/test_production_flags.py) and the clean venv
(tests/test_packaging.py) run without either compile setting (``tests.shared.production_env``).

Strict: the warning filters (pyproject's ``filterwarnings``: deprecations of jax, flax, optax and
orbax are errors) hold in the processes tests start too, through tests/site/sitecustomize.py.

Tiers (tests/tiers.py): a test that starts a Python process or builds a venv and carries neither
``slow`` nor ``integration`` fails at its end, in both tiers, with the fix in its message
(``_unmarked_tests_start_no_python``).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from paper import shared_data
from tests import shared, tiers

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_made_cache: list[str] = []  # the folder this process made, removed at its end (not a worker's or a child's)


def pytest_configure(config):
    if _CACHE_ENV not in os.environ:  # the controller (or a plain run); workers inherit the variables
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="sympad-test-jax-cache-")
        _made_cache.append(os.environ[_CACHE_ENV])
        # Every program, however small: a model's eager init compiles one per op. Measured with
        # the runlocal GAN CLI for 3 steps: 23.6 s cold, 15.1 s with programs over 0.2 s cached,
        # 9.7 s with all of them.
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # LLVM at -O0 for the programs the tests compile (they run a few steps of tiny models; the
    # convolutions and matmuls are library calls either way): the tiny GAN step compiles in 4.4 s
    # instead of 7.9 s. Workers and the processes tests start inherit it; XLA reads it when the
    # backend starts, after this.
    if shared.FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {shared.FAST_COMPILE_FLAG}".strip()
    # The warning filters (pyproject's filterwarnings, -W) for the Python processes tests start:
    # tests/site/sitecustomize.py applies them there.
    os.environ[shared.WARNING_FILTERS_ENV] = json.dumps(
        [*config.getini("filterwarnings"), *(config.known_args_namespace.pythonwarnings or [])])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(shared.CHILD_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(shared.CHILD_SITE), *paths])
    # jax was imported (this file's imports) before the variables were set in this process.
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")))


def pytest_unconfigure(config):
    for folder in _made_cache:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _unmarked_tests_start_no_python(request, monkeypatch):
    """An unmarked test fails if it started Python or built a venv, itself or through code it called."""
    if tiers.tier_marks(request.node):
        yield
        return
    started = tiers.watch(monkeypatch)
    yield
    if started:
        pytest.fail(f"{request.node.nodeid} started {started[0]} but carries neither mark of {tiers.TIER_MARKS}: "
                    "mark it @pytest.mark.integration (or slow) so the fast tier stays fast (tests/tiers.py)",
                    pytrace=False)


@pytest.fixture(autouse=True)
def _private_sympad_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SYMPAD_CACHE", str(tmp_path_factory.mktemp("sympad_cache")))


@pytest.fixture(scope="session")
def cifar10_test_root(tmp_path_factory) -> Path:
    """ROOT with ROOT/test/<class>/<n>.jpg from the shared archive, extracted once per test run.

    Every test that read the 10k JPEGs used to extract them into a folder of its own. Skips
    without the archive.
    """
    if shared_data.shared_data_file("cifar10-test.tar.gz") is None:
        pytest.skip(f"shared CIFAR-10 archives not present (../shared/data or ${shared_data.SHARED_DATA_ENV})")
    cache = shared.build_once(tmp_path_factory, "cifar10",
                              lambda path: shared_data.cifar10_folder("test", cache_dir=path))
    return cache / "cifar10-jpeg"

"""The test configuration itself: the two tiers, the rule that keeps process-starting tests out
of the fast one, that CI runs the full suite, the compile settings and the deprecation filters
(tests/tiers.py, tests/conftest.py, pyproject.toml)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
import venv
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

from tests import tiers

REPO = Path(__file__).resolve().parents[1]
PYTEST = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def _mark_expression(args: list[str]) -> str | None:
    """The last -m expression of a pytest argument list (the one pytest uses), or None."""
    found = None
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("-m") and len(arg) > 2:
            found = arg[2:]
    return found


def _selects(expression: str, marks: set[str]) -> bool:
    return not expression or Expression.compile(expression).evaluate(lambda name, **kwargs: name in marks)


def test_fast_tier_deselects_every_slow_or_integration_test():
    expression = _mark_expression(shlex.split(PYTEST["addopts"]))
    assert expression == tiers.FAST_TIER
    for marks in ({"slow"}, {"integration"}, {"slow", "integration"}, {"slow", "parametrize"}):
        assert not _selects(expression, marks), marks
    assert _selects(expression, set()) and _selects(expression, {"parametrize", "skipif"})
    registered = {line.split(":")[0] for line in PYTEST["markers"]}
    assert set(tiers.TIER_MARKS) <= registered


def test_ci_runs_the_full_suite_with_durations_and_a_timeout():
    script = (REPO / ".ci" / "run").read_text()
    pattern = re.search(r"grep -m1 -E \"(.*)\" README.md", script).group(1)
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if re.search(pattern, line))
    args = shlex.split(command.split("pytest", 1)[1].split("#")[0])
    # An empty -m after the addopts' one: nothing deselected.
    assert _mark_expression(args) == "" and _selects(_mark_expression(args), {"slow", "integration"})
    assert "--durations=25" in args
    # The linter first (issue 32): its rules in pyproject, the tool in the test extra.
    assert "ruff check ." in command.split("pytest", 1)[0]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "ruff" in " ".join(extras["test"])
    assert "pytest-timeout" in " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())
                                        ["project"]["optional-dependencies"]["test"])
    assert int(PYTEST["timeout"]) > 0
    # The README's fast command is the plain one: the configuration's own selection.
    fast = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line]
    assert any(_mark_expression(shlex.split(line.split("pytest", 1)[1].split("#")[0])) is None for line in fast)


def test_the_watch_records_python_and_venvs_only(monkeypatch, tmp_path):
    # Stand-ins for starting a process and building a venv, so that nothing starts: the watch wraps
    # whatever is in place (here the stand-ins, in place of this test's own watch from conftest).
    reached = []

    def no_process(self, args, *rest, **kwargs):
        reached.append(args)
        self._child_created = False  # what Popen.__del__ looks at

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(venv.EnvBuilder, "create", lambda self, env_dir: reached.append(env_dir))
    started = tiers.watch(monkeypatch)
    subprocess.Popen([sys.executable, "-m", "gan.main"])
    subprocess.Popen("python3 -c pass", shell=True)
    subprocess.Popen(["git", "rev-parse", "HEAD"])  # milliseconds: allowed in the fast tier
    venv.create(tmp_path / "venv", with_pip=False)
    assert started == [repr([sys.executable, "-m", "gan.main"]), repr("python3 -c pass"),
                       f"a venv in {tmp_path / 'venv'}"]
    assert len(reached) == 4  # each call went on to what the watch wraps
    assert tiers.is_python_command([sys.executable, "-m", "gan.main"]) and tiers.is_python_command("python3 -c pass")
    assert not tiers.is_python_command(["git", "status"])


def test_every_unmarked_test_runs_under_the_watch():
    # tests/conftest.py's autouse fixture: this (unmarked) test's Popen is the watch's recorder.
    assert subprocess.Popen.__init__.__qualname__ == "watch.<locals>.recording_init"
    assert venv.EnvBuilder.create.__qualname__ == "watch.<locals>.recording_create"


def test_the_test_run_caches_and_cheapens_its_compiles():
    # tests/conftest.py: compiles are most of the suite's time on a CPU. Both settings reach the
    # processes tests start through the environment, so they are checked there, and in this process.
    import os

    import jax

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    assert cache and jax.config.jax_compilation_cache_dir == cache
    assert "--xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", "").split()
    from tests.train import multiprocess

    env = multiprocess.base_env(devices=2)
    assert env["JAX_COMPILATION_CACHE_DIR"] == cache
    assert "--xla_backend_optimization_level=0" in env["XLA_FLAGS"].split()


# Deprecations (pyproject's filterwarnings): an error wherever the warning is attributed, inside
# jax, flax, optax or orbax (stacklevel 1) or in the project's code that called them (stacklevel 2).


def _function_in(module: str, source: str, **names) -> Callable:
    """``f`` from ``def f(): ...`` run as code of ``module`` (the module a warning names)."""
    namespace = {"__name__": module, "warnings": warnings, **names}
    exec(source, namespace)
    return namespace["f"]


def _deprecated_api(library: str, *, stacklevel: int) -> Callable:
    source = f"def f():\n    warnings.warn('old API', DeprecationWarning, stacklevel={stacklevel})\n"
    return _function_in(library, source)


def test_deprecations_of_jax_flax_optax_and_orbax_are_errors():
    import jax
    import jax.numpy as jnp

    # Two that jax 0.10 deprecates: attributed to this module (the caller), and to jax itself.
    with pytest.raises(DeprecationWarning, match="positionally"):
        jnp.array([1.0], None, True)
    with pytest.raises(DeprecationWarning, match="integer-typed"):
        jax.nn.one_hot(jnp.array([0.0, 1.0]), 2)
    for library in ("jax._src.api", "flax.nnx.module", "flax.linen.module", "optax._src.transform",
                    "orbax.checkpoint.checkpointer"):
        with pytest.raises(DeprecationWarning):
            _deprecated_api(library, stacklevel=1)()
        for caller in ("gan.train", "sympad.linen", "paper.runner", "__main__"):
            with pytest.raises(DeprecationWarning):
                _function_in(caller, "def f():\n    api()\n", api=_deprecated_api(library, stacklevel=2))()
    # Other libraries' own deprecations stay warnings: they are not the project's to fix.
    with warnings.catch_warnings(record=True) as caught:
        _deprecated_api("tensorflow_datasets.core", stacklevel=1)()
        _deprecated_api("jaxtyping", stacklevel=1)()  # a prefix of the name is not the package
    assert [w.category for w in caught] == [DeprecationWarning] * 2


CHILD = """
import json, sys, warnings
import jax, jax.numpy as jnp
caught = []
for name, call in [
    ("project", lambda: jnp.array([1.0], None, True)),
    ("jax", lambda: jax.nn.one_hot(jnp.array([0.0]), 2)),
]:
    try:
        call()
    except DeprecationWarning:
        caught.append(name)
print(json.dumps({"caught": caught, "shadowed": "shadowed_sitecustomize" in sys.modules}))
"""


@pytest.mark.integration
def test_processes_tests_start_keep_the_deprecation_filters(tmp_path):
    import json
    import os
    import subprocess

    from tests.shared import CHILD_SITE, WARNING_FILTERS_ENV

    assert json.loads(os.environ[WARNING_FILTERS_ENV])[:len(PYTEST["filterwarnings"])] == PYTEST["filterwarnings"]
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(CHILD_SITE)
    # A sitecustomize of the environment, shadowed by the test run's, still runs.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['shadowed_sitecustomize'] = sys\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ["PYTHONPATH"], str(tmp_path)]))
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"caught": ["project", "jax"], "shadowed": True}

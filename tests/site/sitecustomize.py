"""The test run's warning filters in every Python process a test starts (CLIs, the multi-process runs).

tests/conftest.py puts this folder first on ``PYTHONPATH`` and the ``filterwarnings`` lines of the
pytest configuration in ``$SYMPAD_TEST_FILTERWARNINGS`` (JSON); Python imports ``sitecustomize`` at
startup, before any module the process runs, so a CLI that calls an API jax deprecates fails its
test as the same call in a test does. ``PYTHONWARNINGS`` cannot carry them: its module field is one
exact module name, not a pattern. Outside a test run (no variable) this module changes nothing. A
``sitecustomize`` that this one shadows on the path still runs, after it.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

FILTERS_ENV = "SYMPAD_TEST_FILTERWARNINGS"


def _category(name: str) -> type[Warning]:
    """``'DeprecationWarning'`` or ``'package.module.SomeWarning'``, as pytest reads a filter's category."""
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module) if module else builtins, attr or "Warning")


def install(lines: list[str]) -> None:
    """Applies pytest ``filterwarnings`` lines (``action:message:category:module:lineno``) in order.

    Each filter goes in front of the ones before it, so the last matching line wins, as in pytest.
    """
    for line in lines:
        action, message, category, module, lineno = (line.split(":") + [""] * 5)[:5]
        warnings.filterwarnings(action.strip(), message.strip(), _category(category.strip()), module.strip(),
                                int(lineno or 0))


def _run_shadowed() -> None:
    """Runs the ``sitecustomize`` found on the path after this folder, if any."""
    here = Path(__file__).resolve().parent
    rest = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


install(json.loads(os.environ.get(FILTERS_ENV, "[]")))
_run_shadowed()

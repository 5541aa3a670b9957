"""The two test tiers, and the rule that keeps process-starting tests out of the fast one.

``pytest -n 2`` runs the fast tier: pyproject's addopts deselect the tests marked ``slow``
(in-process but long: end-to-end training runs, big compiles) or ``integration`` (across a
process boundary: CLIs in a subprocess, several processes, signals, builds, a clean venv).
``pytest -n 2 -m ''`` runs everything; that is what ``.ci/run`` does.

A test that starts a Python process or builds a venv must carry one of the two marks.
tests/conftest.py checks that when the suite is collected, so such a test cannot slip into the
fast tier unmarked: :func:`starts_a_process` reads the test, the helpers of the tests package it
calls and the fixtures it uses, and looks for a process being started.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterable

TIER_MARKS = ("slow", "integration")
#: The fast tier's mark expression, as pyproject's addopts give it.
FAST_TIER = "not slow and not integration"

# Starting Python or a build costs seconds, so it marks a test. git is exempt: a `git ls-files` or
# `git rev-parse` takes milliseconds.
_PROCESS = re.compile(
    r"sys\.executable"
    r"|subprocess\.(run|Popen|call|check_call|check_output)\(\s*(?!\[\s*[\"']git[\"'])"
    r"|\bPopen\("
    r"|os\.(fork|system|exec[lv]p?e?|spawn\w*)\("
    r"|\bmultiprocessing\b|ProcessPoolExecutor"
    r"|\bvenv\.(create|EnvBuilder)\b"
)


def _source(function: Callable) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _names(code: types.CodeType) -> Iterable[str]:
    """Global and attribute names a function's code refers to, nested functions and lambdas included."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _in_tests(obj: object) -> bool:
    return (getattr(obj, "__module__", None) or getattr(obj, "__name__", "") or "").startswith("tests")


@functools.cache
def starts_a_process(function: Callable) -> bool:
    """Whether ``function``, or a function of the tests package it calls, starts a process or builds a venv."""
    return _starts_a_process(function, set())


def _starts_a_process(function: Callable, seen: set) -> bool:
    function = inspect.unwrap(function)
    if function in seen or not hasattr(function, "__code__") or function.__module__ == __name__:
        return False  # this module names processes to find them, it starts none
    seen.add(function)
    if _PROCESS.search(_source(function)):
        return True
    names = set(_names(function.__code__))
    for name in names:
        target = function.__globals__.get(name)
        if inspect.isfunction(target) and _in_tests(target):
            if _starts_a_process(target, seen):
                return True
        elif inspect.ismodule(target) and _in_tests(target):
            # A helper module of the tests package (tests/train/multiprocess.py): the functions used from it.
            for attr in names:
                helper = getattr(target, attr, None)
                if inspect.isfunction(helper) and _starts_a_process(helper, seen):
                    return True
    return False


def item_starts_a_process(item) -> bool:
    """Whether a collected pytest item's test function or any fixture it uses starts a process."""
    if starts_a_process(item.function):
        return True
    fixtures = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for definition in (fixtures.name2fixturedefs.get(name, ()) if fixtures else ()):
            if _in_tests(definition.func) and starts_a_process(definition.func):
                return True
    return False


def tier_marks(item) -> set[str]:
    return {m.name for m in item.iter_markers() if m.name in TIER_MARKS}


def is_python_command(args) -> bool:
    """Whether a Popen argument list (or shell string) starts a Python interpreter."""
    first = args.split()[0] if isinstance(args, str) and args.split() else (
        os.fspath(args[0]) if isinstance(args, (list, tuple)) and args else "")
    return first == sys.executable or re.fullmatch(r"python[\d.]*", os.path.basename(first)) is not None

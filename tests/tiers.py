"""The two test tiers, and the rule that keeps process-starting tests out of the fast one.

``pytest -n 2`` runs the fast tier: pyproject's addopts deselect the tests marked ``slow``
(in-process but long: end-to-end training runs, big compiles) or ``integration`` (across a
process boundary: CLIs in a subprocess, several processes, signals, builds, a clean venv).
``pytest -n 2 -m ''`` runs everything; that is what ``.ci/run`` does.

A test declares its tier with one of the two marks. One that starts a Python process or builds a
venv must carry one: tests/conftest.py runs every unmarked test under :func:`watch`, which records
what it starts (through ``subprocess.Popen``, whoever calls it: the test, a helper or library code)
and builds, and fails the test at its end with the fix in the message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv

import pytest

TIER_MARKS = ("slow", "integration")
#: The fast tier's mark expression, as pyproject's addopts give it.
FAST_TIER = "not slow and not integration"


def tier_marks(item) -> set[str]:
    """The tier marks a collected test carries."""
    return {m.name for m in item.iter_markers() if m.name in TIER_MARKS}


def is_python_command(args) -> bool:
    """Whether a Popen argument list (or shell string) starts a Python interpreter."""
    first = args.split()[0] if isinstance(args, str) and args.split() else (
        os.fspath(args[0]) if isinstance(args, (list, tuple)) and args else "")
    return first == sys.executable or re.fullmatch(r"python[\d.]*", os.path.basename(first)) is not None


def watch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records, until ``monkeypatch`` is undone, the Python processes started and the venvs built.

    Starting Python or building a venv costs seconds; git and other quick tools are not recorded.

    Returns:
      The list it appends to: each Python command's arguments, each venv's folder, as text.
    """
    started: list[str] = []
    popen_init = subprocess.Popen.__init__
    create_venv = venv.EnvBuilder.create

    def recording_init(self, args, *rest, **kwargs):
        if is_python_command(args):
            started.append(repr(args))
        popen_init(self, args, *rest, **kwargs)

    def recording_create(self, env_dir):
        started.append(f"a venv in {env_dir}")
        create_venv(self, env_dir)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    monkeypatch.setattr(venv.EnvBuilder, "create", recording_create)
    return started

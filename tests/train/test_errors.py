"""sympad.train.errors: user errors as one ``error:`` line and status 2, bugs as tracebacks.

Each case runs a small fake CLI in a subprocess, as a user would, and reads its stderr and status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sympad.train import errors
from sympad.train.checkpoint import CheckpointError, CorruptCheckpointError
from sympad.train.data import CorruptImageError, DatasetNotPreparedError

REPO = Path(__file__).resolve().parents[2]

_ARGPARSE_CLI = '''
import argparse, sys
from sympad.train.errors import ConfigError, UserError, run_cli

def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--path")
    p.add_argument("--case", default="ok")
    args = p.parse_args(argv)
    if args.size < 1:
        raise ConfigError(f"--size must be >= 1, got {args.size}")
    if args.path:
        open(args.path).read()
    if args.case == "bug":
        return [][1]
    if args.case == "untyped":
        raise ValueError("a check that forgot its type")
    if args.case == "numpy-bug":
        import numpy as np
        return np.ones(3) + np.ones(4)
    if args.case == "multiline":
        raise UserError("3 files are broken:\\n  a.png\\n  b.png\\nfix them")
    if args.case == "exit-message":
        sys.exit("error: give --path")
    print("done")
    return {"result": 1}

if __name__ == "__main__":
    run_cli(main)
'''

_ABSL_CLI = '''
from absl import app, flags
import functools
from ml_collections import config_flags
from sympad.train.config import loaded_config, parse_flags
from sympad.train.errors import ConfigError, run_absl

flags.DEFINE_integer("size", 1, "a positive size")
flags.DEFINE_string("case", "ok", "what to do")
config_flags.DEFINE_config_file("config", None, "a config file")

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.size < 1:
        raise ConfigError(f"--size must be >= 1, got {flags.FLAGS.size}")
    if flags.FLAGS.case == "bug":
        return {}["missing"]
    config = loaded_config(flags.FLAGS)
    print("batch", config.batch_size if config else None)
    return {"a dict": "app.run would sys.exit() with it"}

if __name__ == "__main__":
    run_absl(main, parse_flags=functools.partial(parse_flags, flags.FLAGS))
'''

_CONFIG = '''
import ml_collections

def get_config():
    return ml_collections.ConfigDict({"batch_size": 64})
'''


@pytest.fixture(scope="module")
def clis(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clis")
    paths = {"argparse": root / "argparse_cli.py", "absl": root / "absl_cli.py", "config": root / "config.py"}
    for name, text in (("argparse", _ARGPARSE_CLI), ("absl", _ABSL_CLI), ("config", _CONFIG)):
        paths[name].write_text(textwrap.dedent(text))
    return paths


def _run(script: Path, *args: str, traceback: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    if traceback:
        env[errors.TRACEBACK_ENV] = "1"
    return subprocess.run(
        [sys.executable, str(script), *args],
        check=False, capture_output=True, text=True, env=env, cwd=script.parent, timeout=120,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Checks status 2, one ``error:`` line and no traceback; returns the error line.

    The needles may also be in the indented lines that continue the error line.
    """
    assert result.returncode == 2, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    after = result.stderr.split(lines[0], 1)[1].splitlines()
    assert all(line.startswith("  ") or not line for line in after), result.stderr  # nothing after it
    block = "\n".join([lines[0], *after])
    for needle in needles:
        assert needle in block, block
    return lines[0]


def _assert_bug(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith(needle), result.stderr
    assert not _error_lines(result.stderr), result.stderr


# ----------------------------------------------------------------------------------------------
# argparse-style CLI: run_cli(main)


@pytest.mark.integration
def test_argparse_ok(clis):
    result = _run(clis["argparse"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done" and not result.stderr


@pytest.mark.integration
def test_argparse_bad_value_is_one_line_status_2(clis):
    line = _assert_user_error(_run(clis["argparse"], "--size=-3"))
    assert line == "error: --size must be >= 1, got -3"


@pytest.mark.integration
def test_argparse_missing_file(clis, tmp_path):
    missing = tmp_path / "nowhere" / "data.txt"
    line = _assert_user_error(_run(clis["argparse"], f"--path={missing}"))
    assert line == f"error: No such file or directory: {str(missing)!r}"


@pytest.mark.integration
def test_argparse_own_usage_error_keeps_argparse_behaviour(clis):
    result = _run(clis["argparse"], "--size=abc")
    assert result.returncode == 2 and "invalid int value: 'abc'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_sys_exit_message_becomes_an_error_line(clis):
    assert _assert_user_error(_run(clis["argparse"], "--case=exit-message")) == "error: give --path"


@pytest.mark.integration
def test_multiline_message_has_one_error_line_then_indented_lines(clis):
    result = _run(clis["argparse"], "--case=multiline")
    _assert_user_error(result, "3 files are broken:")
    tail = result.stderr.splitlines()[-3:]
    assert tail == ["  a.png", "  b.png", "  fix them"]


@pytest.mark.integration
@pytest.mark.parametrize("case, needle", [("bug", "IndexError"), ("untyped", "ValueError: a check that forgot"),
                                          ("numpy-bug", "ValueError: operands could not be broadcast")])
def test_genuine_bug_keeps_traceback_and_status_1(clis, case, needle):
    # Only typed errors are the user's: a plain ValueError, ours or numpy's, is a bug.
    _assert_bug(_run(clis["argparse"], f"--case={case}"), needle)


@pytest.mark.integration
def test_env_var_shows_the_traceback_of_a_user_error(clis):
    result = _run(clis["argparse"], "--size=0", traceback=True)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "raise ConfigError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == "error: --size must be >= 1, got 0"
    assert len(_error_lines(result.stderr)) == 1


# ----------------------------------------------------------------------------------------------
# absl-style CLI: run_absl(main) in place of app.run(main)


@pytest.mark.integration
def test_absl_ok_ignores_a_non_int_return_value(clis):
    result = _run(clis["absl"], f"--config={clis['config']}", "--config.batch_size=8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "batch 8"


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, needles",
    [
        (["--size=0"], ["--size must be >= 1, got 0"]),
        (["--nope=1"], ["nope"]),  # unknown flag: absl would print FATAL Flags parsing error, status 1
        (["--size=abc"], ["size", "abc"]),
        (["extra"], ["unexpected arguments: ['extra']"]),  # app.UsageError: absl would print the usage
        (["--config=does_not_exist.py"], ["does_not_exist.py"]),
        (["--config=config.py", "--config.batch_size=big"], ["batch_size", "big"]),
        (["--config=config.py", "--config.batch_sise=8"], ["batch_sise"]),
    ],
    ids=[
        "validation", "unknown-flag", "bad-flag-value", "usage-error", "missing-config", "override-type", "override-key"
    ],
)
def test_absl_user_errors(clis, args, needles):
    result = _run(clis["absl"], *args)
    _assert_user_error(result, *needles)
    assert "FATAL" not in result.stderr and "USAGE" not in result.stderr


@pytest.mark.integration
def test_absl_bug_keeps_traceback(clis):
    _assert_bug(_run(clis["absl"], "--case=bug"), "KeyError")


@pytest.mark.integration
def test_absl_env_var_shows_the_traceback(clis):
    result = _run(clis["absl"], "--size=0", traceback=True)
    assert result.returncode == 2 and "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == "error: --size must be >= 1, got 0"


# ----------------------------------------------------------------------------------------------
# Classification and formatting, in process


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as e:  # the point is to get a traceback
        return e


def test_project_errors_are_user_errors_and_keep_their_builtin_bases():
    assert issubclass(CheckpointError, errors.UserError) and issubclass(CheckpointError, RuntimeError)
    assert issubclass(CorruptCheckpointError, CheckpointError)
    assert issubclass(CorruptImageError, errors.UserError) and issubclass(CorruptImageError, ValueError)
    assert issubclass(DatasetNotPreparedError, errors.UserError)
    assert issubclass(DatasetNotPreparedError, FileNotFoundError)
    for error in (CheckpointError("x"), CorruptImageError("x", ["a"]), DatasetNotPreparedError("x")):
        assert errors.is_user_error(_raised(error))


def test_classification():
    import errno

    from absl import app, flags

    assert errors.is_user_error(_raised(errors.ConfigError("a typed check")))
    assert errors.is_user_error(_raised(FileNotFoundError("no config.json in runs/x")))  # by type, without errno
    assert issubclass(errors.ConfigError, ValueError)
    assert not errors.is_user_error(_raised(ValueError("untyped, even from our code")))
    assert errors.is_user_error(_raised(OSError(errno.ENOSPC, "No space left on device", "/ckpt")))
    assert not errors.is_user_error(_raised(OSError(errno.EBADF, "Bad file descriptor")))
    assert errors.is_user_error(_raised(PermissionError(errno.EACCES, "Permission denied", "/x")))
    assert errors.is_user_error(_raised(flags.IllegalFlagValueError("bad")))
    assert errors.is_user_error(_raised(app.UsageError("bad")))
    for bug in (TypeError("x"), KeyError("x"), IndexError("x"), RuntimeError("x"), AssertionError("x")):
        assert not errors.is_user_error(_raised(bug))


def test_format_error():
    assert errors.format_error(ValueError("batch_size must be > 0, got -3")) == "error: batch_size must be > 0, got -3"
    assert errors.format_error("error: already prefixed") == "error: already prefixed"
    assert errors.format_error(errors.UserError("two\nlines\n  indented")) == "error: two\n  lines\n  indented"
    assert errors.format_error(FileNotFoundError(2, "No such file or directory", "/a")) == (
        "error: No such file or directory: '/a'"
    )
    assert errors.format_error(errors.UserError()) == "error: UserError"

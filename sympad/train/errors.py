"""How every command reports a mistake: one ``error: <what and how to fix>`` line, exit status 2.

A user's mistake (a bad flag or config value, a missing or unreadable file, corrupt data or
checkpoints, a full disk) is reported as one line on stderr, ``error: ...``, and the command exits
with status 2; lines after the first (a list of files, setup instructions) are indented. A genuine
bug keeps Python's traceback and status 1. Set ``SYMPAD_TRACEBACK=1`` to get the traceback for a
user error too (still status 2).

A CLI adopts it in one line: the call under its ``__main__`` guard becomes::

  run_cli(main)     # argparse-style: main(argv=None) parses sys.argv itself
  run_absl(main)    # absl-style: replaces app.run(main); flag errors get the same treatment

What counts as a user error (:func:`is_user_error`):

* :class:`UserError` and its subclasses: ``CheckpointError``, ``CorruptImageError``,
  ``DatasetNotPreparedError``, and any error a module defines for a mistake the user can fix.
* ``ValueError`` raised by a ``raise`` statement in this project's own code: validation at the
  boundary, naming the argument or config field. A ``ValueError`` from inside numpy, jax or
  another library (its own ``raise``, or C code such as numpy's broadcasting) is a bug in how we
  called it, and keeps its traceback. Re-raise one that is the user's fault (``raise
  ValueError(...) from e`` in our code) to make it a user error.
* ``OSError``s about files and space: not found, permission denied, is/not a directory, exists,
  no space, quota, read-only file system, file too large.
* absl flag errors (``flags.Error``: unknown flag, bad value, a config override of the wrong type),
  ``app.UsageError``, and errors from ``ml_collections.config_flags`` (a ``--config`` file that
  does not exist or does not load; reported when the config is first read).
* ``SystemExit`` with a message (``sys.exit("...")``), the old way CLIs reported mistakes.
"""

from __future__ import annotations

import argparse
import dis
import errno
import functools
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "TRACEBACK_ENV",
    "USER_ERROR_STATUS",
    "ArgumentParser",
    "UserError",
    "format_error",
    "is_user_error",
    "report_and_exit",
    "run_absl",
    "run_cli",
    "traceback_requested",
]

#: Set to 1 (or true/yes) to print the traceback of user errors as well.
TRACEBACK_ENV = "SYMPAD_TRACEBACK"
#: Exit status for a user error; argparse uses the same for its own usage errors.
USER_ERROR_STATUS = 2

# Top-level packages whose ValueErrors are deliberate validation (by module name, so it also
# holds when the project is installed into site-packages).
_PROJECT_PACKAGES = frozenset({"sympad", "gan", "classify", "paper", "configs", "benchmarks", "tests", "__main__"})
# ml_collections' --config flag: errors raised there are about the config file or its overrides.
_CONFIG_FLAGS = "ml_collections.config_flags"
_RAISE = dis.opmap["RAISE_VARARGS"]
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG,
     errno.EISDIR, errno.ENOTDIR, errno.EEXIST}
)


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it.

    Commands wrapped by :func:`run_cli` or :func:`run_absl` print it as one ``error:`` line and
    exit with status 2. Subclasses may also derive from a builtin (``ValueError``,
    ``FileNotFoundError``) so existing ``except`` clauses keep working.
    """


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(str(Path(d).resolve()) + os.sep for d in dirs)


def _innermost(error: BaseException) -> Any:
    """The traceback entry where ``error`` was raised, or None if it never was."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_project(error: BaseException) -> bool:
    """Whether ``error`` comes from a ``raise`` statement in this project's code (or a script).

    Looks at the innermost frame of the traceback: a library's own ``raise`` is a library frame,
    and an error raised inside C code (numpy's broadcasting, say) leaves our frame on a call
    instruction rather than on a ``raise``.
    """
    tb = _innermost(error)
    if tb is None:
        return True  # never raised: built by our code to be reported
    frame = tb.tb_frame
    if frame.f_code.co_code[tb.tb_lasti] != _RAISE:
        return False
    if str(frame.f_globals.get("__name__", "")).split(".")[0] in _PROJECT_PACKAGES:
        return True
    filename = frame.f_code.co_filename
    if filename.startswith("<"):
        return False  # <frozen ...>: the import machinery
    resolved = Path(filename).resolve()
    if {"site-packages", "dist-packages"} & set(resolved.parts):
        return False
    return not str(resolved).startswith(_library_dirs())


def _absl_error_types() -> tuple[type[BaseException], ...]:
    try:
        from absl import app, flags
    except ImportError:  # absl is a runtime dependency, but the check must not need it
        return ()
    return (flags.Error, app.UsageError)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's mistake (one ``error:`` line) rather than a bug (traceback).

    See the module docstring for the rules.
    """
    if isinstance(error, UserError):
        return True
    if isinstance(error, _absl_error_types()):
        return True
    tb = _innermost(error)
    if tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_CONFIG_FLAGS):
        return True  # the --config file did not load, reported when first read (an IOError)
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return True
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        return True
    if isinstance(error, ValueError):
        return _raised_by_project(error)
    return False


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror and error.filename:
        # "[Errno 2] No such file or directory: 'x'" → "No such file or directory: 'x'"
        text = f"{error.strerror}: {str(error.filename)!r}"
        if error.filename2:
            text += f" -> {str(error.filename2)!r}"
        return text
    if len(error.args) == 1 and isinstance(error.args[0], BaseException):
        return _message(error.args[0])  # AttributeError(KeyError(...)), as ml_collections raises
    text = str(error)
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # KeyError's str() adds quotes
    text = text.strip() or type(error).__name__
    if isinstance(error, _absl_error_types()):
        text += " (--help lists the flags)"
    return text


def format_error(error: BaseException | str) -> str:
    """The text printed for a user error: ``'error: <first line>'``, later lines indented by two.

    Args:
      error: the exception, or a message.

    Returns:
      The text, without a trailing newline.
    """
    text = error if isinstance(error, str) else _message(error)
    text = text.removeprefix("error: ")  # sys.exit(f"error: {e}") in an older CLI
    first, *rest = text.splitlines() or [""]
    lines = [f"error: {first}"] + [line if not line or line.startswith(" ") else "  " + line for line in rest]
    return "\n".join(lines)


def traceback_requested() -> bool:
    """Whether ``SYMPAD_TRACEBACK`` asks for tracebacks of user errors too."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _Prefixed(UserError):
    """A user error raised as another type, with a prefix that says where it happened."""

    def __init__(self, prefix: str, error: BaseException):
        super().__init__(prefix + _message(error))
        self.__cause__ = error
        self.__traceback__ = error.__traceback__


def report_and_exit(error: BaseException | str) -> NoReturn:
    """Prints ``error`` as :func:`format_error` does (after its traceback if requested); exits 2."""
    if isinstance(error, BaseException) and traceback_requested():
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    sys.stderr.flush()  # after whatever logging wrote, so the error line comes last
    print(format_error(error), file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)


def run_cli(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls ``main(*args, **kwargs)``, turning a user error into one ``error:`` line and status 2.

    Genuine bugs propagate unchanged (traceback, status 1), as do ``KeyboardInterrupt`` and a
    ``SystemExit`` with a status code (argparse's own usage errors already exit with 2).

    Args:
      main: the command, typically ``main(argv=None)`` of an argparse CLI.
      *args: passed to ``main``.
      **kwargs: passed to ``main``.

    Returns:
      What ``main`` returns.
    """
    try:
        return main(*args, **kwargs)
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message"): a user error by convention
            report_and_exit(e.code)
        raise
    except Exception as e:
        if is_user_error(e):
            report_and_exit(e)
        raise


def _flag_message(error: BaseException) -> BaseException | str:
    """A flag error as one line: ml_collections puts the config file's whole traceback in it."""
    text = str(error)
    if "Traceback (most recent call last)" not in text:
        return error
    flag = text.split(": ", 1)[0]  # 'flag --config=path.py:args'
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    # 'ValueError: unknown config arg ...' -> the message; a bug in the config file keeps its type.
    kind, _, message = last.partition(": ")
    if kind in ("ValueError", "UserError") and message:
        last = message
    return f"{flag.removeprefix('flag ')}: {last} (--help lists the flags)"


def _unknown_override(error: BaseException, args: list[str]) -> str | None:
    """The message for ``--config.a.b=...`` naming a field the (locked) config lacks, else None.

    ml_collections reports it as ``AttributeError(KeyError('b'))`` with only the last part of the
    path; the override on the command line that ends in it gives the whole path.
    """
    inner = error.args[0] if isinstance(error, AttributeError) and error.args else error
    if not isinstance(inner, KeyError) or not inner.args or not isinstance(inner.args[0], str):
        return None
    key = inner.args[0].strip("'\"")  # ml_collections passes the repr: "'b'"
    for arg in args[1:]:
        name = arg.split("=", 1)[0].lstrip("-")
        if name.startswith("config.") and name.split(".")[-1] == key:
            return (f"--{name}: the config has no field {name[len('config.'):]!r} (a typo? the config file and "
                    "the run's config.json list the fields; new fields cannot be added from the command line)")
    return None


def run_absl(main: Callable[[list[str]], Any], *, argv: list[str] | None = None) -> NoReturn:
    """``absl.app.run(main)``, with flag errors and user errors as one ``error:`` line, status 2.

    absl itself prints flag errors as ``FATAL Flags parsing error`` and a ``UsageError`` with the
    whole usage text, both with status 1; here both are user errors like any other. Any error
    while parsing the command line is a user error (ml_collections raises an AttributeError for
    ``--config.no_such_field=1``).

    Args:
      main: called with the arguments left after flag parsing (``argv[0]`` the program name).
        An int it returns is the exit status; other values are ignored (``app.run`` would print
        them and exit with 1).
      argv: the command line; default ``sys.argv``.
    """
    from absl import app, flags

    def parse(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            report_and_exit(_flag_message(e))
        except Exception as e:  # noqa: BLE001 - e.g. ml_collections' AttributeError for an unknown key
            # Whatever fails while parsing the command line is the command line's fault.
            unknown = _unknown_override(e, args)
            if unknown is not None:
                report_and_exit(unknown)
            report_and_exit(_Prefixed("cannot parse the command line: ", e))

    @functools.wraps(main)
    def guarded(args: list[str]) -> int | None:
        result = run_cli(main, args)
        return result if isinstance(result, int) else None

    app.run(guarded, argv=argv, flags_parser=parse)
    sys.exit(0)  # app.run exits itself; this only keeps the NoReturn promise


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (status 2, as argparse).

    argparse prints the usage block and ``prog: error: ...``; a command of this project prints
    what every other user error prints, pointing at ``--help`` for the usage.
    """

    def error(self, message: str) -> NoReturn:
        report_and_exit(f"{self.prog}: {message} (--help shows the usage)")

"""How every command reports a mistake: one ``error: <what and how to fix>`` line, exit status 2.

User errors are typed: a check that finds the user's mistake raises :class:`UserError` or a
subclass (:class:`ConfigError` for a flag, config field or argument; the runtime's
``CheckpointError``, ``CorruptImageError``, ``DatasetNotPreparedError``). A command
under :func:`run_cli` or :func:`run_absl` prints those, absl's flag errors, ``sys.exit("message")``
and ``OSError``s about the environment (no such file, permission denied, disk full, ...) as one
line on stderr (later lines of the message indented) and exits with status 2. Anything else is a
bug and keeps its traceback (status 1). ``SYMPAD_TRACEBACK=1`` shows the traceback of user errors too.

A CLI adopts it under its ``__main__`` guard: ``run_cli(main)`` (argparse style) or
``run_absl(main)`` (in place of ``app.run(main)``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags

__all__ = ["TRACEBACK_ENV", "USER_ERROR_STATUS", "ArgumentParser", "ConfigError", "UserError",
           "format_error", "is_user_error", "report_and_exit", "run_absl", "run_cli", "traceback_requested"]

TRACEBACK_ENV = "SYMPAD_TRACEBACK"
#: Exit status for a user error, as argparse's own usage errors.
USER_ERROR_STATUS = 2
# OSErrors about the paths given or the machine, by type or by errno (as C code raises them).
_ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                 errno.EFBIG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST})


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it.

    Subclasses may also derive from a builtin, so ``except ValueError`` and the like keep working.
    """


class ConfigError(UserError, ValueError):
    """A flag, config field or argument the command cannot use; the message names it."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is reported as one ``error:`` line rather than a traceback."""
    if isinstance(error, (UserError, flags.Error, app.UsageError, *_ENVIRONMENT_ERRORS)):
        return True
    return isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror and error.filename:
        text = f"{error.strerror}: {str(error.filename)!r}"  # without "[Errno 2]"
        return text + (f" -> {str(error.filename2)!r}" if error.filename2 else "")
    text = str(error).strip() or type(error).__name__
    return text + (" (--help lists the flags)" if isinstance(error, flags.Error) else "")


def format_error(error: BaseException | str) -> str:
    """``'error: <first line>'``, later lines indented by two."""
    text = (error if isinstance(error, str) else _message(error)).removeprefix("error: ")
    first, *rest = text.splitlines() or [""]
    return "\n".join([f"error: {first}", *(line if not line or line.startswith(" ") else "  " + line for line in rest)])


def traceback_requested() -> bool:
    """Whether ``SYMPAD_TRACEBACK`` asks for the tracebacks of user errors too."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def report_and_exit(error: BaseException | str) -> NoReturn:
    """Prints ``error`` as :func:`format_error` does (after its traceback if requested); exits 2."""
    if isinstance(error, BaseException) and traceback_requested():
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    sys.stderr.flush()  # after whatever logging wrote, so the error line comes last
    print(format_error(error), file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)


def run_cli(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``main(*args, **kwargs)``, a user error reported by :func:`report_and_exit`; bugs propagate."""
    try:
        return main(*args, **kwargs)
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message")
            report_and_exit(e.code)
        raise
    except Exception as e:
        if is_user_error(e):
            report_and_exit(e)
        raise


def run_absl(main: Callable[[list[str]], Any], *, argv: list[str] | None = None,
             parse_flags: Callable[[list[str]], list[str]] | None = None) -> NoReturn:
    """``absl.app.run(main)`` with user errors as one ``error:`` line, status 2 (absl: FATAL, status 1).

    A flag error that a UserError caused (a config file's own check) reports that UserError.

    Args:
      main: called with the arguments left after the flags; an int it returns is the exit status.
      argv: the command line; default ``sys.argv``.
      parse_flags: parses the command line (default ``absl.flags.FLAGS``), e.g.
        ``sympad.train.config.parse_flags``, which names a config override's mistake.
    """

    def parse(args: list[str]) -> list[str]:
        try:
            return (parse_flags or flags.FLAGS)(args)
        except Exception as e:
            # The innermost UserError: ml_collections re-raises a config file's error with its traceback.
            chain, root = e, None
            while chain is not None:
                root = chain if isinstance(chain, UserError) else root
                chain = chain.__cause__ or chain.__context__
            if root is None and not is_user_error(e):
                raise
            report_and_exit(root or e)

    @functools.wraps(main)
    def guarded(args: list[str]) -> int | None:
        result = run_cli(main, args)
        return result if isinstance(result, int) else None

    app.run(guarded, argv=argv, flags_parser=parse)
    sys.exit(0)  # app.run exits itself; this keeps the NoReturn promise


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (status 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        report_and_exit(f"{self.prog}: {message} (--help shows the usage)")

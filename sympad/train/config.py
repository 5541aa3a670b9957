"""Config system shared by the suites: big_vision-style config arguments and the absl entry point.

A config file is a module with ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``;
its docstring is the command that runs it. Runs are launched as::

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal \\
        --workdir=/tmp/sngan --config.num_train_steps=100

Everything after the colon is handed to ``get_config`` and parsed with ``parse_config_arg``
(comma-separated ``key=value`` pairs or bare flags meaning True). ``--config.a.b=value`` overrides
go through absl ``config_flags``; the config is locked, so a misspelt key fails instead of being
ignored. The resolved config lands in ``workdir/config.json`` (:func:`write_config`; tools that
rebuild a finished run read it back with :func:`read_config`), its checkpoints in
:func:`checkpoint_dir`.

Both suites speak one vocabulary for what the training loop (``sympad.train.loop``) does, set by
:func:`add_loop_fields` and documented in :data:`LOOP_FIELDS`. Besides those, every suite's config
has ``seed``, ``batch_size``, ``num_train_steps``, ``data``, ``kernel`` and an ``optimizer`` block
with ``learning_rate`` and ``schedule``; the suite defaults live in ``configs/<suite>/common.py``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sympad.train.errors import ConfigError

__all__ = [
    "LOOP_FIELDS",
    "RESUME_CORRUPT",
    "add_loop_fields",
    "check_bool",
    "check_choice",
    "check_data",
    "check_int",
    "check_number",
    "check_str",
    "checkpoint_dir",
    "field",
    "load_config_file",
    "loaded_config",
    "lock_and_validate",
    "parse_config_arg",
    "parse_flags",
    "read_config",
    "run_main",
    "validate_common",
    "write_config",
]

_CADENCE = "in train steps; 0 = only at the last step; -n = every n epochs"
#: The training loop's config keys, the same in both suites: name -> (default, meaning).
LOOP_FIELDS: dict[str, tuple[Any, str]] = {
    "log_every": (100, f"train metrics (mean since the last record) to metrics.jsonl, {_CADENCE}"),
    "eval_every": (0, f"evaluation, {_CADENCE} (classify: test error; gan: FID/IS, none at all with 0)"),
    "checkpoint_every": (1000, f"checkpoints, {_CADENCE}"),
    "max_checkpoints": (3, "most recent checkpoints kept (besides the best: test error, or FID when evaluated)"),
    "host_data": (False, "True: stream batches from the host even when the split fits on the device"),
    "conv_implementation": ("auto", "formulation of the C*sp convs (sympad.IMPLEMENTATIONS); same results"),
    "allow_corrupt": (False, "True: skip image files that do not decode (counted in the log and as data/skipped)"),
    "step_limit_file": ("", ("a file holding an int N: the run ends at step min(N, num_train_steps), final "
                             "checkpoint and hooks included, when the file appears or changes; '' = none (a "
                             "scheduler sizes a run while it trains: paper.campaign packs runs on one GPU)")),
    "resume_corrupt": ("raise", ("latest checkpoint corrupt: 'raise', or 'fall_back' to the newest intact step "
                                 "(the damaged one moved aside, never deleted)")),
}
#: Values of ``config.resume_corrupt`` (``sympad.train.checkpoint.Checkpointer``'s ``on_corrupt``).
RESUME_CORRUPT = ("raise", "fall_back")

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def _cast(key: str, value: str, default: Any) -> Any:
    """``value`` (text from the command line) as the type of ``default``."""
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"config arg {key}={value!r}: expected a bool (true/false/1/0)")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config arg {key}={value!r}: expected an int") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config arg {key}={value!r}: expected a float") from None
    if default is None or isinstance(default, str):
        return value
    raise ConfigError(
        f"config arg {key!r}: its default {default!r} is a {type(default).__name__}; only bool, int, "
        "float and str arguments can be set after the colon (use --config.<field>=... instead)"
    )


def parse_config_arg(
    arg: str | None,
    defaults: Mapping[str, Any],
    *,
    choices: Mapping[str, Collection[Any]] | None = None,
) -> ml_collections.ConfigDict:
    """Parses the part of ``--config=file.py:ARG`` after the colon, big_vision style.

    ``'kernel=C2sp,data=digits,runlocal'`` with defaults ``{'kernel': 'C3', 'data': 'cifar10',
    'runlocal': False}`` gives ``kernel='C2sp', data='digits', runlocal=True``. Each value is cast
    to the type of its default: bool from true/false/1/0 (yes/no/on/off too), int, float, str
    (a default of None takes the text as is). A bare key sets a bool to True.

    Args:
      arg: the text after the colon; None or '' gives the defaults.
      defaults: every accepted key and its default value.
      choices: optional allowed values per key, e.g. ``{'kernel': sympad.KINDS}``.

    Returns:
      A ConfigDict with exactly the keys of ``defaults``.

    Raises:
      ConfigError: for a key not in ``defaults`` (the message lists the valid keys), a value that
        does not parse as the default's type, a bare non-bool key, a repeated key, or a value
        outside ``choices``.
    """
    values = dict(defaults)
    seen: set[str] = set()
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config arg {key!r} in {arg!r}; valid keys: {', '.join(sorted(defaults))}")
        if key in seen:
            raise ConfigError(f"config arg {key!r} given twice in {arg!r}")
        seen.add(key)
        if has_value:
            values[key] = _cast(key, text.strip(), defaults[key])
        elif isinstance(defaults[key], bool):
            values[key] = True
        else:
            raise ConfigError(f"config arg {key!r} needs a value ({key}=...); only bool keys can be bare flags")
    for key, allowed in (choices or {}).items():
        if key not in values:
            raise ConfigError(f"choices names {key!r}, which is not one of the defaults' keys")
        if values[key] not in allowed:
            raise ConfigError(f"config arg {key}={values[key]!r}: must be one of {', '.join(map(str, allowed))}")
    return ml_collections.ConfigDict(values)


def add_loop_fields(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    """Sets every :data:`LOOP_FIELDS` key on ``config``: ``values`` where given, else the default.

    Raises:
      ConfigError: for a key that is not a loop field.
    """
    unknown = sorted(set(values) - set(LOOP_FIELDS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not loop fields; valid: {', '.join(LOOP_FIELDS)}")
    for name, (default, _) in LOOP_FIELDS.items():
        config[name] = values.get(name, default)
    return config


def _check_loop_fields(config: ml_collections.ConfigDict) -> None:
    from sympad.ops import IMPLEMENTATIONS

    for name in ("log_every", "eval_every", "checkpoint_every"):
        if name in config and (isinstance(config[name], bool) or not isinstance(config[name], int)):
            raise ConfigError(f"config.{name}={config[name]!r}: must be an int ({_CADENCE})")
    if "max_checkpoints" in config and (
        isinstance(config.max_checkpoints, bool) or not isinstance(config.max_checkpoints, int)
        or config.max_checkpoints < 1
    ):
        raise ConfigError(f"config.max_checkpoints={config.max_checkpoints!r}: must be an int >= 1")
    if "host_data" in config and not isinstance(config.host_data, bool):
        raise ConfigError(f"config.host_data={config.host_data!r}: must be a bool")
    if "conv_implementation" in config and config.conv_implementation not in IMPLEMENTATIONS:
        raise ConfigError(
            f"config.conv_implementation={config.conv_implementation!r}: must be one of {', '.join(IMPLEMENTATIONS)}"
        )
    if "allow_corrupt" in config:
        check_bool(config, "allow_corrupt")
    if "resume_corrupt" in config:
        check_choice(config, "resume_corrupt", RESUME_CORRUPT)
    if "step_limit_file" in config:
        check_str(config, "step_limit_file")


# ----------------------------------------------------------------------------------------------
# Field checks: each raises a ConfigError (a ValueError) naming ``config.<name>`` and what it may be.


def field(config: ml_collections.ConfigDict, name: str) -> Any:
    """``config``'s value at the dotted ``name`` ('optimizer.learning_rate')."""
    value: Any = config
    for part in name.split("."):
        value = value[part]
    return value


def _bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config.{name}={value!r}: must be {allowed}")


def check_int(config: ml_collections.ConfigDict, name: str, *, min_value: int | None = None,
              max_value: int | None = None) -> int:
    """``config.<name>`` as an int in ``[min_value, max_value]`` (bools refused)."""
    value = field(config, name)
    bounds = " ".join(filter(None, [f">= {min_value}" if min_value is not None else "",
                                    f"<= {max_value}" if max_value is not None else ""]))
    allowed = f"an int {bounds}".strip()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _bad(name, value, allowed)
    if (min_value is not None and value < min_value) or (max_value is not None and value > max_value):
        raise _bad(name, value, allowed)
    return int(value)


def check_number(config: ml_collections.ConfigDict, name: str, *, min_value: float | None = None,
                 max_value: float | None = None, min_open: bool = False, max_open: bool = False) -> float:
    """``config.<name>`` as a finite float in the range (open ends where asked)."""
    value = field(config, name)
    lo = f"{'>' if min_open else '>='} {min_value}" if min_value is not None else ""
    hi = f"{'<' if max_open else '<='} {max_value}" if max_value is not None else ""
    allowed = ("a number " + " and ".join(filter(None, [lo, hi]))).strip()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(name, value, allowed)
    number = float(value)
    if not math.isfinite(number):
        raise _bad(name, value, allowed)
    if min_value is not None and (number < min_value or (min_open and number == min_value)):
        raise _bad(name, value, allowed)
    if max_value is not None and (number > max_value or (max_open and number == max_value)):
        raise _bad(name, value, allowed)
    return number


def check_bool(config: ml_collections.ConfigDict, name: str) -> bool:
    value = field(config, name)
    if not isinstance(value, bool):
        raise _bad(name, value, "True or False")
    return value


def check_str(config: ml_collections.ConfigDict, name: str) -> str:
    value = field(config, name)
    if not isinstance(value, str):
        raise _bad(name, value, "a string")
    return value


def check_choice(config: ml_collections.ConfigDict, name: str, allowed: Collection[Any]) -> Any:
    value = field(config, name)
    if isinstance(value, bool) or value not in allowed:
        raise _bad(name, value, "one of " + ", ".join(map(repr, allowed)))
    return value


# A TFDS name ('cifar10', 'celeb_a_hq/128', 'lsun/bedroom', 'cifar10:3.0.2').
_TFDS_NAME = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.]+)?(:[0-9.*]+)?")


def check_data(config: ml_collections.ConfigDict, name: str = "data") -> str:
    """``config.<name>`` is a data source ``sympad.train.data.load`` accepts; a folder must exist.

    Checked before anything is loaded, so a typo fails in a second, not after a compile.
    """
    value = field(config, name)
    allowed = "'digits', 'synthetic', a TFDS name (cifar10, lsun/bedroom, ...) or 'folder:PATH'"
    if not isinstance(value, str) or not value:
        raise _bad(name, value, allowed)
    if value.startswith("folder:"):
        path = Path(os.path.expanduser(value[len("folder:"):]))
        if not value[len("folder:"):]:
            raise _bad(name, value, "'folder:PATH' with a PATH")
        if not path.is_dir():
            raise ConfigError(f"config.{name}={value!r}: {path} is not a directory (folder:PATH needs a folder of "
                              "images, or of class subfolders)")
        return value
    if value in ("digits", "synthetic") or _TFDS_NAME.fullmatch(value):
        return value
    raise _bad(name, value, allowed)


def validate_common(config: ml_collections.ConfigDict, *, schedules: Collection[str], min_steps: int = 0) -> None:
    """The rules every suite shares: the loop fields, seed, data, batch size, steps, optimizer basics.

    Args:
      config: a suite's config.
      schedules: the suite's ``config.optimizer.schedule`` values.
      min_steps: the least ``config.num_train_steps`` (GAN: 1; classify: 0 = from num_epochs).

    Raises:
      ConfigError: naming the first offending field and its allowed values.
    """
    import jax

    from sympad.kinds import KINDS

    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    check_choice(config, "kernel", KINDS)
    if "runlocal" in config:
        check_bool(config, "runlocal")
    _check_loop_fields(config)
    for name in LOOP_FIELDS:
        if name not in config:
            raise ConfigError(f"config.{name} is missing: every suite config has the loop fields "
                              "(sympad.train.config.add_loop_fields)")
    check_int(config, "seed", min_value=0)
    check_data(config)
    batch = check_int(config, "batch_size", min_value=1)
    devices = jax.device_count()  # every host's: the batch is split over the whole mesh
    if batch % devices:
        raise ConfigError(f"config.batch_size={batch}: must be a multiple of the {devices} devices")
    check_int(config, "num_train_steps", min_value=min_steps)
    check_number(config, "optimizer.learning_rate", min_value=0.0, min_open=True)
    check_choice(config, "optimizer.schedule", tuple(schedules))


def loaded_config(flag_values: Any, name: str = "config") -> ml_collections.ConfigDict:
    """The config of an ml_collections ``--config`` flag, or a one-line error if it did not load.

    ml_collections defers a config file that does not exist or does not import until its first
    use, and then reports it over several lines; this names the flag and the cause.

    Raises:
      ConfigError: the file did not load.
    """
    value = flag_values[name].value
    if value is None:
        return value
    return _loaded(value, f"--{name}={flag_values[name].serialize().split('=', 1)[-1]}")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config ``--config=spec`` gives a suite's main (``'path.py[:args]'``), locked, not validated.

    For tools that build a suite's run without its command line (``benchmarks.seeds``): the file
    is loaded by ml_collections' own config-file parser, exactly as ``run_main`` loads it.

    Raises:
      ConfigError: the file did not load.
    """
    from ml_collections.config_flags import config_flags

    try:
        config = config_flags.ConfigFileFlagParser(name="config").parse(spec)
    except (TypeError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"--config={spec}: the config did not load: {lines[-1] if lines else e!r}") from e
    return _loaded(config, f"--config={spec}")


def _loaded(value: Any, label: str) -> ml_collections.ConfigDict:
    """``value`` when it is a config; ml_collections' deferred loading error as one line otherwise."""
    if isinstance(value, ml_collections.ConfigDict):
        return value
    try:
        value.lock()  # an _ErrorConfig raises its loading error on any use
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"{label}: the config did not load: {lines[-1] if lines else type(e).__name__}") from e
    return value


def lock_and_validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks ``config`` (new keys raise; values stay editable) and checks the shared fields.

    Checked when present at the top level: ``kernel`` is one of ``sympad.KINDS``; ``runlocal`` is
    a bool; ``data`` is a non-empty string; the :data:`LOOP_FIELDS` have their types (cadences
    ints, ``max_checkpoints`` >= 1, ``host_data`` a bool, ``conv_implementation`` one of
    ``sympad.IMPLEMENTATIONS``).

    Returns:
      The same config, locked.

    Raises:
      ConfigError: naming the offending field.
    """
    from sympad.kinds import KINDS

    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    if "kernel" in config and config.kernel not in KINDS:
        raise ConfigError(f"config.kernel={config.kernel!r}: must be one of {', '.join(KINDS)}")
    if "runlocal" in config and not isinstance(config.runlocal, bool):
        raise ConfigError(f"config.runlocal={config.runlocal!r}: must be a bool")
    if "data" in config and (not isinstance(config.data, str) or not config.data):
        raise ConfigError(f"config.data={config.data!r}: must be a dataset name")
    _check_loop_fields(config)
    config.lock()
    return config


def write_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> Path:
    """Writes the resolved config to ``workdir/config.json`` (atomically) and returns the path.

    Values JSON cannot hold (tuples become lists; other objects their repr) are written as
    ``ConfigDict.to_json_best_effort`` does. Only process 0 writes in a multi-host run.
    """
    workdir = Path(workdir)
    path = workdir / "config.json"
    if _process_index() != 0:
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, ml_collections.ConfigDict):
        text = config.to_json_best_effort(indent=2, sort_keys=True)
    else:
        text = json.dumps(config, indent=2, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def read_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict:
    """The config a run wrote to ``workdir/config.json`` (:func:`write_config`), for tools that rebuild it.

    Raises:
      FileNotFoundError: ``workdir`` has no config.json (not a run directory).
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a training run?")
    return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))


def checkpoint_dir(workdir: str | os.PathLike[str]) -> Path:
    """Where a run keeps its checkpoints: ``workdir/checkpoints``."""
    return Path(workdir) / "checkpoints"


def _process_index() -> int:
    import jax

    return jax.process_index()


_CONFIG_FLAG = "config"
_WORKDIR_FLAG = "workdir"


def _define_flags(flag_values: Any, sys_argv: list[str] | None) -> None:
    from absl import flags
    from ml_collections import config_flags

    if _CONFIG_FLAG not in flag_values:
        config_flags.DEFINE_config_file(
            _CONFIG_FLAG,
            None,
            "Config file (a module with get_config), optionally with args after a colon: "
            "configs/gan/sngan_cifar10.py:kernel=C2sp,runlocal. Fields: --config.a.b=value.",
            flag_values=flag_values,
            lock_config=True,  # Overriding a key that does not exist is an error.
            sys_argv=sys_argv,
        )
    if _WORKDIR_FLAG not in flag_values:
        flags.DEFINE_string(
            _WORKDIR_FLAG, None, "Directory for checkpoints, metrics and config.json.", flag_values=flag_values
        )


def run_main(
    train_and_evaluate: Callable[[ml_collections.ConfigDict, str], Any],
    *,
    argv: list[str] | None = None,
) -> Any:
    """The whole of a suite's ``main.py``: flags → config → workdir → ``train_and_evaluate``.

    Defines ``--config`` (absl ``config_flags.DEFINE_config_file``: ``path.py[:args]`` plus
    ``--config.a.b=value`` overrides) and ``--workdir``; initialises multi-host JAX when launched
    that way; creates the workdir, validates and locks the config, writes ``config.json`` and
    calls ``train_and_evaluate(config, workdir)``. On the real command line a user error is one
    ``error: ...`` line and exit status 2 (``sympad.train.errors.run_absl``).

    Args:
      train_and_evaluate: the suite's entry point.
      argv: None for the real command line (runs under ``absl.app.run``, which exits the
        process); a list (``argv[0]`` is the program name) parses that instead, in-process, on a
        private flag registry, and returns what ``train_and_evaluate`` returns (for tests).

    Raises:
      ConfigError (list argv): missing flags, an override of a field the config lacks, or an
        invalid config. absl flag errors (``flags.Error``) for values of the wrong type.
    """
    from absl import app, flags, logging

    def main(flag_values: Any, extra: list[str]) -> Any:
        if len(extra) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(extra[1:])}")
        if flag_values[_CONFIG_FLAG].value is None:
            raise app.UsageError("--config is required, e.g. --config=configs/gan/sngan_cifar10.py:runlocal")
        if not flag_values[_WORKDIR_FLAG].value:
            raise app.UsageError("--workdir is required")
        from sympad.train.mesh import maybe_initialize_distributed

        maybe_initialize_distributed()  # before anything touches a device
        config = lock_and_validate(loaded_config(flag_values, _CONFIG_FLAG))
        workdir = os.path.abspath(os.path.expanduser(flag_values[_WORKDIR_FLAG].value))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        path = write_config(config, workdir)
        logging.info("Config written to %s", path)
        return train_and_evaluate(config, workdir)

    if argv is None:
        from sympad.train.errors import run_absl

        _define_flags(flags.FLAGS, None)

        def app_main(args: list[str]) -> None:
            main(flags.FLAGS, args)  # app.run passes a return value to sys.exit: drop it

        # A user's mistake (bad flag or config value, corrupt data or checkpoint): one error line, status 2.
        run_absl(app_main, parse_flags=functools.partial(parse_flags, flags.FLAGS))
        return None
    flag_values = flags.FlagValues()
    _define_flags(flag_values, list(argv))
    extra = parse_flags(flag_values, list(argv))
    try:
        return main(flag_values, extra)
    except app.UsageError as e:
        raise ConfigError(str(e)) from e


def parse_flags(flag_values: Any, argv: list[str]) -> list[str]:
    """``flag_values(argv)``, with an override of a field the locked config lacks as a ConfigError.

    ml_collections reports ``--config.a.b=1`` for a missing ``b`` as an AttributeError raised from
    the ``KeyError('b')`` of the lookup, without the path; the override that ends in ``b`` gives it.

    Returns:
      The arguments left after the flags (``argv[0]`` first).
    """
    try:
        return flag_values(argv)
    except AttributeError as e:
        chain, key = e, None
        while chain is not None:  # the innermost KeyError holds the missing field's name
            key = chain.args[0] if isinstance(chain, KeyError) and chain.args else key
            chain = chain.__cause__ or chain.__context__
        for name in (arg.split("=", 1)[0].lstrip("-") for arg in argv[1:]):
            if key and name.startswith(f"{_CONFIG_FLAG}.") and name.split(".")[-1] == key:
                raise ConfigError(f"--{name}: the config has no field {name.split('.', 1)[1]!r} (a typo? the config "
                                  "file and the run's config.json list the fields; new fields cannot be added from "
                                  "the command line)") from e
        raise

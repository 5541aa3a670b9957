"""Config system shared by the suites: config fields, big_vision-style config arguments, the absl entry point.

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

Each field is declared once, as a :class:`Field` (name, type, default, allowed values, help) in its
suite's table (``gan.fields.GAN_FIELDS``, ``classify.fields.CLASSIFY_FIELDS``): the base config
of ``configs/<suite>/common.py`` is :func:`default_config` of the table, the suite's ``validate``
is :func:`validate_config` of it plus the suite's cross-field rules, and ``--helpfull`` lists it
(:func:`describe_fields`). Both suites' tables hold :data:`RUN_FIELDS` (kernel, data, seed,
batch_size, runlocal) and the training loop's :data:`LOOP_FIELDS` (``sympad.train.loop``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sympad.kinds import KINDS
from sympad.ops import IMPLEMENTATIONS
from sympad.train.errors import ConfigError

__all__ = [
    "CADENCE",
    "LOOP_FIELDS",
    "RESUME_CORRUPT",
    "RUN_FIELDS",
    "Check",
    "Field",
    "Range",
    "add_loop_fields",
    "cadence",
    "check_batch_size",
    "checkpoint_dir",
    "data_source",
    "default_config",
    "describe_fields",
    "field_error",
    "field_table",
    "load_config_file",
    "loaded_config",
    "lock_and_validate",
    "parse_config_arg",
    "parse_flags",
    "read_config",
    "run_main",
    "validate_config",
    "validate_fields",
    "with_defaults",
    "write_config",
]

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


# ----------------------------------------------------------------------------------------------
# Fields: each config field declared once (name, type, default, allowed values, help); the base
# config, the checks and the --helpfull listing all come from the declaration.

#: What a cadence field's value means (the loop's ``resolve_every``).
CADENCE = "in train steps; 0 = only at the last step; -n = every n epochs"
#: A field's own check, for values a type and a range cannot describe: what is wrong with
#: ``value`` (the text after ``config.<name>=<value>: ``), or None when it is fine.
Check = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Range:
    """The bounds of an int or number field: ``None`` is unbounded; ``*_open`` leaves the bound out."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def __contains__(self, number: float) -> bool:
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            return False
        return self.max is None or not (number > self.max or (self.max_open and number == self.max))

    def __str__(self) -> str:
        low = f"{'>' if self.min_open else '>='} {self.min}" if self.min is not None else ""
        high = f"{'<' if self.max_open else '<='} {self.max}" if self.max is not None else ""
        return " and ".join(filter(None, [low, high]))


# What each field type checks and how a message names it (tuple fields: their own Check, if any).
_TYPES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("a bool (True or False)", lambda v: isinstance(v, bool)),
    int: ("an int", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v)),
    str: ("a string", lambda v: isinstance(v, str)),
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field, declared once: the base config takes its default, validation its type and
    allowed values, ``--helpfull`` its help.

    Attributes:
      name: the dotted path in the config (``'optimizer.learning_rate'``).
      type: ``bool``, ``int``, ``float`` (any finite number), ``str`` or ``tuple``.
      default: its value in the base config.
      help: what it means, for ``--helpfull`` (:func:`describe_fields`).
      allowed: None (any value of ``type``), a tuple of the values it may take, a :class:`Range`,
        or a :data:`Check` of its own (which then checks the type too).
    """

    name: str
    type: type
    default: Any
    help: str
    allowed: tuple[Any, ...] | Range | Check | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this field (``'must be ...'``), or None."""
        if isinstance(self.allowed, tuple):
            if not isinstance(value, bool) and value in self.allowed:  # True == 1: never a choice
                return None
            return "must be one of " + ", ".join(map(repr, self.allowed))
        if callable(self.allowed):
            return self.allowed(value)
        if self.type not in _TYPES:
            return None
        what, accepts = _TYPES[self.type]
        if accepts(value) and (self.allowed is None or value in self.allowed):
            return None
        return f"must be {what} {self.allowed or ''}".rstrip()

    def check(self, value: Any) -> Any:
        """``value``, or a ConfigError naming ``config.<name>`` and what it may be."""
        problem = self.problem(value)
        if problem is not None:
            raise field_error(self.name, value, problem)
        return value

    def describe(self) -> str:
        """One line for ``--helpfull``: name, type, default, allowed values and help."""
        if isinstance(self.allowed, tuple):
            allowed = "; one of " + ", ".join(map(str, self.allowed))
        elif isinstance(self.allowed, Range):
            allowed = f"; {self.allowed}"
        else:
            allowed = ""
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{allowed}): {self.help}"


def field_error(name: str, value: Any, problem: str) -> ConfigError:
    """The one-line error for ``config.<name>=<value>``: ``problem`` says what it must be."""
    return ConfigError(f"config.{name}={value!r}: {problem}")


def field_table(*parts: Field | Mapping[str, Field]) -> dict[str, Field]:
    """One table (name -> Field) of fields and other tables, in order.

    Raises:
      ValueError: a name given twice (a field is declared once).
    """
    table: dict[str, Field] = {}
    for part in parts:
        for item in part.values() if isinstance(part, Mapping) else (part,):
            if item.name in table:
                raise ValueError(f"field {item.name!r} declared twice")
            table[item.name] = item
    return table


def with_defaults(table: Mapping[str, Field], defaults: Mapping[str, Any]) -> dict[str, Field]:
    """``table`` with other defaults for some of its fields (a suite's own values for shared fields).

    Raises:
      ConfigError: a name that is not in ``table``.
    """
    unknown = sorted(set(defaults) - set(table))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not fields of the table; valid: {', '.join(table)}")
    return {name: dataclasses.replace(f, default=defaults[name]) if name in defaults else f
            for name, f in table.items()}


def default_config(table: Mapping[str, Field]) -> ml_collections.ConfigDict:
    """A config holding every field of ``table`` at its default (dotted names are nested blocks)."""
    config = ml_collections.ConfigDict()
    for f in table.values():
        *blocks, leaf = f.name.split(".")
        holder = config
        for block in blocks:
            if block not in holder:
                holder[block] = ml_collections.ConfigDict()
            holder = holder[block]
        holder[leaf] = f.default
    return config


def describe_fields(table: Mapping[str, Field]) -> str:
    """The ``--helpfull`` text of a table: one line per field (:meth:`Field.describe`)."""
    return "\n".join(f.describe() for f in table.values())


def _lookup(config: ml_collections.ConfigDict, name: str) -> tuple[bool, Any]:
    """(whether ``config`` has the dotted ``name``, its value)."""
    value: Any = config
    for part in name.split("."):
        if not isinstance(value, (ml_collections.ConfigDict, Mapping)) or part not in value:
            return False, None
        value = value[part]
    return True, value


def validate_fields(config: ml_collections.ConfigDict, table: Mapping[str, Field], *, partial: bool = False) -> None:
    """Checks each field of ``table`` in ``config``: present (unless ``partial``), of its type, allowed.

    Raises:
      ConfigError: naming the first offending ``config.<field>`` and what it may be, or the first
        missing one.
    """
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    for name, f in table.items():
        present, value = _lookup(config, name)
        if not present:
            if partial:
                continue
            raise ConfigError(f"config.{name} is missing: every config of this suite has it (default "
                              f"{f.default!r}: {f.help})")
        f.check(value)


def check_batch_size(batch_size: Any, devices: int) -> int:
    """``config.batch_size``, after checking that it splits evenly over ``devices`` (the whole mesh's).

    Raises:
      ConfigError: naming config.batch_size when it is not a positive multiple of ``devices``.
    """
    if not _TYPES[int][1](batch_size) or batch_size < 1:
        raise field_error("batch_size", batch_size, f"must be a positive int, a multiple of the {devices} devices")
    if batch_size % devices:
        raise field_error("batch_size", batch_size, f"must be a multiple of the {devices} devices")
    return int(batch_size)


def validate_config(config: ml_collections.ConfigDict, table: Mapping[str, Field],
                    rules: Sequence[Callable[[ml_collections.ConfigDict], None]] = ()) -> None:
    """A suite's whole check of a config, before anything is loaded or compiled.

    Every field of ``table`` (:func:`validate_fields`), the batch against all devices of every host
    when the table has :data:`RUN_FIELDS`' ``batch_size``, then the suite's cross-field ``rules``
    in order (each raises a ConfigError).

    Raises:
      ConfigError: naming the first offending ``config.<field>`` and what it may be.
    """
    import jax

    validate_fields(config, table)
    if "batch_size" in table:
        check_batch_size(config.batch_size, jax.device_count())  # the batch is split over the whole mesh
    for rule in rules:
        rule(config)


def cadence(value: Any) -> str | None:
    """The :data:`Check` of a cadence field (``log_every``, ...): an int, :data:`CADENCE`."""
    return None if _TYPES[int][1](value) else f"must be an int ({CADENCE})"


def _implementation(value: Any) -> str | None:
    if isinstance(value, str) and value in IMPLEMENTATIONS:
        return None
    return f"must be one of {', '.join(IMPLEMENTATIONS)}"


# A TFDS name ('cifar10', 'celeb_a_hq/128', 'lsun/bedroom', 'cifar10:3.0.2').
_TFDS_NAME = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.]+)?(:[0-9.*]+)?")


def data_source(value: Any) -> str | None:
    """The :data:`Check` of a data field: a source ``sympad.train.data.load`` accepts; a folder must exist.

    Checked before anything is loaded, so a typo fails in a second, not after a compile.
    """
    allowed = "must be 'digits', 'synthetic', a TFDS name (cifar10, lsun/bedroom, ...) or 'folder:PATH'"
    if not isinstance(value, str) or not value:
        return allowed
    if value.startswith("folder:"):
        if not value[len("folder:"):]:
            return "must be 'folder:PATH' with a PATH"
        path = Path(os.path.expanduser(value[len("folder:"):]))
        if not path.is_dir():
            return f"{path} is not a directory (folder:PATH needs a folder of images, or of class subfolders)"
        return None
    return None if value in ("digits", "synthetic") or _TFDS_NAME.fullmatch(value) else allowed


#: The training loop's fields, the same in both suites (``sympad.train.loop`` reads them; a suite
#: sets its own defaults with :func:`with_defaults`).
LOOP_FIELDS: dict[str, Field] = field_table(
    Field("log_every", int, 100, f"train metrics (mean since the last record) to metrics.jsonl, {CADENCE}", cadence),
    Field("eval_every", int, 0, f"evaluation, {CADENCE} (classify: test error; gan: FID/IS, none at all with 0)",
          cadence),
    Field("checkpoint_every", int, 1000, f"checkpoints, {CADENCE}", cadence),
    Field("max_checkpoints", int, 3, "most recent checkpoints kept (besides the best: test error, or FID when "
          "evaluated)", Range(1)),
    Field("host_data", bool, False, "True: stream batches from the host even when the split fits on the device"),
    Field("conv_implementation", str, "auto", "formulation of the C*sp convs (sympad.IMPLEMENTATIONS: "
          f"{', '.join(IMPLEMENTATIONS)}); same results", _implementation),
    Field("allow_corrupt", bool, False, "True: skip image files that do not decode (counted in the log and as "
          "data/skipped)"),
    Field("step_limit_file", str, "", "a file holding an int N: the run ends at step min(N, num_train_steps), final "
          "checkpoint and hooks included, when the file appears or changes; '' = none (a scheduler sizes a run "
          "while it trains: paper.campaign packs runs on one GPU)"),
    Field("resume_corrupt", str, "raise", "latest checkpoint corrupt: 'raise', or 'fall_back' to the newest intact "
          "step (the damaged one moved aside, never deleted)", RESUME_CORRUPT),
)

#: The run's fields every suite shares besides the loop's; a suite's table adds its own (among them
#: ``num_train_steps`` and the ``optimizer`` block, whose defaults and ranges differ).
RUN_FIELDS: dict[str, Field] = field_table(
    Field("kernel", str, "C3", "kind of the convs the paper varies (sympad.KINDS)", KINDS),
    Field("data", str, "cifar10", "'digits', 'synthetic', a TFDS name (cifar10, lsun/bedroom, ...) or "
          "'folder:PATH' (sympad.train.data.load)", data_source),
    Field("seed", int, 0, "the run's seed: initialisation, data order, augmentation", Range(0)),
    Field("batch_size", int, 64, "global batch, split over all devices (a multiple of their number)", Range(1)),
    Field("runlocal", bool, False, "set by the config arg runlocal: the config shrunk to a CPU smoke run"),
)


def add_loop_fields(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    """Sets every :data:`LOOP_FIELDS` key on ``config``: ``values`` where given, else the default.

    For a config the loop runs without a suite's table (the suites' base configs hold them already).

    Raises:
      ConfigError: for a key that is not a loop field.
    """
    unknown = sorted(set(values) - set(LOOP_FIELDS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not loop fields; valid: {', '.join(LOOP_FIELDS)}")
    for name, f in with_defaults(LOOP_FIELDS, values).items():
        config[name] = f.default
    return config


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


def lock_and_validate(config: ml_collections.ConfigDict,
                      fields: Mapping[str, Field] | None = None) -> ml_collections.ConfigDict:
    """Locks ``config`` (new keys raise; values stay editable) after checking its fields one by one.

    Args:
      config: a suite's config, as its config file and the overrides made it.
      fields: the suite's field table, every field of which is checked; None: the
        :data:`RUN_FIELDS` and :data:`LOOP_FIELDS` that ``config`` has (any config file). The
        suite's ``validate`` checks the rules across fields.

    Returns:
      The same config, locked.

    Raises:
      ConfigError: naming the offending field.
    """
    if fields is None:
        validate_fields(config, {**RUN_FIELDS, **LOOP_FIELDS}, partial=True)
    else:
        validate_fields(config, fields)
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


def _define_flags(flag_values: Any, sys_argv: list[str] | None, fields: Mapping[str, Field] | None = None) -> None:
    from absl import flags
    from ml_collections import config_flags

    if _CONFIG_FLAG not in flag_values:
        listing = f"\nThe fields (a config file changes some defaults):\n{describe_fields(fields)}" if fields else ""
        config_flags.DEFINE_config_file(
            _CONFIG_FLAG,
            None,
            "Config file (a module with get_config), optionally with args after a colon: "
            "configs/gan/sngan_cifar10.py:kernel=C2sp,runlocal. Fields: --config.a.b=value." + listing,
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
    fields: Mapping[str, Field] | None = None,
) -> Any:
    """The whole of a suite's ``main.py``: flags → config → workdir → ``train_and_evaluate``.

    Defines ``--config`` (absl ``config_flags.DEFINE_config_file``: ``path.py[:args]`` plus
    ``--config.a.b=value`` overrides) and ``--workdir``; initialises multi-host JAX when launched
    that way; validates and locks the config, creates the workdir, writes ``config.json`` and
    calls ``train_and_evaluate(config, workdir)``. On the real command line a user error is one
    ``error: ...`` line and exit status 2 (``sympad.train.errors.run_absl``).

    Args:
      train_and_evaluate: the suite's entry point.
      argv: None for the real command line (runs under ``absl.app.run``, which exits the
        process); a list (``argv[0]`` is the program name) parses that instead, in-process, on a
        private flag registry, and returns what ``train_and_evaluate`` returns (for tests).
      fields: the suite's field table: each field is checked before the workdir is written
        (:func:`lock_and_validate`), and ``--helpfull`` lists them under ``--config``.

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
        config = lock_and_validate(loaded_config(flag_values, _CONFIG_FLAG), fields)
        workdir = os.path.abspath(os.path.expanduser(flag_values[_WORKDIR_FLAG].value))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        path = write_config(config, workdir)
        logging.info("Config written to %s", path)
        return train_and_evaluate(config, workdir)

    if argv is None:
        from sympad.train.errors import run_absl

        _define_flags(flags.FLAGS, None, fields)

        def app_main(args: list[str]) -> None:
            main(flags.FLAGS, args)  # app.run passes a return value to sys.exit: drop it

        # A user's mistake (bad flag or config value, corrupt data or checkpoint): one error line, status 2.
        run_absl(app_main, parse_flags=functools.partial(parse_flags, flags.FLAGS))
        return None
    flag_values = flags.FlagValues()
    _define_flags(flag_values, list(argv), fields)
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

"""Checkpoints: orbax's ``CheckpointManager`` with a manifest, exact restore and clear errors.

``Checkpointer`` keeps the last k steps and the best one, saves atomically (orbax writes
``<step>.orbax-checkpoint-tmp`` and renames it once complete), and restores any pytree exactly
or raises ``CheckpointError`` naming the path. Opt-in (``on_corrupt='fall_back'``), a corrupt
latest step is renamed to ``<step>.corrupt`` and the newest intact one restored instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging as pylogging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from sympad.train.config import RESUME_CORRUPT
from sympad.train.errors import ConfigError, UserError, traceback_requested
from sympad.train.mesh import make_mesh, replicated


class _QuietOrbax(pylogging.Filter):
    """Drops orbax's INFO chatter (dozens of lines per save); its warnings and errors still show.

    A :class:`Checkpointer` installs one on the 'absl' logger while it is open (absl routes every
    library's messages through that one logger, so it filters by source file); other users of the
    logger outside a Checkpointer's lifetime see everything.

    An orbax error keeps its message but not its traceback: orbax logs the exception of a failed
    write from its own thread, then re-raises it in ours, where it becomes the cause of our
    ``CheckpointError`` (whose traceback ``SYMPAD_TRACEBACK=1`` shows, and then orbax's too).
    """

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        if record.exc_info and not traceback_requested():
            record.exc_info, record.exc_text = None, None
        return record.levelno >= pylogging.WARNING


__all__ = ["CheckpointError", "Checkpointer", "CorruptCheckpointError", "committed_steps"]

_ABSL_LOGGER = pylogging.getLogger("absl")

PyTree = Any


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be saved, or is corrupt, partial or does not fit the state it is restored into."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files are damaged or incomplete (as opposed to not fitting the template)."""


_STATE_ITEM = "state"
_MANIFEST_ITEM = "manifest"
_FORMAT = "sympad-checkpoint/1"
_TMP_MARKER = ".orbax-checkpoint-tmp"
# Set-aside damaged steps: '<step>.corrupt'; orbax ignores names that are not a step number.
_CORRUPT_SUFFIX = ".corrupt"


def _path_name(path: tuple[Any, ...]) -> str:
    """'params/Dense_0/kernel' for a key path; dicts, dataclasses and tuples spell alike."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def _is_prng_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _prng_impl(x: Any) -> Any:
    """The PRNG implementation of a typed key array or of its ShapeDtypeStruct."""
    if isinstance(x, jax.Array):
        return jax.random.key_impl(x)
    return x.dtype._impl  # ShapeDtypeStruct: jax.random.key_impl only accepts concrete keys.


def _leaf_digest(x: Any) -> str | None:
    """sha256 of a leaf's bytes, or None where this process cannot see the whole array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _LeafSpec:
    path: str
    shape: tuple[int, ...]
    dtype: str
    prng_impl: str | None


def _leaf_spec(path: tuple[Any, ...], x: Any) -> _LeafSpec:
    if _is_prng_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return _LeafSpec(_path_name(path), tuple(data.shape), str(data.dtype), str(_prng_impl(x)))
    if isinstance(x, (bool, int, float)):
        # Python scalars (flax TrainState.step starts as int 0) have no fixed width: 'py:int'
        # matches any integer dtype, so a template from jax.eval_shape (int32) still fits.
        return _LeafSpec(_path_name(path), (), f"py:{type(x).__name__}", None)
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return _LeafSpec(_path_name(path), tuple(x.shape), str(np.dtype(x.dtype)), None)
    raise ValueError(f"state{jax.tree_util.keystr(path)}: cannot checkpoint a leaf of type {type(x).__name__}")


_PY_KINDS = {"py:bool": "b", "py:int": "iu", "py:float": "f"}


def _dtypes_compatible(saved: str, wanted: str) -> bool:
    if saved == wanted:
        return True
    if saved in _PY_KINDS and wanted in _PY_KINDS:
        return False
    if saved in _PY_KINDS:
        return jax.numpy.dtype(wanted).kind in _PY_KINDS[saved]
    if wanted in _PY_KINDS:
        return jax.numpy.dtype(saved).kind in _PY_KINDS[wanted]
    return False


def _manifest_entry(spec: _LeafSpec, stored: Any) -> dict[str, Any]:
    entry = dataclasses.asdict(spec)
    if spec.dtype in _PY_KINDS:
        entry.update(value=stored, digest=None)
    else:
        entry.update(value=None, digest=_leaf_digest(stored))
    return entry


def _matches_manifest(value: Any, entry: Mapping[str, Any]) -> bool:
    """Whether a restored leaf has exactly the bytes (or Python value) that were saved."""
    if entry["dtype"] in _PY_KINDS:
        got, want = np.asarray(value).item(), entry["value"]
        return got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got))
    if entry.get("digest") is None:
        return True  # saved from a process that could not see the whole array
    dtype = jax.numpy.dtype(entry["dtype"])
    if np.dtype(getattr(value, "dtype", np.asarray(value).dtype)) != dtype:
        value = np.asarray(value).astype(dtype)  # template was a Python scalar
    actual = _leaf_digest(value)
    return actual is None or actual == entry["digest"]


class Checkpointer:
    """Keeps the last ``max_to_keep`` checkpoints and the best one; restores exactly or fails loudly.

    A checkpoint is ``directory/<step>/`` with two orbax items: ``state`` (the pytree, via
    ``StandardSave``) and ``manifest`` (JSON: the leaf paths, shapes, dtypes and a sha256 of every
    leaf's bytes). orbax writes each step into ``<step>.orbax-checkpoint-tmp`` and renames it
    only when complete, so a run killed mid-save leaves the previous checkpoints untouched; such
    leftovers are logged and removed when the next ``Checkpointer`` opens the directory. Old steps
    are deleted only after a new one is committed. The manifest lets ``restore`` tell "corrupt"
    from "incompatible" before touching the arrays, and the digests catch silent corruption of the
    array files, which orbax itself restores without complaint.

    Typed PRNG keys (``jax.random.key``) are stored as their ``jax.random.key_data`` (uint32) and
    re-wrapped with the template's implementation on restore, so a template may hold either typed
    keys or raw uint32 key data, exactly as the saved state did.

    Saves are synchronous (no background thread): ``save`` returns once the step is committed,
    which keeps crash semantics simple; checkpoints of the models here take well under a second.

    While it is open (until :meth:`close`), orbax's INFO lines are dropped from the 'absl' logger
    (:class:`_QuietOrbax`); its warnings and errors still show.

    Args:
      directory: where the step directories live (created if missing).
      max_to_keep: how many of the most recent steps to keep (>= 1).
      best_metric: name of a metric passed to ``save(..., metrics=...)``; the step with the best
        value is kept in addition to the last ``max_to_keep``. NaN or a missing value never counts
        as best.
      best_mode: 'min' or 'max': which direction of ``best_metric`` is better.
      read_only: for tools that only restore (evaluation, export, analysis) while a training run
        may be writing to the same directory: nothing is created, cleaned up or saved. A writer
        removes unfinished saves when it opens the directory, which would break a save in flight.
      on_corrupt: what ``restore()`` of the latest step does when that checkpoint is corrupt or
        partial (damaged files, not a template mismatch). 'raise' (default): a
        ``CorruptCheckpointError`` naming the earlier steps. 'fall_back': rename the damaged step
        directory to ``<step>.corrupt`` beside it (never deleted: inspect or remove it yourself),
        log a warning naming both paths, and try the next older step, until one restores; if none
        does, raise. With ``read_only`` the damaged directory is left where it is. A checkpoint
        that restores but does not fit the template always raises: an older step would not fit
        either, and renaming good checkpoints would hide the real mistake (a changed config).
      run_fields: config fields that fix the state's structure, e.g. ``{"num_seeds": 2}``:
        written into every manifest; restoring a checkpoint whose manifest records another value
        of one of them raises a ``ConfigError`` naming ``config.<field>`` (before the arrays are
        compared, so the user reads the cause, not a list of shape differences).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        read_only: bool = False,
        on_corrupt: str = "raise",
        run_fields: Mapping[str, Any] | None = None,
    ):
        import orbax.checkpoint as ocp  # Deferred: orbax is slow to import and only needed here.
        from orbax.checkpoint import checkpoint_managers as ocm

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise ValueError(f"best_metric must be a metric name or None, got {best_metric!r}")
        if on_corrupt not in RESUME_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {RESUME_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.run_fields = dict(run_fields or {})
        self._ocp = ocp
        self.directory = Path(directory).expanduser().absolute()
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.read_only = bool(read_only)

        policies: list[Any] = [ocm.LatestN(n=max_to_keep)]
        if best_metric is not None:
            policies.append(
                ocm.BestN(
                    get_metric_fn=self._metric_value,
                    reverse=best_mode == "min",  # BestN keeps the tail of the sorted list.
                    n=1,
                    keep_checkpoints_without_metrics=False,  # LatestN already keeps recent ones.
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # With a preservation_policy, best_fn only makes orbax write each step's metrics to
            # disk, which BestN needs to still know the best step after a restart.
            best_fn=self._metric_value if best_metric is not None else None,
            best_mode=best_mode,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not self.read_only,
            create=not self.read_only,
            read_only=self.read_only,
        )
        if not self.read_only:
            self._log_unfinished_saves()
        self._quiet = _QuietOrbax()
        _ABSL_LOGGER.addFilter(self._quiet)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=(_STATE_ITEM, _MANIFEST_ITEM), options=options
            )
        except Exception as e:  # e.g. unreadable step metadata
            _ABSL_LOGGER.removeFilter(self._quiet)
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_brief(e)}") from e

    def _log_unfinished_saves(self) -> None:
        if not self.directory.is_dir() or jax.process_index() != 0:
            return
        for leftover in sorted(self.directory.glob(f"*{_TMP_MARKER}*")):
            logging.warning("Removing %s: an unfinished save, left by a run that was killed while saving.", leftover)

    def _metric_value(self, metrics: Mapping[str, Any] | None) -> float:
        """The best_metric of a step, or the worst possible value when it is missing or NaN."""
        worst = math.inf if self.best_mode == "min" else -math.inf
        if not metrics or self.best_metric not in metrics:
            return worst
        value = float(metrics[self.best_metric])
        return worst if math.isnan(value) else value

    def step_path(self, step: int) -> Path:
        """The directory of checkpoint ``step``."""
        return self.directory / str(int(step))

    def all_steps(self) -> list[int]:
        """The committed steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None without a best_metric or values)."""
        if self.best_metric is None:
            return None
        scored = []
        for step in self.all_steps():
            value = self._metric_value(self._manager.metrics(step))
            if math.isfinite(value):
                scored.append((value, step))
        if not scored:
            return None
        return (min if self.best_mode == "min" else max)(scored)[1]

    def save(self, step: int, state: PyTree, *, metrics: Mapping[str, Any] | None = None) -> bool:
        """Writes ``state`` as checkpoint ``step`` and prunes old steps.

        Args:
          step: the training step (a step is written once: saving an existing step is a logged
            no-op, so the final save of a run that resumed exactly there does not fail).
          state: any pytree of arrays: dicts, flax structs, optax states, typed or raw PRNG keys,
            numpy arrays, Python scalars. Sharded or replicated ``jax.Array``s are fine.
          metrics: scalars stored with the step; ``best_metric`` is read from here.

        Returns:
          True if the step was written, False if it already existed.

        Raises:
          CheckpointError: the write failed (disk full, no permission, ...): the message names the
            step directory, the cause and the earlier steps, which are untouched; the partial
            write stays in ``<step>.orbax-checkpoint-tmp*`` until the next writer opens the
            directory. Saving again (say, after freeing space) works.
        """
        ocp = self._ocp
        step = int(step)
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read_only; cannot save step {step}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step in self._manager.all_steps():
            logging.warning("Checkpoint step %d already exists in %s; not overwriting it.", step, self.directory)
            return False
        flat, treedef = jax.tree_util.tree_flatten_with_path(state)
        leaves = []
        manifest_leaves = []
        for path, x in flat:
            spec = _leaf_spec(path, x)
            stored = jax.random.key_data(x) if _is_prng_key(x) else x
            leaves.append(stored)
            manifest_leaves.append(_manifest_entry(spec, stored))
        # Always a dict when ranking by a metric: orbax then records the step as "no value".
        stored_metrics = {} if self.best_metric is not None else None
        if metrics is not None:
            stored_metrics = {}
            for name, value in metrics.items():
                arr = np.asarray(jax.device_get(value))
                if arr.size != 1:
                    raise ValueError(f"metrics[{name!r}] must be a scalar, got shape {arr.shape}")
                stored_metrics[str(name)] = float(arr.reshape(()))
        manifest = {"format": _FORMAT, "step": step, "leaves": manifest_leaves, "metrics": stored_metrics}
        if self.run_fields:
            manifest["run_fields"] = self.run_fields
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE_ITEM: ocp.args.StandardSave(treedef.unflatten(leaves)),
                        _MANIFEST_ITEM: ocp.args.JsonSave(manifest),
                    }
                ),
                metrics=stored_metrics,
                force=True,  # Our own checks decide; orbax would skip steps below the latest.
            )
            self._manager.wait_until_finished()
        except Exception as e:
            # orbax adds a step to its list only once committed; re-reading the directory keeps
            # that true whatever stage failed, so retention never counts a step that is not there.
            with contextlib.suppress(Exception):  # the save's own error is the one to report
                self._manager.reload()
            raise CheckpointError(self._save_failed_message(step, e)) from e
        return bool(saved)

    def _save_failed_message(self, step: int, error: BaseException) -> str:
        code = _os_errno(error)
        reason = f"{os.strerror(code)} (errno {code}); " if code is not None else ""
        try:
            steps = self.all_steps()
        except Exception:  # an unreadable directory must not hide the save's error
            steps = None
        if steps is None:
            kept = f"Earlier checkpoints in {self.directory} were not touched"
        elif steps:
            kept = (
                f"The checkpoints of steps {steps} are intact; after fixing this, rerun to resume "
                f"from step {steps[-1]}"
            )
        else:
            kept = f"No earlier checkpoint exists in {self.directory}"
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = f" Free space on the file system of {self.directory} (or keep fewer checkpoints: max_to_keep)."
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f" Make {self.directory} writable for this user."
        else:
            fix = ""
        return f"saving checkpoint {self.step_path(step)} failed: {reason}{_brief(error)}. {kept}.{fix}"

    def restore(self, template: PyTree, step: int | None = None) -> tuple[int, PyTree] | None:
        """Restores checkpoint ``step`` (default: the latest) into the structure of ``template``.

        Without ``step``, a corrupt latest checkpoint raises, or with ``on_corrupt='fall_back'`` is
        set aside for the newest intact one (see the class docstring). An explicit ``step`` never
        falls back.

        Args:
          template: a pytree with the same structure, shapes and dtypes as the saved state:
            concrete arrays or ``jax.ShapeDtypeStruct``s. Each leaf is restored with the
            template leaf's sharding (e.g. replicated on the mesh); leaves without one are restored
            replicated over all devices; numpy leaves come back as numpy.

        Returns:
          ``(step, state)``, or None when the directory holds no checkpoint at all.

        Raises:
          CheckpointError: naming the step directory, when the checkpoint does not match
            ``template`` (tree structure, shape or dtype) or ``step`` is missing.
          CorruptCheckpointError: naming the step directory and the earlier steps, when the
            checkpoint is corrupt or partial (with 'fall_back': when every step is).
        """
        steps = self.all_steps()
        if not steps:
            if step is not None:
                raise CheckpointError(f"{self.directory}: no checkpoint for step {step}; the directory has none")
            return None
        if step is not None:
            if int(step) not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint for step {step}; available steps: {steps}")
            return self._restore_step(template, int(step), hint=self._corrupt_hint(int(step), steps))
        if self.on_corrupt == "raise":
            return self._restore_step(template, steps[-1], hint=self._corrupt_hint(steps[-1], steps))
        return self._restore_newest_intact(template, steps)

    def _corrupt_hint(self, step: int, steps: list[int]) -> str:
        earlier = [s for s in steps if s < step]
        if not earlier:
            return ""
        return (
            f" Earlier checkpoints: steps {earlier}; to resume from step {earlier[-1]}, move "
            f"{self.step_path(step)} aside (or pass step={earlier[-1]}, or on_corrupt='fall_back' - on the "
            f"command line --config.resume_corrupt=fall_back - to "
            f"do both automatically)."
        )

    def _restore_newest_intact(self, template: PyTree, steps: list[int]) -> tuple[int, PyTree]:
        """on_corrupt='fall_back': the newest step that restores; damaged ones are set aside."""
        set_aside = []
        try:
            for step in reversed(steps):
                try:
                    restored = self._restore_step(template, step, hint="")
                except CorruptCheckpointError as e:
                    set_aside.append(self._set_aside(step, e))
                    continue
                if set_aside:
                    logging.warning("Resuming from step %d, the newest intact checkpoint in %s.", step, self.directory)
                return restored
        finally:
            if set_aside and not self.read_only:
                if jax.process_count() > 1:
                    # Every host must see the renames before any saves again.
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("sympad_checkpoint_set_aside")
                self._manager.reload()
        where = ", ".join(str(p) for p in set_aside)
        raise CorruptCheckpointError(
            f"every checkpoint in {self.directory} is corrupt (steps {steps}); "
            + ("they were left in place (read_only)." if self.read_only else f"they were moved aside to {where}.")
            + " Start a new run in another directory, or remove them to start over in this one."
        )

    def _set_aside(self, step: int, error: CorruptCheckpointError) -> Path:
        """Renames the damaged step directory out of orbax's sight (same directory: nothing is copied)."""
        path = self.step_path(step)
        if self.read_only:
            logging.warning("%s; leaving it in place (read_only) and trying the previous step.", str(error).rstrip("."))
            return path
        aside = self.directory / f"{step}{_CORRUPT_SUFFIX}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.directory / f"{step}{_CORRUPT_SUFFIX}-{n}"
        if jax.process_index() == 0:
            try:
                path.rename(aside)
            except OSError as e:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt, and moving it aside to {aside} failed: {_brief(e)}"
                ) from e
        logging.warning("%s; moved it aside to %s (not deleted) and trying the previous step.",
                        str(error).rstrip("."), aside)
        return aside

    def _restore_step(self, template: PyTree, step: int, *, hint: str) -> tuple[int, PyTree]:
        """Restores one committed step; ``hint`` ends the messages of corruption errors."""
        ocp = self._ocp
        path = self.step_path(step)

        try:
            manifest_args = ocp.args.Composite(**{_MANIFEST_ITEM: ocp.args.JsonRestore()})
            manifest = self._manager.restore(step, args=manifest_args)[_MANIFEST_ITEM]
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or partial: cannot read its manifest ({_brief(e)}).{hint}"
            ) from e
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or "leaves" not in manifest:
            # Damaged unless it parses as a manifest of another format (a newer sympad's, say).
            damaged = not isinstance(manifest, dict) or "leaves" not in manifest
            raise (CorruptCheckpointError if damaged else CheckpointError)(
                f"checkpoint {path} is corrupt or not a sympad checkpoint: bad manifest.{hint}"
            )

        saved_fields = manifest.get("run_fields") or {}
        for name, value in self.run_fields.items():
            if name in saved_fields and saved_fields[name] != value:
                saved = saved_fields[name]
                raise ConfigError(
                    f"config.{name}={value!r}: the checkpoints in {self.directory} were written by a run with "
                    f"{name}={saved!r}; resume with --config.{name}={saved!r}, or start a new --workdir"
                )
        flat, treedef = jax.tree_util.tree_flatten_with_path(template)
        specs = [_leaf_spec(p, x) for p, x in flat]
        saved_leaves = manifest["leaves"]
        problems = _compare_specs(saved_leaves, specs)
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not match the state it is restored into "
                f"({len(problems)} difference(s)): " + "; ".join(problems[:10])
            )

        default_sharding = None
        targets = []
        for (_, x), spec in zip(flat, specs):
            sharding = getattr(x, "sharding", None)
            if isinstance(x, (np.ndarray, np.generic)):
                targets.append(np.asarray(x))  # orbax restores numpy templates as numpy
                continue
            if isinstance(x, (int, float)):
                targets.append(x)
                continue
            if _is_prng_key(x) and isinstance(x, jax.Array):
                sharding = jax.random.key_data(x).sharding
            elif _is_prng_key(x) and sharding is not None:
                sharding = None  # a key sharding does not apply to the key data's extra axis
            if sharding is None:
                default_sharding = default_sharding or replicated(make_mesh())
                sharding = default_sharding
            targets.append(jax.ShapeDtypeStruct(spec.shape, np.dtype(spec.dtype), sharding=sharding))
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(**{_STATE_ITEM: ocp.args.StandardRestore(treedef.unflatten(targets))}),
            )
            values = jax.tree_util.tree_leaves(restored[_STATE_ITEM])
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or partial: restoring its arrays failed ({_brief(e)}).{hint}"
            ) from e
        if len(values) != len(targets):
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt: restored {len(values)} arrays, expected {len(targets)}.{hint}"
            )

        out = []
        for value, saved, (_, x) in zip(values, saved_leaves, flat):
            if not _matches_manifest(value, saved):
                raise CorruptCheckpointError(
                    f"checkpoint {path} is corrupt: the data of {saved['path']!r} does not match the "
                    f"checksum written with it (files under {path / _STATE_ITEM} were changed or "
                    f"damaged).{hint}"
                )
            if _is_prng_key(x):
                value = jax.random.wrap_key_data(value, impl=_prng_impl(x))
            elif isinstance(x, np.generic):
                value = np.asarray(value, x.dtype)[()]
            out.append(value)
        return step, treedef.unflatten(out)

    def close(self) -> None:
        """Waits for pending work, releases the manager and lets orbax's INFO lines through again."""
        try:
            self._manager.close()
        finally:
            _ABSL_LOGGER.removeFilter(self._quiet)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _brief(error: BaseException, limit: int = 400) -> str:
    """An exception as one short line (tensorstore appends kilobytes of JSON spec)."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


def _os_errno(error: BaseException) -> int | None:
    """The errno behind a failed write: an OSError in the chain, or tensorstore's os_error_code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        found = re.search(r"os_error_code='?(\d+)", str(error))
        if found:
            return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None


def _key_kind(prng_impl: str | None) -> str:
    return f"a typed PRNG key ({prng_impl})" if prng_impl else "raw uint32 key data"


def _compare_specs(saved: list[dict[str, Any]], wanted: list[_LeafSpec]) -> list[str]:
    """Human-readable differences between a manifest's leaves and a template's."""
    saved_by_path = {leaf["path"]: leaf for leaf in saved}
    wanted_by_path = {spec.path: spec for spec in wanted}
    problems = []
    for spec in wanted:
        leaf = saved_by_path.get(spec.path)
        if leaf is None:
            problems.append(f"{spec.path!r} is not in the checkpoint")
        elif tuple(leaf["shape"]) != spec.shape:
            problems.append(
                f"{spec.path!r} has shape {tuple(leaf['shape'])} in the checkpoint, {spec.shape} in the template"
            )
        elif not _dtypes_compatible(leaf["dtype"], spec.dtype):
            problems.append(f"{spec.path!r} has dtype {leaf['dtype']} in the checkpoint, {spec.dtype} in the template")
        elif (leaf.get("prng_impl") is None) != (spec.prng_impl is None):
            problems.append(
                f"{spec.path!r} is {_key_kind(leaf.get('prng_impl'))} in the checkpoint, "
                f"{_key_kind(spec.prng_impl)} in the template"
            )
    for leaf in saved:
        if leaf["path"] not in wanted_by_path:
            problems.append(f"{leaf['path']!r} is in the checkpoint but not in the template")
    if not problems and [leaf["path"] for leaf in saved] != [spec.path for spec in wanted]:
        problems.append("the leaves are the same but in a different tree order")
    return problems


def committed_steps(directory: Path) -> list[int]:
    """Step directories that finished saving (orbax names unfinished ones '<step>.orbax-...-tmp')."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())

"""Training runtime shared by the suites: devices, checkpoints, metrics, progress.

One implementation of the concerns every trainer has, so that neither suite grows its own:

* **Devices.** ``make_mesh()`` is a 1-D mesh with axis ``'data'`` over every device of every
  process. Batches are sharded along their leading axis (``shard_batch``), the training state is
  replicated (``replicate``), and the same jitted step runs unchanged on 1 or N devices: XLA
  inserts the cross-device mean of the gradients because the loss is a mean over a sharded batch.
  Multi-host runs call ``maybe_initialize_distributed()`` first.
* **Checkpoints.** ``Checkpointer`` wraps orbax's ``CheckpointManager``: keeps the last k steps
  and the best one, saves atomically (orbax writes ``<step>.orbax-checkpoint-tmp`` and renames
  it once complete), and restores any pytree exactly or raises ``CheckpointError`` naming the path.
* **Metrics.** ``MetricWriter`` appends JSON lines to ``workdir/metrics.jsonl`` and writes
  TensorBoard event files through tensorboardX (no TensorFlow).
* **Progress.** ``Progress`` is a tqdm bar on a terminal and periodic plain lines otherwise.
* **Divergence.** ``check_finite`` stops a run on NaN/Inf with a message that says where the last
  good checkpoint is.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging as pylogging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class _QuietOrbax(pylogging.Filter):
    """Drops orbax's INFO chatter (dozens of lines per save); its warnings and errors still show."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


# absl routes every library's messages through the one 'absl' logger, so filter by source file.
pylogging.getLogger("absl").addFilter(_QuietOrbax())

__all__ = [
    "DATA_AXIS",
    "CheckpointError",
    "Checkpointer",
    "DivergenceError",
    "MetricWriter",
    "Progress",
    "batch_sharded",
    "check_finite",
    "image_grid",
    "make_mesh",
    "maybe_initialize_distributed",
    "replicate",
    "replicated",
    "save_image_grid",
    "shard_batch",
]

DATA_AXIS = "data"

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, partial or does not fit the state it is restored into."""


class DivergenceError(RuntimeError):
    """A training metric became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# Devices


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Calls ``jax.distributed.initialize()`` when started as one process of a multi-host job.

    Must run before anything touches a JAX device. Recognised launchers: explicit
    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``, SLURM (``srun`` with
    more than one task) and Open MPI (``mpirun -n N`` with N > 1). A single-process run, or one
    already initialised, is left alone.

    Args:
      environ: the environment to inspect; ``os.environ`` by default.

    Returns:
      True when this call initialised the distributed runtime.
    """
    kwargs = _distributed_init_kwargs(os.environ if environ is None else environ)
    if kwargs is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**kwargs)
    logging.info(
        "JAX distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True


def _distributed_init_kwargs(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments for this environment, or None (single host)."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in environ]
        if missing:
            raise ValueError(
                f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all three "
                "to start a multi-host run."
            )
        return dict(
            coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(environ["JAX_NUM_PROCESSES"]),
            process_id=int(environ["JAX_PROCESS_ID"]),
        )
    # JAX detects coordinator address, process count and id itself for these launchers; we only
    # decide whether there is more than one process (a plain `srun python ...` has one task).
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))) > 1:
        return {}
    if "OMPI_MCA_orte_hnp_uri" in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}
    return None


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh with axis ``'data'``.

    Args:
      devices: the devices to use; all devices of all processes (``jax.devices()``) by default.

    Returns:
      A ``Mesh`` of shape ``{'data': len(devices)}``.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: need at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh`` (training state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding that splits the leading (batch) axis over the mesh's ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of ``tree`` (state: params, optimizer state, keys) on all devices."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: PyTree, mesh: Mesh) -> PyTree:
    """Splits every leaf of ``tree`` along its leading axis over the mesh's devices.

    Single process: each leaf is the global batch, (B, ...) with B divisible by the device count.
    Multi-process: each process passes its own slice, (B / process_count, ...), and gets back the
    global (B, ...) array (``jax.make_array_from_process_local_data``).

    Args:
      tree: pytree of arrays with a common leading batch axis.
      mesh: from ``make_mesh``.

    Returns:
      The same pytree of ``jax.Array`` sharded with ``batch_sharded(mesh)``.
    """
    sharding = batch_sharded(mesh)
    multi_process = jax.process_count() > 1
    per_call_devices = mesh.size // jax.process_count() if multi_process else mesh.size

    def put(path, x):
        shape = np.shape(x)
        if not shape or shape[0] % per_call_devices:
            raise ValueError(
                f"tree{jax.tree_util.keystr(path)}: leading axis of shape {shape} must be divisible "
                f"by the {per_call_devices} devices it is split over"
            )
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(put, tree)


# ----------------------------------------------------------------------------------------------
# Checkpoints

_STATE_ITEM = "state"
_MANIFEST_ITEM = "manifest"
_FORMAT = "sympad-checkpoint/1"
_TMP_MARKER = ".orbax-checkpoint-tmp"


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
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        read_only: bool = False,
    ):
        import orbax.checkpoint as ocp  # Deferred: orbax is slow to import and only needed here.
        from orbax.checkpoint import checkpoint_managers as ocm

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise ValueError(f"best_metric must be a metric name or None, got {best_metric!r}")
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
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=(_STATE_ITEM, _MANIFEST_ITEM), options=options
            )
        except Exception as e:  # e.g. unreadable step metadata
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
          CheckpointError: the write failed; previous checkpoints are untouched.
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
            raise CheckpointError(f"saving checkpoint {self.step_path(step)} failed: {_brief(e)}") from e
        return bool(saved)

    def restore(self, template: PyTree, step: int | None = None) -> tuple[int, PyTree] | None:
        """Restores checkpoint ``step`` (default: the latest) into the structure of ``template``.

        Args:
          template: a pytree with the same structure, shapes and dtypes as the saved state:
            concrete arrays or ``jax.ShapeDtypeStruct``s. Each leaf is restored with the
            template leaf's sharding (e.g. replicated on the mesh); leaves without one are restored
            replicated over all devices; numpy leaves come back as numpy.

        Returns:
          ``(step, state)``, or None when the directory holds no checkpoint at all.

        Raises:
          CheckpointError: naming the step directory, when the checkpoint is corrupt, partial, or
            does not match ``template`` (tree structure, shape or dtype), or ``step`` is missing.
        """
        ocp = self._ocp
        steps = self.all_steps()
        if not steps:
            if step is not None:
                raise CheckpointError(f"{self.directory}: no checkpoint for step {step}; the directory has none")
            return None
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint for step {step}; available steps: {steps}")
        step = int(step)
        path = self.step_path(step)
        earlier = [s for s in steps if s < step]
        hint = (
            f" Earlier checkpoints: steps {earlier}; to resume from step {earlier[-1]}, move {path} "
            f"aside (or pass step={earlier[-1]})."
            if earlier
            else ""
        )

        try:
            manifest_args = ocp.args.Composite(**{_MANIFEST_ITEM: ocp.args.JsonRestore()})
            manifest = self._manager.restore(step, args=manifest_args)[_MANIFEST_ITEM]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or partial: cannot read its manifest ({_brief(e)}).{hint}"
            ) from e
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or "leaves" not in manifest:
            raise CheckpointError(f"checkpoint {path} is corrupt or not a sympad checkpoint: bad manifest.{hint}")

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
            raise CheckpointError(
                f"checkpoint {path} is corrupt or partial: restoring its arrays failed ({_brief(e)}).{hint}"
            ) from e
        if len(values) != len(targets):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: restored {len(values)} arrays, expected {len(targets)}.{hint}"
            )

        out = []
        for value, saved, (_, x) in zip(values, saved_leaves, flat):
            if not _matches_manifest(value, saved):
                raise CheckpointError(
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
        """Waits for pending work and releases the manager."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _brief(error: BaseException, limit: int = 400) -> str:
    """An exception as one short line (tensorstore appends kilobytes of JSON spec)."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


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


def _committed_steps(directory: Path) -> list[int]:
    """Step directories that finished saving (orbax names unfinished ones '<step>.orbax-...-tmp')."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


# ----------------------------------------------------------------------------------------------
# Divergence guard


def check_finite(step: int, metrics: Mapping[str, Any], *, checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
    """Raises ``DivergenceError`` if any metric is NaN or infinite.

    Fetches the metrics to the host, so call it where they are fetched anyway (log intervals),
    and before ``Checkpointer.save``, so that a diverged state never becomes the latest checkpoint.

    Args:
      step: the step the metrics belong to.
      metrics: name → scalar or array.
      checkpoint_dir: the ``Checkpointer`` directory, named in the message with its latest step.

    Raises:
      DivergenceError: "step N: <metric> is nan; stopping. The last good checkpoint is at <dir>
        (step M)."
    """
    for name, value in metrics.items():
        arr = np.asarray(jax.device_get(value))
        if not np.issubdtype(arr.dtype, np.inexact) or np.isfinite(arr).all():
            continue
        kind = "nan" if np.isnan(arr).any() else "inf"
        if checkpoint_dir is None:
            where = "No checkpoint directory was given."
        else:
            steps = _committed_steps(Path(checkpoint_dir))
            where = (
                f"The last good checkpoint is at {checkpoint_dir} (step {steps[-1]})."
                if steps
                else f"No checkpoint has been saved yet in {checkpoint_dir}."
            )
        raise DivergenceError(f"step {int(step)}: {name} is {kind}; stopping. {where}")


# ----------------------------------------------------------------------------------------------
# Metrics and images


def _summary_writer_class() -> type:
    """``tensorboardX.SummaryWriter``, imported without dragging in PyTorch.

    tensorboardX's package init runs ``try: import torch`` only so that it can accept torch
    tensors; where torch happens to be installed that costs seconds of start-up (7 s measured on
    a loaded 2-core machine, 0.14 s without). We pass NumPy only, so torch is hidden during the
    import: a ``None`` entry in ``sys.modules`` makes ``import torch`` raise ImportError.
    """
    if "tensorboardX.writer" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` (always) and TensorBoard event files in ``workdir``.

    Each ``write`` appends one JSON object, ``{"step": 100, "loss": 0.25, ...}``, and flushes,
    so a killed run leaves only whole lines. A resumed run appends too: steps between the last
    checkpoint and the crash appear twice, and readers should keep the last record per step.
    NaN/Inf are written as JSON's ``NaN``/``Infinity`` extensions (Python's json reads them).
    Only process 0 writes in a multi-host run.

    Args:
      workdir: the run directory (created if missing).
      tensorboard: also write TensorBoard event files (tensorboardX, no TensorFlow needed).
    """

    def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._active = jax.process_index() == 0
        self._file: TextIO | None = None
        self._tb = None
        if not self._active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self._tb = _summary_writer_class()(logdir=str(self.workdir), flush_secs=30)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record; every value must be a scalar (Python, NumPy or JAX)."""
        record: dict[str, Any] = {"step": int(step)}
        for name, value in metrics.items():
            if not isinstance(name, str) or name == "step":
                raise ValueError(f"metric names must be strings other than 'step', got {name!r}")
            arr = np.asarray(jax.device_get(value))
            if arr.size != 1:
                raise ValueError(f"metrics[{name!r}] must be a scalar, got shape {arr.shape}")
            record[name] = float(arr.reshape(()))
        if not self._active:
            return
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(name, value, global_step=record["step"])

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Writes a uint8 (H, W, 3) or (H, W) image to TensorBoard only (not to the JSONL)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
            raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
        if self._tb is None:
            return
        if image.ndim == 2:
            image = image[..., None]
        self._tb.add_image(name, image, global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def image_grid(images: np.ndarray, *, ncols: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tiles images row-major into one image.

    Args:
      images: uint8 (N, H, W, C) with C in {1, 3}, or (N, H, W).
      ncols: images per row; ceil(sqrt(N)) by default.
      padding: pixels of ``pad_value`` between images and around the border.
      pad_value: fill of the padding and of empty cells in the last row.

    Returns:
      uint8 (rows*(H+padding)+padding, ncols*(W+padding)+padding, C).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"images must be non-empty uint8 (N, H, W, 3|1), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    ncols = math.ceil(math.sqrt(n)) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, np.uint8)
    for i, img in enumerate(images):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[top : top + h, left : left + w] = img
    return grid


def save_image_grid(
    images: np.ndarray, path: str | os.PathLike[str], *, ncols: int | None = None, padding: int = 2
) -> Path:
    """Writes ``image_grid(images, ncols=ncols, padding=padding)`` as a PNG (Pillow); returns the path."""
    from PIL import Image

    grid = image_grid(images, ncols=ncols, padding=padding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------
# Progress


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return f"{float(np.asarray(jax.device_get(value))):.4g}"
    except (TypeError, ValueError):
        return str(value)


class Progress:
    """Training progress: a tqdm bar (steps/s, ETA) on a terminal, periodic plain lines otherwise.

    Plain lines (log files, CI) look like
    ``train: step 500/1000 (50%), 12.3 steps/s, ETA 0:00:40, loss=0.123`` and are printed every
    ``log_every_frac`` of the run or every ``log_every_s`` seconds, whichever comes first, and at
    the last step. Only process 0 prints.

    Args:
      total: the step the run ends at.
      initial: the step it starts from (a resumed run); rates count from here.
      desc: a prefix.
      file: where to write; sys.stderr by default. A bar is drawn only if ``file.isatty()``.
      log_every_s: plain mode: at most this long between lines.
      log_every_frac: plain mode: a line every this fraction of ``total``.
      clock: seconds as a float; ``time.monotonic`` (injectable for tests).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        file: TextIO | None = None,
        log_every_s: float = 30.0,
        log_every_frac: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0 or initial < 0:
            raise ValueError(f"total and initial must be >= 0, got total={total}, initial={initial}")
        if not 0 < log_every_frac <= 1:
            raise ValueError(f"log_every_frac must be in (0, 1], got {log_every_frac}")
        self.total = int(total)
        self.desc = desc
        self._file = sys.stderr if file is None else file
        self._clock = clock
        self._enabled = jax.process_index() == 0
        self._initial = self._step = int(initial)
        self._start = self._last_time = clock()
        self._every_s = float(log_every_s)
        self._every_steps = max(1, math.ceil(self.total * log_every_frac))
        self._next_step = (self._initial // self._every_steps + 1) * self._every_steps
        self._closed = False
        self._bar = None
        isatty = getattr(self._file, "isatty", None)
        if self._enabled and callable(isatty) and isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self._initial, desc=desc or None, unit="step",
                file=self._file, dynamic_ncols=True, smoothing=0.1,
            )

    def update(self, step: int, **postfix: Any) -> None:
        """Reports that training has reached ``step``; ``postfix`` values are shown after it."""
        step = int(step)
        if not self._enabled or self._closed:
            self._step = step
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _format_value(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(step - self._bar.n)
            self._step = step
            return
        self._step = step
        now = self._clock()
        if step >= self._next_step or now - self._last_time >= self._every_s or step >= self.total:
            self._write_line(step, now, postfix)
            self._last_time = now
            self._next_step = (step // self._every_steps + 1) * self._every_steps

    def _write_line(self, step: int, now: float, postfix: Mapping[str, Any]) -> None:
        elapsed = now - self._start
        done = step - self._initial
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        pct = 100.0 * step / self.total if self.total else 100.0
        parts = [f"step {step}/{self.total} ({pct:.0f}%)", f"{rate:.3g} steps/s", f"ETA {_format_duration(eta)}"]
        parts += [f"{k}={_format_value(v)}" for k, v in postfix.items()]
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self._file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The one training loop both suites run; it knows no suite.

A suite builds what differs (its state, its jitted steps, its dataset, its periodic actions) and
hands it to :func:`train`, which does the rest once for everyone:

* mesh and batch check (:func:`checked_mesh`);
* data placement: the split on every device when it fits and ``config.host_data`` is False, else
  a host loader (:class:`Input`);
* restore the latest checkpoint or initialise, then replicate (:func:`restore_or_init`; tools
  that only read a run use :func:`restore_latest`);
* the step loop: metrics stay on the device until a step where something happens (log, hook,
  checkpoint, the last step), so the host does not wait on the device every step; the NaN/Inf
  guard runs on every fetched step before anything is saved; periodic hooks (:class:`Hook`: samples,
  evaluation) and checkpoints at :func:`itstime`; a final save; every resource closed in
  ``finally`` (also on error or Ctrl-C);
* preemption: SIGTERM or SIGINT saves a checkpoint of the step in progress and stops with
  :class:`Preempted` (exit status :data:`PREEMPTED_EXIT_CODE`); rerunning the command resumes
  there exactly. With no step finished since the last checkpoint (compiling, a slow first step)
  there is nothing to save and the process ends at once, with the same status; so does a second
  signal. Multi-host runs stop at jax's preemption sync point, the same step everywhere;
* ``config.step_limit_file``: a scheduler may shorten the run while it trains by writing a step
  count there (:class:`_StepLimit`); the run then ends at that step as if it were
  ``total_steps`` (last record, hooks and checkpoint). The learning-rate schedule is not rebuilt;
* ``config.conv_implementation``: the loop is the one place a run's formulation of the C*sp convs
  takes effect. ``sympad.use_implementation`` acts when a function is traced, and the steps and
  hooks (sampling, evaluation) are traced at their first call, inside :func:`train`; so the suites'
  step factories do not apply it, and code that traces outside a run applies it itself
  (``classify.train``'s final evaluation of a run restored at its end, ``classify.profile``).

The config keys it reads are the shared vocabulary of ``sympad.train.config.LOOP_FIELDS``.
A ``state`` is any pytree with a scalar ``step`` field (completed train steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

import sympad
from sympad.train import data as sdata
from sympad.train.checkpoint import Checkpointer
from sympad.train.config import LOOP_FIELDS, cadence, check_batch_size, checkpoint_dir, field_error
from sympad.train.errors import ConfigError
from sympad.train.mesh import make_mesh, replicate
from sympad.train.metrics import MetricWriter, check_finite
from sympad.train.progress import Progress

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Hook",
    "Input",
    "Preempted",
    "checked_mesh",
    "itstime",
    "on_device",
    "resolve_every",
    "restore_latest",
    "restore_or_init",
    "train",
]

State = TypeVar("State")
Metrics = Mapping[str, Any]


# ----------------------------------------------------------------------------------------------
# Cadence


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
    """Whether an action with period ``every`` is due once ``step`` steps are done.

    Args:
      step: completed train steps (1 after the first step).
      every: period in steps; ``<= 0`` never fires periodically.
      total: the run's last step.
      last: also fire at ``step == total`` (checkpoints, logs and hooks all do: a run always ends
        with a record, a checkpoint and its final samples/evaluation).
    """
    return (every > 0 and step % every == 0) or (last and step == total)


def resolve_every(value: int, *, steps_per_epoch: int | None, name: str) -> int:
    """A config cadence in steps: ``n > 0`` every n steps, ``0`` only at the end, ``-n`` every n epochs.

    Raises:
      ConfigError: naming ``config.<name>`` for a non-int, or for epochs without an epoch length.
    """
    problem = cadence(value)
    if problem is not None:
        raise field_error(name, value, problem)
    value = int(value)
    if value >= 0:
        return value
    if not steps_per_epoch:
        raise ConfigError(f"config.{name}={value}: epochs (negative values) need an epoch length, which this run "
                          "lacks; use steps (n > 0) or 0 (only at the end)")
    return -value * int(steps_per_epoch)


# ----------------------------------------------------------------------------------------------
# Mesh, data placement, restore


def checked_mesh(batch_size: int) -> Mesh:
    """The data mesh over all devices, after checking ``config.batch_size`` splits evenly over it.

    Raises:
      ConfigError: naming config.batch_size when it is not a positive multiple of the device count
        (``sympad.train.config.check_batch_size``).
    """
    mesh = make_mesh()
    check_batch_size(batch_size, mesh.size)
    return mesh


@dataclasses.dataclass(frozen=True)
class Input:
    """The training split and the two ways a step gets its batch; :func:`train` picks one.

    Attributes:
      dataset: the split (host memory); on the device when ``sympad.train.data.fits_on_device``
        says so and ``config.host_data`` is False.
      arrays: which of its arrays a step on the device takes: ``'images'`` or
        ``'images_labels'``.
      device_step: ``(state, *arrays on the device) -> (state, metrics)``; gathers batch
        ``state.step`` itself.
      host_loader: ``start_step -> sympad.train.data.HostLoader`` (or anything with ``close()``)
        positioned at the batch of train step ``start_step``; the loop closes it.
      host_step: ``(state, loader) -> (state, metrics)``: takes this step's batch(es) from the
        loader.
    """

    dataset: sdata.Dataset
    device_step: Callable[..., tuple[Any, Metrics]]
    host_loader: Callable[[int], Any]
    host_step: Callable[[Any, Any], tuple[Any, Metrics]]
    arrays: str = "images"

    def device_arrays(self) -> tuple[np.ndarray, ...]:
        if self.arrays == "images":
            return (self.dataset.images,)
        if self.arrays == "images_labels":
            return (self.dataset.images, self.dataset.labels)
        raise ValueError(f"Input.arrays must be 'images' or 'images_labels', got {self.arrays!r}")


def on_device(dataset: sdata.Dataset, *, host_data: bool) -> bool:
    """Whether the split lives on the devices: when it fits, unless ``config.host_data`` asks for the host."""
    return not LOOP_FIELDS["host_data"].check(host_data) and sdata.fits_on_device(dataset)


def restore_or_init(checkpointer: Checkpointer, init_state: Callable[[], State], mesh: Mesh, *,
                    place: Callable[[State], State] | None = None) -> tuple[State, int]:
    """The latest checkpoint in ``checkpointer`` if any, else ``init_state()``; replicated over ``mesh``.

    ``place`` puts the initial state on the devices instead (e.g. ``sympad.train.mesh.place`` with
    a sharding); a restored state lands with the same shardings.

    Returns:
      ``(state, step)`` with ``step = int(state.step)``.

    Raises:
      sympad.train.checkpoint.CheckpointError: the latest checkpoint is corrupt or does not match.
    """
    state = (place or (lambda tree: replicate(tree, mesh)))(init_state())  # the template: restored leaves land alike
    restored = checkpointer.restore(state)
    if restored is not None:
        logging.info("Resuming from %s (step %d)", checkpointer.step_path(restored[0]), restored[0])
        state = restored[1]
    return state, int(jax.device_get(state.step))


def restore_latest(directory: str | os.PathLike[str], template: State) -> tuple[int, State]:
    """The latest checkpoint of a run, read-only (safe while the run is still writing).

    Args:
      directory: the run's checkpoint directory (``workdir/checkpoints``).
      template: a state of the run's structure (concrete or ``jax.ShapeDtypeStruct`` leaves).

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      sympad.train.checkpoint.CheckpointError: corrupt, or does not match ``template``.
    """
    with Checkpointer(directory, read_only=True) as checkpointer:
        restored = checkpointer.restore(template)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return restored


# ----------------------------------------------------------------------------------------------
# Preemption

#: Exit status of a run stopped by SIGTERM/SIGINT after saving its checkpoint: ``EX_TEMPFAIL``
#: (sysexits.h, "try again"), so a wrapper can tell "rerun to resume" from success (0), a user
#: error (2) or a crash (1).
PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
    """Training stopped on SIGTERM/SIGINT after checkpointing ``step``; rerun the command to resume.

    A ``SystemExit`` (code :data:`PREEMPTED_EXIT_CODE`): it passes through the suites' code
    unhandled (no final evaluation of a partial run) and ends the process with that status.
    """

    def __init__(self, step: int, signum: int | None):
        name = signal.Signals(signum).name if signum else "a preemption notice"
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step
        self.message = f"stopped by {name} after saving the checkpoint of step {step}; rerun the same command to resume"

    def __str__(self) -> str:
        return self.message


class _PreemptionWatch:
    """Turns SIGTERM/SIGINT into a stop after the step in flight, or an exit at once with nothing to save.

    Single process: a watcher thread wakes on each signal (``signal.set_wakeup_fd``: the
    interpreter's C handler writes it even while the main thread sits in a long XLA compile or
    step, where no Python handler runs). When no step has finished since the last checkpoint
    (compiling, or the first step of a slow run) there is nothing to save, and the process ends at
    once with :data:`PREEMPTED_EXIT_CODE`; otherwise the loop saves after the step in flight and
    stops. A second signal ends the process at once, whatever it is doing: the checkpoints on
    disk are whole (a save writes a temporary directory and renames it).

    Several processes: one host's notice must stop all of them at the same step, or the
    checkpoint would mix steps. ``jax.distributed.initialize`` starts jax's preemption service,
    which owns SIGTERM and agrees on a step with the others; every process asks it every step
    (``multihost_utils.reached_preemption_sync_point``). SIGINT is forwarded to it as SIGTERM.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        # jax.distributed.initialize starts the service unless this option turns it off.
        self._synced = jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)
        self._saved_step = 0
        self._unsaved: Metrics | None = None  # outputs of the first step dispatched since the last save
        self._wakeup: tuple[int, int] | None = None  # (read, write) ends of the signals' pipe
        self._previous_wakeup = -1

    def __enter__(self) -> _PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        if self._synced:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)  # the C handler must never block
        self._wakeup = (read, write)
        for signum in (signal.SIGTERM, signal.SIGINT):
            # A Python handler, so that the C handler writes the pipe; the watcher does the work.
            self._previous[signum] = signal.signal(signum, lambda signum, frame: None)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), name="preemption-watch", daemon=True).start()
        return self

    def _forward(self, signum: int, frame: Any) -> None:
        self.signum = signum
        os.kill(os.getpid(), signal.SIGTERM)  # to jax's preemption notifier

    def _watch(self, read: int) -> None:
        try:
            while (data := os.read(read, 1)) and data[0]:  # b"" or b"\0": the watch is over
                signum = data[0]
                if signum not in (signal.SIGTERM, signal.SIGINT):
                    continue
                name = signal.Signals(signum).name
                since = f"the checkpoint of step {self._saved_step}" if self._saved_step else "the start"
                if self.signum is not None:
                    _exit_now(f"stopped by a second signal ({name}) before saving; rerun the same command to resume "
                              f"from {since}")
                if not self._step_finished():
                    _exit_now(f"stopped by {name}: no step finished since {since} (compiling, or in the first "
                              "step), nothing to save; rerun the same command to resume")
                self.signum = signum
                logging.warning("Received %s: saving a checkpoint after this step, then stopping.", name)
        finally:
            os.close(read)

    def _step_finished(self) -> bool:
        outputs = self._unsaved
        return outputs is not None and all(x.is_ready() for x in jax.tree_util.tree_leaves(outputs))

    def dispatched(self, metrics: Metrics) -> None:
        """A step was dispatched; ``metrics`` are its outputs (ready once it has finished)."""
        if self._unsaved is None:
            self._unsaved = metrics

    def saved(self, step: int) -> None:
        """The checkpoint of ``step`` is on disk."""
        self._saved_step, self._unsaved = step, None

    def reached(self, step: int) -> bool:
        if self._synced:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.signum is not None

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            read, write = self._wakeup
            os.write(write, b"\0")  # ends the watcher, which closes its end
            os.close(write)
            self._wakeup = None


def _exit_now(message: str) -> NoReturn:
    """Ends the process at once with PREEMPTED_EXIT_CODE: from the watcher thread, while the main thread is busy."""
    print(message, file=sys.stderr, flush=True)
    os._exit(PREEMPTED_EXIT_CODE)


# ----------------------------------------------------------------------------------------------
# An outside step limit


class _StepLimit:
    """Reads ``config.step_limit_file`` (an int in text) whenever the file changes.

    The run ends at ``max(N, the next step)`` when ``N`` is below its current end; a larger
    ``N`` never lengthens it.

    Looked at once per dispatched step: one ``stat`` call, microseconds beside any train step.
    A missing, empty or unreadable file means no limit (a writer replaces it atomically).
    """

    def __init__(self, path: str):
        self.path = Path(path) if path else None
        self._seen: tuple[int, int] | None = None
        self.value: int | None = None

    def get(self) -> int | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return self.value
        if (stat.st_mtime_ns, stat.st_size) != self._seen:
            self._seen = (stat.st_mtime_ns, stat.st_size)
            try:
                self.value = int(self.path.read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                pass  # a half-written file: the next change is read
        return self.value

    def end(self, total_steps: int, step: int) -> int:
        """The run's last step once ``step`` steps are done: ``total_steps``, or the limit when it is
        lower; a limit already passed ends the run at the next step."""
        limited = self.get()
        return total_steps if limited is None or limited >= total_steps else max(limited, step + 1)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass(frozen=True)
class Hook:
    """A periodic action: ``fn(step, state, writer)`` at the steps ``itstime(step, every, total)`` picks.

    Attributes:
      every: the config value of its cadence (``resolve_every``: steps, 0, or -epochs).
      fn: runs after the step's train metrics are fetched and checked; the scalars it returns
        join that step's record in metrics.jsonl (and the checkpoint's metrics). It may write
        images with ``writer.write_image``.
      name: the config key of ``every``, for error messages.
    """

    every: int
    fn: Callable[[int, Any, MetricWriter], Mapping[str, float] | None]
    name: str = "hook"


def _mean(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


def _input_step(data: Input, mesh: Mesh, start: int, *, host_data: bool,
                resources: contextlib.ExitStack) -> Callable[[State], tuple[State, Metrics]]:
    """One train step on its batch: the split on every device when it goes there (:func:`on_device`),
    else from a host loader positioned at step ``start`` (closed with ``resources``)."""
    if on_device(data.dataset, host_data=host_data):
        arrays = tuple(replicate(a, mesh) for a in data.device_arrays())
        return lambda state: data.device_step(state, *arrays)
    loader = data.host_loader(start)
    resources.callback(loader.close)
    return lambda state: data.host_step(state, loader)


class _Run:
    """What one call of :func:`train` holds open (checkpoints, the preemption watch, the input, the
    metric writer and the progress bar, all closed with ``resources``), its state and the train metrics
    on their way from the device to metrics.jsonl."""

    def __init__(self, resources: contextlib.ExitStack, config: ml_collections.ConfigDict,
                 workdir: str | os.PathLike[str], *, mesh: Mesh, init_state: Callable[[], State], data: Input,
                 total_steps: int, best_metric: str | None, desc: str, place: Callable[[State], State] | None,
                 run_fields: Mapping[str, Any] | None):
        self.checkpointer = resources.enter_context(Checkpointer(
            checkpoint_dir(workdir), max_to_keep=int(config.max_checkpoints), best_metric=best_metric,
            on_corrupt=config.get("resume_corrupt", "raise"), run_fields=run_fields))
        # From here on a signal either stops after a step (and saves it) or, with nothing to save, at once.
        self.preemption = resources.enter_context(_PreemptionWatch())
        self.state, self.start = restore_or_init(self.checkpointer, init_state, mesh, place=place)
        self.preemption.saved(self.start)
        self.next_step = _input_step(data, mesh, self.start, host_data=config.host_data, resources=resources)
        self.writer = resources.enter_context(MetricWriter(workdir))
        self.progress = resources.enter_context(Progress(total_steps, initial=self.start, desc=desc))
        self.step = self.start
        self.pending: list[Metrics] = []  # on the device, not yet fetched
        self.since_log: list[dict[str, Any]] = []  # fetched, not yet logged
        self.train_time, self.tick, self.fetched_at, self.logged_at = 0.0, time.monotonic(), self.start, self.start

    def dispatch(self) -> int:
        """Dispatches the next train step, its metrics left on the device; returns the steps done."""
        self.state, metrics = self.next_step(self.state)
        self.step += 1
        self.preemption.dispatched(metrics)
        self.pending.append(metrics)
        return self.step

    def record(self, *, log: bool, summarize: Callable[[int, dict[str, float]], dict[str, float]] | None,
               hooks: Sequence[Hook]) -> dict[str, float]:
        """This step's record, written to metrics.jsonl when not empty.

        The metrics dispatched since the last fetch are fetched and pass the NaN/Inf guard first;
        then the record holds their mean since the last record (``summarize``d, with ``steps_per_s``)
        when ``log``, and what ``hooks`` return.
        """
        fetched = jax.device_get(self.pending)
        self.train_time += time.monotonic() - self.tick
        self.pending = []
        for i, values in enumerate(fetched):  # the guard, before any save
            check_finite(self.fetched_at + 1 + i, values, checkpoint_dir=self.checkpointer.directory)
        self.since_log.extend(fetched)
        self.fetched_at = step = self.step
        record: dict[str, float] = {}
        if log:
            means = _mean(self.since_log)
            record = summarize(step, means) if summarize is not None else means
            record["steps_per_s"] = (step - self.logged_at) / max(self.train_time, 1e-9)
            self.since_log, self.train_time, self.logged_at = [], 0.0, step
        for hook in hooks:
            record.update(hook.fn(step, self.state, self.writer) or {})
        if record:
            self.writer.write(step, record)
        return record

    def save(self, record: Metrics) -> None:
        self.checkpointer.save(self.step, self.state, metrics=record)
        self.preemption.saved(self.step)

    def preempted(self) -> Preempted:
        preempted = Preempted(self.step, self.preemption.signum)
        logging.warning("%s", preempted)
        return preempted

    def resume_clock(self) -> None:
        self.tick = time.monotonic()  # steps/s counts training only, not hooks or saving


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    mesh: Mesh,
    init_state: Callable[[], State],
    data: Input,
    total_steps: int,
    steps_per_epoch: int | None = None,
    hooks: Sequence[Hook] = (),
    summarize: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
    progress_keys: Sequence[str] = (),
    first_record: Mapping[str, float] | None = None,
    best_metric: str | None = None,
    desc: str = "train",
    place: Callable[[State], State] | None = None,
    run_fields: Mapping[str, Any] | None = None,
) -> tuple[State, dict[str, float]]:
    """Trains from the latest checkpoint in ``workdir/checkpoints`` (or from ``init_state()``) to ``total_steps``.

    Config keys read (``sympad.train.config.LOOP_FIELDS``): log_every, checkpoint_every,
    max_checkpoints, host_data, conv_implementation, resume_corrupt, step_limit_file.

    Args:
      config: the run's config.
      workdir: run directory: metrics.jsonl (+ TensorBoard events), checkpoints/.
      mesh: from :func:`checked_mesh`.
      init_state: the initial state (not replicated); also the restore template.
      data: the split and the steps that consume it.
      total_steps: train steps of the whole run.
      steps_per_epoch: epoch length, for negative (epoch) cadences.
      hooks: periodic actions, run in order.
      summarize: ``(step, mean train metrics since the last record) -> the record's train part``
        (rename, add the learning rate, ...). ``steps_per_s`` (training time only: the clock stops
        during hooks and saves) is added after it.
      progress_keys: record entries shown on the progress bar.
      first_record: written at step 0 of a fresh run (e.g. the parameter count).
      best_metric: a record key (lower is better) whose best checkpoint is kept besides the last
        ``config.max_checkpoints``.
      desc: progress bar label.
      place: puts the state on the devices (default: replicated over ``mesh``); see
        :func:`restore_or_init`.
      run_fields: config fields that fix the state's structure (``{"num_seeds": 2}``): written
        with every checkpoint, and a resume with other values is refused with a
        ``ConfigError`` naming the field (``sympad.train.checkpoint.Checkpointer``).

    Returns:
      ``(state, record)``: the final state and the last record written ({} when the restored
      checkpoint was already at ``total_steps``).

    Raises:
      sympad.train.metrics.DivergenceError: a train metric is NaN/Inf; nothing after the last good
        checkpoint is saved.
      Preempted: SIGTERM/SIGINT arrived (multi-host: jax's preemption sync point was reached);
        the step's metrics were logged and its checkpoint saved first.
    """
    log_every = resolve_every(config.log_every, steps_per_epoch=steps_per_epoch, name="log_every")
    checkpoint_every = resolve_every(config.checkpoint_every, steps_per_epoch=steps_per_epoch, name="checkpoint_every")
    periods = [resolve_every(h.every, steps_per_epoch=steps_per_epoch, name=h.name) for h in hooks]
    limit, record = _StepLimit(config.get("step_limit_file", "")), {}
    # Every resource is closed on the way out, in reverse order, whatever happens in between.
    with contextlib.ExitStack() as resources, sympad.use_implementation(config.conv_implementation):
        run = _Run(resources, config, workdir, mesh=mesh, init_state=init_state, data=data, total_steps=total_steps,
                   best_metric=best_metric, desc=desc, place=place, run_fields=run_fields)
        if run.start == 0 and first_record:
            run.writer.write(0, dict(first_record))
        while run.step < total_steps:
            if (end := limit.end(total_steps, run.step)) != total_steps:  # only ever shortens
                total_steps = end
                run.progress.set_total(total_steps)
            step = run.dispatch()
            due = [hook for hook, every in zip(hooks, periods) if itstime(step, every, total_steps)]
            # Every process asks every step (the sync point's contract), even when it will not stop.
            stop = run.preemption.reached(step) and step < total_steps
            log_now = itstime(step, log_every, total_steps) or stop
            save_now = itstime(step, checkpoint_every, total_steps) or stop
            if not (due or log_now or save_now):
                run.progress.update(step)
                continue
            record = run.record(log=log_now, summarize=summarize, hooks=due)
            run.progress.update(step, **{k: record[k] for k in progress_keys if k in record})
            if save_now:
                run.save(record)
            if stop:
                raise run.preempted()
            run.resume_clock()
    return run.state, record

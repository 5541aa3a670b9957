"""The device run's pre-flight: what fails first on new hardware, found in a minute, before the plan runs.

``python -m paper.reproduce run ...`` (so ``bash paper/device/run.sh OUT``) runs :func:`preflight`
before its plan, on the entries the run starts first (:func:`paper.campaign.runner.first_batch`: the
first group's kinds). Everything runs at once, each check in a process of its own (the runner never
initializes JAX):

* every process's own train command (its config, its data, its seeds: the run's
  :func:`~paper.campaign.runner.trainers`) with
  ``--config.step_limit_file`` holding 1, in a scratch work directory: the carried wheels import,
  the data loads, the step compiles and runs one step on the device;
* the probe, ``python -m paper.reproduce probe`` (:func:`probe`): jax sees the accelerator that
  nvidia-smi lists, every carried wheel's modules import, and one batch goes through the feature
  network the scorer builds, from the carried Inception weights, giving finite features;
* here: free disk under the work root and free GPU memory (nvidia-smi).

Nothing is compiled twice: ``paper/device/run.sh`` gives every process one persistent compilation
cache (``JAX_COMPILATION_CACHE_DIR``), and the run's trainers and scorer, the same programs, load the
pre-flight's executables from it. The first failure stops the rest at once. The result is one
verdict line, ``[preflight] ok ...`` or ``[preflight] FAILED ...`` with the exception and the jax,
jaxlib, flax and Python versions; the run then stops before its plan starts. The time limit is
:data:`DEVICE_S` on a GPU; a CPU compiles the full-size models for minutes (:data:`CPU_S`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper.campaign import results as results_lib
from paper.campaign import runner
from paper.campaign.plan import Entry
from sympad.train import environment as renv

__all__ = ["CPU_S", "DEVICE_S", "MIN_FREE_DISK_BYTES", "MIN_FREE_GPU_SHARE", "PROBE_PREFIX", "PreflightError",
           "default_limit", "preflight", "probe", "wheel_modules"]

#: Seconds the pre-flight may take on a GPU (issue 29): a minute of a ~9-minute device session.
DEVICE_S = 60.0
#: Seconds on a CPU, where a full-size SNGAN step compiles in about a minute and runs for more.
CPU_S = 900.0
#: Free disk the run needs under its work root: the extracted and decoded CIFAR-10, the compilation
#: cache, a checkpoint and 10k samples per trainer (about 1.5 GB for a Table 4 group).
MIN_FREE_DISK_BYTES = 4 * 2**30
#: Share of each GPU's memory that must be free: a packed group gives 0.9 of it to its processes.
MIN_FREE_GPU_SHARE = 0.9
#: Prefix of the probe's one JSON line on stdout.
PROBE_PREFIX = "[preflight-probe] "
#: Steps each entry trains in the pre-flight.
STEPS = 1
#: Image size of the probe's feature batch: the CIFAR-10 samples' (the scorer's program).
PROBE_IMAGE_SIZE = 32
#: Seconds between looks at the pre-flight's processes.
POLL_S = 0.2
#: Characters of a failed process's output kept with the verdict.
LOG_TAIL_CHARS = 3000

_VERSIONS = (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("Python", "python"))


class PreflightError(Exception):
    """A check failed; the message says which and why; ``log``: the failed process's output."""

    def __init__(self, message: str, *, log: Path | None = None):
        super().__init__(message)
        self.log = log


def default_limit(*, gpu: bool) -> float:
    """:data:`DEVICE_S` with a GPU, :data:`CPU_S` without."""
    return DEVICE_S if gpu else CPU_S


def wheel_modules(wheel: Path) -> list[str]:
    """The top-level modules a wheel installs (its ``top_level.txt``, else its file names)."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        listed = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/top_level.txt")]
        if listed:
            return sorted({m.strip() for m in z.read(listed[0]).decode().splitlines() if m.strip()})
    tops = {n.split("/")[0] for n in names}
    return sorted(t.removesuffix(".py") for t in tops
                  if not t.endswith((".dist-info", ".data")) and (t.endswith(".py") or "." not in t))


def _versions_note() -> str:
    found = renv.versions()
    return ", ".join(f"{label} {found.get(key) or 'missing'}" for label, key in _VERSIONS)


# ----------------------------------------------------------------------------------------------
# The probe: its own process, with JAX.


def probe(*, network: Callable[[], tuple[Callable[[np.ndarray], np.ndarray], Mapping[str, Any]]] | None,
          batch: int, wheels: Sequence[Path], expect_gpu: bool) -> dict[str, Any]:
    """The device checks of the pre-flight (``python -m paper.reproduce probe`` runs it).

    Args:
      network: builds the scorer's feature network: ``() -> (features, identity)``, features
        mapping uint8 images (N, H, W, 3) to pool3 features (N, D); None when the run does not score.
      batch: images of the one feature batch (the scorer's batch size: the same compiled program).
      wheels: the carried wheels; each one's top-level modules must import.
      expect_gpu: nvidia-smi lists a GPU, so jax must see one.

    Returns:
      ``{'ok': True, 'devices', 'platform', 'modules', 'inception'}`` or ``{'ok': False, 'check',
      'error'}`` (one line each, JSON-able).
    """
    check = "jax"
    try:
        import jax

        devices = jax.devices()
        platform = devices[0].platform
        if expect_gpu and platform != "gpu":
            raise PreflightError(f"nvidia-smi lists a GPU but jax sees only {platform} devices ({devices}): "
                                 f"is this jaxlib built without CUDA?")
        summary: dict[str, Any] = {"ok": True, "platform": platform, "devices": len(devices),
                                   "device_kind": devices[0].device_kind}
        check = "carried wheels"
        modules = []
        for wheel in wheels:
            for module in wheel_modules(wheel):
                check = f"carried wheel {wheel.name}: import {module}"
                __import__(module)
                modules.append(module)
        summary["modules"] = modules
        if network is not None:
            check = "Inception weights"
            features, identity = network()
            check = "Inception batch"
            images = np.random.default_rng(0).integers(0, 256, (batch, PROBE_IMAGE_SIZE, PROBE_IMAGE_SIZE, 3),
                                                       dtype=np.uint8)
            feats = np.asarray(features(images))
            if feats.shape[0] != batch or not np.isfinite(feats).all():
                finite = bool(np.isfinite(feats).all())
                raise PreflightError(f"features of {batch} images are {feats.shape}, finite: {finite}")
            if np.ptp(feats, axis=0).max() == 0:
                raise PreflightError(f"every one of {batch} random images has the same features: broken weights")
            summary["inception"] = {"images": batch, "form": identity.get("form"),
                                    "sha256": identity.get("sha256"), "weights": identity.get("weights")}
        return summary
    except Exception as e:  # every failure is the verdict's, named by the check it stopped
        return {"ok": False, "check": check, "error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------------------------
# The orchestration: here, without JAX.


def _free_disk(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _last_error(log: Path) -> str:
    """The exception a failed process ended with (its last 'SomethingError: ...' line), else its last line."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()] if log.is_file() else []
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b.*", ln)]
    return (errors or lines or ["(no output)"])[-1][:600]


def _probe_result(log: Path) -> dict[str, Any] | None:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    found = [ln[len(PROBE_PREFIX):] for ln in lines if ln.startswith(PROBE_PREFIX)]
    return json.loads(found[-1]) if found else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def preflight(entries: Sequence[Entry], *, workroot: Path, data: str, probe_argv: Sequence[str],
              limit_s: float, seeds_per_process: int = 1, clock: Callable[[], float] = time.monotonic
              ) -> dict[str, Any]:
    """Runs the pre-flight of a run that starts with ``entries``; never raises for a failed check.

    Args:
      entries: what the run starts first (:func:`paper.campaign.runner.first_batch`); 'gan' and
        'classify' entries train one step, the others have nothing to compile here.
      workroot: the run's work root: the scratch directories go to ``workroot/preflight`` (removed
        when the checks pass) and free disk is measured there.
      data: the entries' dataset argument (``'folder:PATH'``) for ``'{cifar10}'``.
      probe_argv: the probe's command (``python -m paper.reproduce probe ...``).
      limit_s: seconds the checks may take (:func:`default_limit`).
      seeds_per_process: as the run trains them (:func:`paper.campaign.runner.trainers`): each
        process is checked with its seeds, the program the run compiles.
      clock: seconds (monotonic).

    Returns:
      ``{'ok', 'seconds', 'verdict' (the one line), 'entries', 'probe', 'disk_free_bytes', 'gpus'}``,
      with ``'failed'`` (which check), ``'error'`` and the failed process's ``'log_tail'`` when not ok.
    """
    start = clock()
    trained = runner.trainers([e for e in entries if e.suite in ("gan", "classify")],
                              seeds_per_process=seeds_per_process)
    summary: dict[str, Any] = {"ok": False, "limit_s": limit_s, "entries": [e.id for e in entries],
                               "trainers": [t.name for t in trained]}
    procs: dict[str, runner.Process] = {}
    scratch = workroot / "preflight"
    try:
        summary["disk_free_bytes"] = free = _free_disk(workroot)
        if free < MIN_FREE_DISK_BYTES:
            raise PreflightError(f"disk: {_gib(free)} free under {workroot}, the run needs {_gib(MIN_FREE_DISK_BYTES)}")
        found = runner.gpus()
        summary["gpus"] = [{"name": g.name, "memory_free_mib": g.memory_free_mib,
                            "memory_total_mib": g.memory_total_mib} for g in found]
        for g in found:
            if g.memory_free_mib < MIN_FREE_GPU_SHARE * g.memory_total_mib:
                raise PreflightError(f"GPU memory: {g.name} has {g.memory_free_mib} of {g.memory_total_mib} MiB free "
                                     f"(another process holds it?); the run needs {MIN_FREE_GPU_SHARE:.0%}")
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        env = runner.group_env(len(trained))
        for t in trained:
            workdir = scratch / t.name
            workdir.mkdir()
            (workdir / "step_limit").write_text(f"{STEPS}\n", encoding="utf-8")
            train = runner.entry_commands(t.entry, workdir=workdir, data=data)[0]
            procs[t.name] = runner.Process([*train, f"--config.step_limit_file={workdir / 'step_limit'}"],
                                         log=workdir / "log.txt", env=env, clock=clock)
        procs["probe"] = runner.Process(probe_argv, log=scratch / "probe.log",
                                        env={**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, clock=clock)
        seconds: dict[str, float] = {}
        while len(seconds) < len(procs):
            for name, proc in procs.items():
                if name in seconds or (rc := proc.poll()) is None:
                    continue
                seconds[name] = round(proc.seconds, 1)
                log = scratch / "probe.log" if name == "probe" else scratch / name / "log.txt"
                if name == "probe":
                    result = _probe_result(log)
                    if result is None or not result.get("ok"):
                        what = result or {"check": "probe", "error": f"exit {rc}: {_last_error(log)}"}
                        raise PreflightError(f"{what['check']}: {what['error']}", log=log)
                    summary["probe"] = result
                elif rc != 0:
                    raise PreflightError(f"{name}: its train step failed (exit {rc}): {_last_error(log)}", log=log)
                else:
                    steps = max((int(r.get("step", 0)) for r in results_lib.read(scratch / name / "metrics.jsonl")),
                                default=0)
                    if steps < STEPS:
                        raise PreflightError(f"{name}: exited 0 at step {steps}, not after {STEPS}", log=log)
            if clock() - start > limit_s:
                running = sorted(set(procs) - set(seconds))
                raise PreflightError(f"time: not done in {limit_s:.0f} s (still running: {', '.join(running)}); "
                                     "a slow device may need --preflight_s")
            time.sleep(POLL_S)
        summary.update(ok=True, seconds_each=seconds)
    except (PreflightError, OSError) as e:
        summary.update(failed=str(e).split(":", 1)[0], error=str(e))
        log = getattr(e, "log", None)
        if log is not None and log.is_file():  # only OUT comes back from the device: the output too
            summary["log_tail"] = log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
    finally:
        for proc in procs.values():
            proc.kill()  # scratch runs: nothing to save, and a compiling process hears no SIGTERM
    summary["seconds"] = round(clock() - start, 1)
    if summary["ok"]:
        shutil.rmtree(scratch, ignore_errors=True)
    summary["verdict"] = _verdict(summary)
    return summary


def _verdict(s: Mapping[str, Any]) -> str:
    if not s["ok"]:
        return f"[preflight] FAILED after {s['seconds']:.0f} s: {s['error']} ({_versions_note()})"
    p = s.get("probe", {})
    parts = [f"jax sees {p.get('devices')} {p.get('platform')} device(s) ({p.get('device_kind')})"]
    if p.get("modules"):
        parts.append(f"carried {', '.join(p['modules'])} import")
    trained = [i for i in s.get("trainers", s["entries"]) if i in s.get("seconds_each", {})]
    if trained:
        what = f"{len(trained)} entries" if len(trained) == len(s["entries"]) else (
            f"{len(trained)} processes ({len(s['entries'])} entries)")
        parts.append(f"{what} compiled and ran {STEPS} step ({', '.join(trained)})")
    if p.get("inception"):
        inc = p["inception"]
        parts.append(f"Inception ({inc['form']}, {str(inc['sha256'])[:12]}) scored {inc['images']} images")
    parts.append(f"disk {_gib(s['disk_free_bytes'])} free")
    for g in s.get("gpus", []):
        parts.append(f"{g['name']} {g['memory_free_mib'] / 1024:.1f} of {g['memory_total_mib'] / 1024:.1f} GiB free")
    return f"[preflight] ok in {s['seconds']:.0f} s: " + "; ".join(parts)

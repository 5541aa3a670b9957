"""SIGTERM / SIGINT during a real training run: checkpoint of the current step, clean exit, exact resume.

A real ``python -m gan.main`` (runlocal digits) is signalled once it has logged a few steps. It
must exit with ``loop.PREEMPTED_EXIT_CODE`` leaving a checkpoint of the step it stopped at (no
periodic checkpoint is due before the end), and the same command resumed from there must log
the same losses as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import jax.numpy as jnp
import pytest

from sympad.train import loop
from tests.train import multiprocess as mp

GAN = ["gan.main", "--config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal",
       "--config.log_every=1", "--config.checkpoint_every=0", "--config.sample_every=0",
       "--config.digits_quality_samples=0", "--config.max_examples=256"]
TIMEOUT = 420


def _logged_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _signal_run(workdir: Path, signum: int, *, after_step: int) -> tuple[int, float]:
    """Starts a long run, sends ``signum`` once ``after_step`` is logged; (exit code, seconds to exit)."""
    procs = mp.start([*GAN, "--config.num_train_steps=1000", f"--workdir={workdir}"], processes=1,
                     devices_per_process=1, logdir=workdir / "logs")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(s >= after_step for s in _logged_steps(workdir)):
            assert procs[0].poll() is None, f"exited early\n{mp.tails(workdir / 'logs')}"
            assert time.monotonic() < deadline, f"no step {after_step} in time\n{mp.tails(workdir / 'logs')}"
            time.sleep(0.2)
        sent = time.monotonic()
        procs[0].send_signal(signum)
        code = procs[0].wait(timeout=300)
        return code, time.monotonic() - sent
    finally:
        mp.kill(procs)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_current_step_and_resume_is_exact(tmp_path, signum):
    work = tmp_path / "preempted"
    code, seconds = _signal_run(work, signum, after_step=2)
    logs = mp.tails(work / "logs")
    assert code == loop.PREEMPTED_EXIT_CODE, logs
    stopped = max(_logged_steps(work))
    # Prompt, by steps rather than seconds (load stretches both the steps and the exit): it stops
    # near the step it was signalled at, not at the 1000th. The time bound only catches a hang.
    assert stopped < 100 and seconds < 240, (stopped, seconds, logs)
    assert mp.checkpoint_steps(work) == [stopped], logs  # the step in progress, nothing else due
    assert "rerun the same command to resume" in logs
    if signum != signal.SIGTERM:
        return  # resume is the same for both signals; checked once (each run costs a compile)

    end = stopped + 2
    resumed, straight = work, tmp_path / "straight"
    for workdir in (resumed, straight):
        mp.run([*GAN, f"--config.num_train_steps={end}", f"--workdir={workdir}"], processes=1,
               devices_per_process=1, logdir=workdir / f"logs_{end}", timeout=TIMEOUT)
    got, want = mp.records(resumed), mp.records(straight)
    for step in range(1, end + 1):
        for key in ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm"):
            assert got[step][key] == want[step][key], (step, key)
    assert mp.checkpoint_steps(resumed) == [stopped, end]


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step(tmp_path):
    """SIGTERM to one of 2 processes: jax's preemption sync point stops both at one step, one checkpoint."""
    work = tmp_path / "two"
    procs = mp.start([*GAN, "--config.num_train_steps=1000", f"--workdir={work}"], processes=2,
                     devices_per_process=1, logdir=work / "logs")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(s >= 2 for s in _logged_steps(work)):
            assert all(p.poll() is None for p in procs), mp.tails(work / "logs")
            assert time.monotonic() < deadline, mp.tails(work / "logs")
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=300) for p in procs]  # a loaded machine is slow, not hung
    finally:
        mp.kill(procs)
    logs = mp.tails(work / "logs")
    assert codes == [loop.PREEMPTED_EXIT_CODE] * 2, logs
    stopped = max(_logged_steps(work))
    assert mp.checkpoint_steps(work) == [stopped], logs
    assert logs.count("rerun the same command to resume") == 2, logs


def test_preempted_is_a_clean_exit_with_its_status():
    e = loop.Preempted(7, signal.SIGTERM)
    assert isinstance(e, SystemExit) and e.code == loop.PREEMPTED_EXIT_CODE == 75
    assert "SIGTERM" in str(e) and "step 7" in str(e)


def test_watch_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with loop._PreemptionWatch() as watch:
        watch.dispatched({"loss": jnp.float32(1.0)})  # a finished step: the signal waits to save it
        assert not watch.reached(1)
        signal.raise_signal(signal.SIGTERM)  # would end pytest without the watch's handler
        deadline = time.monotonic() + 10
        while not watch.reached(2) and time.monotonic() < deadline:  # the watcher thread sets it
            time.sleep(0.01)
        assert watch.reached(2) and watch.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before

"""SIGTERM / SIGINT while a step is slow: nothing to save ends the process at once; a second signal always does.

A fake suite runs the shared loop in a subprocess with a step that blocks (as a first step
compiling, or running for minutes on a CPU, does): the signal must not wait for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sympad.train import loop

REPO = Path(__file__).resolve().parents[2]

# Steps from SLOW on block for ten minutes (a Python sleep: signal handlers still run, the step does not end).
_RUN = '''
import sys, time
import flax, jax, jax.numpy as jnp, ml_collections, numpy as np
from sympad.train import data as sdata, loop
from sympad.train.config import add_loop_fields

workdir, slow = sys.argv[1], int(sys.argv[2])

@flax.struct.dataclass
class State:
    step: jax.Array

class Loader:
    def close(self):
        pass

def step(state, loader):
    n = int(state.step) + 1
    if n >= slow:
        print(f"step {n} is slow", flush=True)
        time.sleep(600)
    return State(step=state.step + 1), {"loss": jnp.float32(n)}

dataset = sdata.Dataset(images=np.zeros((8, 2, 2, 3), np.uint8), labels=None, num_classes=None, name="fake")
data = loop.Input(dataset=dataset, device_step=None, host_loader=lambda start: Loader(), host_step=step)
config = add_loop_fields(ml_collections.ConfigDict(), log_every=1, checkpoint_every=0, host_data=True)
loop.train(config, workdir, mesh=loop.checked_mesh(1), init_state=lambda: State(step=jnp.zeros((), jnp.int32)),
           data=data, total_steps=100)
'''


def _start(tmp_path: Path, slow: int) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_RUN))
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(slow)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _wait_for_slow_step(proc: subprocess.Popen, step: int) -> None:
    line = proc.stdout.readline()  # blocks until the run prints it (or ends)
    assert line.strip() == f"step {step} is slow", line + proc.communicate(timeout=60)[1][-3000:]


def _exit(proc: subprocess.Popen, timeout: float = 15) -> tuple[int, float, str]:
    start = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, time.monotonic() - start, stderr


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_in_the_first_step_ends_at_once(tmp_path, signum):
    proc = _start(tmp_path, slow=1)
    _wait_for_slow_step(proc, 1)
    proc.send_signal(signum)
    code, seconds, stderr = _exit(proc)
    assert code == loop.PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert seconds < 10, stderr[-3000:]
    assert "nothing to save" in stderr and "rerun the same command to resume" in stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))


@pytest.mark.integration
def test_second_signal_ends_a_run_waiting_for_its_step(tmp_path):
    proc = _start(tmp_path, slow=3)  # steps 1 and 2 finish: the first signal waits to save after step 3
    _wait_for_slow_step(proc, 3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]  # waiting for the step in flight, to save it
    proc.send_signal(signal.SIGINT)
    code, seconds, stderr = _exit(proc)
    assert code == loop.PREEMPTED_EXIT_CODE and seconds < 10, stderr[-3000:]
    assert "second signal" in stderr, stderr[-3000:]


@pytest.mark.integration
def test_gan_run_signalled_while_compiling_ends_at_once(tmp_path, monkeypatch):
    """The issue's case: a real run resumed from step 2 and signalled while it compiles its step."""
    from tests.train import multiprocess as mp

    # A real compile: the test run's compilation cache (tests/conftest.py) would load the step.
    monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "false")

    gan = ["gan.main", "--config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal",
           "--config.log_every=1", "--config.sample_every=0", "--config.digits_quality_samples=0",
           "--config.max_examples=256", f"--workdir={tmp_path / 'run'}"]
    mp.run([*gan, "--config.num_train_steps=2"], processes=1, devices_per_process=1, logdir=tmp_path / "first",
           timeout=420)
    logdir = tmp_path / "logs"
    procs = mp.start([*gan, "--config.num_train_steps=1000"], processes=1, devices_per_process=1, logdir=logdir)
    try:
        deadline = time.monotonic() + 300
        while "Resuming from" not in mp.tails(logdir, lines=1000):  # restored: the step compiles next
            assert procs[0].poll() is None and time.monotonic() < deadline, mp.tails(logdir)
            time.sleep(0.1)
        procs[0].send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = procs[0].wait(timeout=60)
        seconds = time.monotonic() - start
    finally:
        mp.kill(procs)
    logs = mp.tails(logdir)
    assert code == loop.PREEMPTED_EXIT_CODE and seconds < 15, (seconds, logs)
    assert "nothing to save" in logs and "the checkpoint of step 2" in logs, logs
    assert mp.checkpoint_steps(tmp_path / "run") == [2], logs

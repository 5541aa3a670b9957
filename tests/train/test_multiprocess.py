"""Both suites as 2 real JAX processes (gloo, 1 CPU device each) equal 1 process with 2 devices.

Each run is a real ``python -m <suite>.main`` (tests/train/multiprocess.py starts, bounds and
kills them). Compared: every logged loss within 1e-5 relative, the same checkpoint steps, only
process 0 writing metrics/samples, and checkpoints restorable by the other process count
(2 save -> 1 resumes, 1 saves -> 2 resume), which must then train on exactly as the reference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.train import multiprocess as mp

pytestmark = pytest.mark.slow  # real processes: minutes on a 2-core machine

TIMEOUT = 420  # s per run: a 2-core CI machine compiles each program once per process

GAN = ["gan.main", "--config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal",
       "--config.log_every=1", "--config.checkpoint_every=2", "--config.sample_every=2",
       "--config.digits_quality_samples=64", "--config.max_examples=256"]
CLASSIFY = ["classify.main", "--config=configs/classify/resnet_cifar.py:kernel=C2sp,runlocal",
            "--config.log_every=1", "--config.checkpoint_every=2", "--config.eval_every=2"]


def _run(argv: list[str], workdir: Path, steps: int, *, processes: int) -> None:
    devices = 2 if processes == 1 else 1
    mp.run([*argv, f"--config.num_train_steps={steps}", f"--workdir={workdir}"], processes=processes,
           devices_per_process=devices, logdir=workdir / f"logs_{processes}p_{steps}", timeout=TIMEOUT)


def _assert_same_losses(got: Path, want: Path, keys: tuple[str, ...], steps: range) -> None:
    a, b = mp.records(got), mp.records(want)
    compared = set()
    for step in steps:
        for key in keys:
            if key in b[step] or key in a[step]:  # evaluations and scores only at their steps
                np.testing.assert_allclose(a[step][key], b[step][key], rtol=1e-5, err_msg=f"step {step} {key}")
                compared.add(key)
    assert compared == set(keys), f"never logged in steps {steps}: {set(keys) - compared}"


def _check_suite(tmp_path: Path, argv: list[str], keys: tuple[str, ...], *, cross: bool) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run(argv, one, 3, processes=1)
    _run(argv, two, 3, processes=2)
    _assert_same_losses(two, one, keys, range(1, 4))
    assert mp.checkpoint_steps(two) == mp.checkpoint_steps(one) == [2, 3]
    # Written once (by process 0): one line per step, not two.
    def lines(workdir):
        return len((workdir / "metrics.jsonl").read_text().splitlines())

    assert lines(two) == lines(one)
    if not cross:
        return
    # Cross-count restore: the checkpoints of step 3 go to the other process count and train on.
    # The restore checks every leaf against the sha256 written with it (exact), and the steps
    # after it must equal those of the reference that resumes its own checkpoint.
    two_to_one, one_to_two = tmp_path / "two_to_one", tmp_path / "one_to_two"
    shutil.copytree(two, two_to_one)
    shutil.copytree(one, one_to_two)
    _run(argv, one, 5, processes=1)
    _run(argv, two_to_one, 5, processes=1)
    _run(argv, one_to_two, 5, processes=2)
    _assert_same_losses(two_to_one, one, keys, range(4, 6))
    _assert_same_losses(one_to_two, one, keys, range(4, 6))
    assert mp.checkpoint_steps(two_to_one) == mp.checkpoint_steps(one_to_two) == mp.checkpoint_steps(one)


def test_gan_two_processes_equal_two_devices(tmp_path):
    _check_suite(tmp_path, GAN, ("d_loss", "g_loss", "digits/mean_top_prob"), cross=True)
    grids = sorted(p.name for p in (tmp_path / "two").glob("samples_*.png"))
    assert grids == ["samples_0000002.png", "samples_0000003.png"]
    for name in grids:  # generated across both processes, written once, the same pixels
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_classify_two_processes_equal_two_devices(tmp_path):
    _check_suite(tmp_path, CLASSIFY, ("train_loss", "test_loss", "test_error"), cross=False)


def test_launcher_kills_hung_processes(tmp_path):
    """A run that does not finish in time is killed (both processes) and reported."""
    with pytest.raises(AssertionError, match="timed out"):
        mp.run(["http.server", "0", "--bind", "127.0.0.1"], processes=2, devices_per_process=1,
               logdir=tmp_path, timeout=2)

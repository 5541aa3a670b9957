"""The GAN suite's trained run, made once per test run and shared (read-only) by its tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import shared
from tests.gan.tiny import CONFIG_FILE, TINY


def _train_tiny_run(folder: Path) -> None:
    from gan import train
    from sympad.train.config import run_main

    config_file = folder / "tiny_gan.py"
    config_file.write_text(CONFIG_FILE.replace("{tiny!r}", repr(TINY)))
    run_main(train.train_and_evaluate, argv=["gan.main", f"--config={config_file}", f"--workdir={folder / 'run'}",
                                             "--config.sample_every=1"])


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> Path:
    """gan.main end to end (run_main with a config file), 2 steps on synthetic data, samples every step.

    Shared by every test that needs a trained run: a test that changes it works on a copy.
    """
    return shared.build_once(tmp_path_factory, "gan_run", _train_tiny_run) / "run"

"""Every command turns a user's mistake into one ``error: ...`` line and exit status 2.

Each case runs a command as a real subprocess (``python -m <module> ...``) with one bad input
that fails during validation, before any data is loaded or anything compiled, and checks: status
2, no traceback, exactly one stderr line starting with ``error: `` and that line naming the
offending flag or config field.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GAN = "--config=configs/gan/sngan_cifar10.py:runlocal"
CLASSIFY = "--config=configs/classify/resnet_cifar.py:runlocal"


def case(name: str, module: str, args: list[str], needle: str) -> object:
    return pytest.param(module, args, needle, id=name)


# (id, module, args, text the error line must contain); {tmp} is a fresh empty directory.
CASES = [
    case("gan.main-negative-batch", "gan.main", [GAN, "--workdir={tmp}/w", "--config.batch_size=-3"],
     "config.batch_size"),
    case("gan.main-unknown-field", "gan.main", [GAN, "--workdir={tmp}/w", "--config.optimizer.nope=1"],
     "--config.optimizer.nope"),
    case("gan.main-bad-config-arg", "gan.main", [GAN + ",bogus", "--workdir={tmp}/w"], "'bogus'"),
    case("gan.main-missing-config-file", "gan.main", ["--config=configs/gan/missing.py", "--workdir={tmp}/w"],
     "--config=configs/gan/missing.py"),
    case("gan.main-wrong-type", "gan.main", [GAN, "--workdir={tmp}/w", "--config.n_critic=abc"], "--config.n_critic"),
    case("gan.main-n_critic", "gan.main", [GAN, "--workdir={tmp}/w", "--config.n_critic=0"], "config.n_critic"),
    case("gan.main-ema", "gan.main", [GAN, "--workdir={tmp}/w", "--config.ema_decay=1.0"], "config.ema_decay"),
    case("gan.main-missing-folder", "gan.main", [GAN, "--workdir={tmp}/w", "--config.data=folder:{tmp}/none"],
     "config.data"),
    case("gan.main-corrupt-images", "gan.main", [GAN, "--workdir={tmp}/w", "--config.data=folder:{tmp}/junk"],
     "config.allow_corrupt"),
    case("gan.main-resume_corrupt", "gan.main", [GAN, "--workdir={tmp}/w", "--config.resume_corrupt=skip"],
     "config.resume_corrupt"),
    case("gan.main-no-workdir", "gan.main", [GAN], "--workdir"),
    case("gan.sample-not-a-run", "gan.sample", ["--workdir={tmp}"], "config.json"),
    case("gan.sample-num", "gan.sample", ["--workdir={tmp}", "--num=0"], "--num"),
    case("gan.sample-unknown-flag", "gan.sample", ["--workdir={tmp}", "--nmu=3"], "nmu"),
    case("gan.export-platforms", "gan.export", ["--workdir={tmp}", "--platforms=gpu"], "--platforms"),
    case("classify.main-momentum", "classify.main", [CLASSIFY, "--workdir={tmp}/w", "--config.optimizer.momentum=1.5"],
     "config.optimizer.momentum"),
    case("classify.main-model", "classify.main", [CLASSIFY, "--workdir={tmp}/w", "--config.model.name=nope"],
     "config.model.name"),
    case("classify.profile-steps", "classify.profile", [CLASSIFY, "--steps=0"], "--steps"),
    case("classify.profile-config", "classify.profile", [CLASSIFY, "--config.optimizer.schedule=step"],
     "config.optimizer.schedule"),
    case("paper.analysis-inits", "paper.analysis", ["shift", "--out={tmp}/a", "--inits=0"], "--inits"),
    case("paper.analysis-command", "paper.analysis", ["shfit", "--out={tmp}/a"], "shfit"),
    case("gan.evaluate-no-input", "gan.evaluate", [], "--workdir"),
    case("gan.evaluate-missing-samples", "gan.evaluate", ["--samples={tmp}/none.npz"], "none.npz"),
    case("paper.reproduce-budget", "paper.reproduce", ["--budget=nope", "--out={tmp}/r"], "--budget"),
    case("benchmarks.conv-kinds", "benchmarks.conv", ["--tiny", "--kinds=C9x"], "C9x"),
    case("benchmarks.models-kinds", "benchmarks.models", ["--tiny", "--kinds=C9x"], "C9x"),
    case("benchmarks.all-kinds", "benchmarks.all", ["--out={tmp}/b", "--kinds=C9x"], "C9x"),
]


def _run(module: str, args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp / "junk").mkdir(exist_ok=True)
    (tmp / "junk" / "a.png").write_bytes(b"not a png")  # for the corrupt-images case
    environ = {k: v for k, v in os.environ.items() if k != "SYMPAD_TRACEBACK"}
    environ.update(JAX_PLATFORMS="cpu", **env)
    argv = [a.replace("{tmp}", str(tmp)) for a in args]
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300, check=False)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "args", "needle"), CASES)
def test_one_error_line_and_status_2(tmp_path, module, args, needle):
    result = _run(module, args, tmp_path)
    errors = _error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert needle in errors[0], errors[0]


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.slow
def test_traceback_on_request(tmp_path):
    result = _run("gan.main", [GAN, "--workdir={tmp}/w", "--config.batch_size=-3"], tmp_path, SYMPAD_TRACEBACK="1")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "validate" in result.stderr
    assert _error_lines(result.stderr)[-1].startswith("error: config.batch_size=-3")

"""Checkpointer recovery: falling back past corrupt steps (opt-in) and failed saves losing nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from sympad.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
)

REPO = Path(__file__).resolve().parents[2]
_TEMPLATE = {"w": jnp.zeros((32, 32)), "step": jnp.int32(0)}


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"w": jnp.asarray(rng.normal(size=(32, 32)), jnp.float32), "step": jnp.int32(step)}


def _save_steps(directory: Path, steps, **kwargs) -> None:
    with Checkpointer(directory, max_to_keep=10, **kwargs) as ckpt:
        for step in steps:
            ckpt.save(step, _state(step))


def _flip_byte(step_dir: Path) -> None:
    """Damages the array data of a step the way a bad disk would: one flipped byte."""
    path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _assert_state(state: dict, step: int) -> None:
    want = _state(step)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(want["w"]))
    assert int(state["step"]) == step


def _tree_digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# on_corrupt='fall_back'


def test_default_still_raises_and_moves_nothing(tmp_path):
    _save_steps(tmp_path, [1, 2, 3])
    _flip_byte(tmp_path / "3")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CorruptCheckpointError) as info:
            ckpt.restore(_TEMPLATE)
        assert str(tmp_path / "3") in str(info.value) and "on_corrupt='fall_back'" in str(info.value)
        assert ckpt.all_steps() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1", "2", "3"]


def test_fall_back_sets_corrupt_steps_aside_and_resumes_from_newest_intact(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2, 3, 4])
    _flip_byte(tmp_path / "4")
    (tmp_path / "3" / "manifest" / "metadata").write_text("{")  # a second kind of damage
    damaged = {step: _tree_digest(tmp_path / str(step)) for step in (3, 4)}

    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, max_to_keep=10, on_corrupt="fall_back") as ckpt:
        step, state = ckpt.restore(_TEMPLATE)
        assert step == 2
        _assert_state(state, 2)
        assert ckpt.all_steps() == [1, 2]
        # Training goes on from step 2 and saves steps 3 and 4 again: no clash with the set-aside ones.
        ckpt.save(3, _state(30))
        ckpt.save(4, _state(40))
        assert ckpt.all_steps() == [1, 2, 3, 4]

    for step in (3, 4):
        aside = tmp_path / f"{step}.corrupt"
        assert _tree_digest(aside) == damaged[step]  # kept byte for byte, never deleted
        assert f"{tmp_path / str(step)}" in caplog.text and str(aside) in caplog.text
    assert "Resuming from step 2" in caplog.text

    # The next restart restores the new step 4; a second corruption of step 4 gets a fresh name.
    with Checkpointer(tmp_path, max_to_keep=10, on_corrupt="fall_back") as ckpt:
        step, state = ckpt.restore(_TEMPLATE)
        assert step == 4
        np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(40)["w"]))
    _flip_byte(tmp_path / "4")
    with Checkpointer(tmp_path, max_to_keep=10, on_corrupt="fall_back") as ckpt:
        assert ckpt.restore(_TEMPLATE)[0] == 3
    assert (tmp_path / "4.corrupt-2").is_dir() and (tmp_path / "4.corrupt").is_dir()


def test_fall_back_never_applies_to_a_template_mismatch(tmp_path):
    _save_steps(tmp_path, [1, 2])
    with Checkpointer(tmp_path, on_corrupt="fall_back") as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore({"w": jnp.zeros((32, 31)), "step": jnp.int32(0)})
        assert not isinstance(info.value, CorruptCheckpointError)
        assert "does not match" in str(info.value)
        assert ckpt.all_steps() == [1, 2]
    assert not list(tmp_path.glob("*.corrupt*"))


def test_fall_back_with_explicit_step_raises(tmp_path):
    _save_steps(tmp_path, [1, 2])
    _flip_byte(tmp_path / "2")
    with Checkpointer(tmp_path, on_corrupt="fall_back") as ckpt:
        with pytest.raises(CorruptCheckpointError, match="step=1"):
            ckpt.restore(_TEMPLATE, step=2)
        assert ckpt.all_steps() == [1, 2]


def test_fall_back_all_corrupt_raises_after_setting_all_aside(tmp_path):
    _save_steps(tmp_path, [1, 2])
    _flip_byte(tmp_path / "1")
    _flip_byte(tmp_path / "2")
    with Checkpointer(tmp_path, on_corrupt="fall_back") as ckpt:
        with pytest.raises(CorruptCheckpointError, match=r"every checkpoint .* is corrupt \(steps \[1, 2\]\)") as info:
            ckpt.restore(_TEMPLATE)
        assert str(tmp_path / "1.corrupt") in str(info.value) and str(tmp_path / "2.corrupt") in str(info.value)
        assert ckpt.all_steps() == []
        assert ckpt.restore(_TEMPLATE) is None  # a rerun starts fresh, with the damaged steps kept aside
    assert (tmp_path / "1.corrupt").is_dir() and (tmp_path / "2.corrupt").is_dir()


def test_fall_back_read_only_skips_without_moving(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2])
    _flip_byte(tmp_path / "2")
    before = _tree_digest(tmp_path)
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, on_corrupt="fall_back", read_only=True) as ckpt:
        step, state = ckpt.restore(_TEMPLATE)
        assert step == 1
        _assert_state(state, 1)
    assert _tree_digest(tmp_path) == before
    assert "leaving it in place (read_only)" in caplog.text


def test_on_corrupt_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"on_corrupt must be one of \('raise', 'fall_back'\), got 'skip'"):
        Checkpointer(tmp_path, on_corrupt="skip")


# ----------------------------------------------------------------------------------------------
# Failed saves


def _fail_commit(monkeypatch, error: OSError) -> None:
    """Makes orbax's final rename of '<step>.orbax-checkpoint-tmp' to '<step>' fail."""
    from orbax.checkpoint._src.path import async_path

    async def rename(src, dst):
        raise error

    monkeypatch.setattr(async_path, "rename", rename)


@pytest.mark.parametrize(
    "error, cause, advice",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (errno 28)",
         "Free space on the file system"),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied (errno 13)", "writable"),
    ],
    ids=["disk-full", "permission"],
)
def test_failed_save_keeps_every_earlier_checkpoint(tmp_path, monkeypatch, error, cause, advice):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(1, _state(1))
    ckpt.save(2, _state(2))
    before = {step: _tree_digest(tmp_path / str(step)) for step in (1, 2)}

    _fail_commit(monkeypatch, error)
    with pytest.raises(CheckpointError) as info:
        ckpt.save(3, _state(3))  # with max_to_keep=2 a successful save would prune step 1
    message = str(info.value)
    assert str(tmp_path / "3") in message and cause in message and advice in message
    assert "steps [1, 2] are intact" in message and "resume from step 2" in message
    monkeypatch.undo()

    assert ckpt.all_steps() == [1, 2] and not (tmp_path / "3").exists()
    assert {step: _tree_digest(tmp_path / str(step)) for step in (1, 2)} == before
    step, state = ckpt.restore(_TEMPLATE)
    assert step == 2
    _assert_state(state, 2)

    # Once the cause is fixed the same Checkpointer saves again and prunes as usual.
    assert ckpt.save(3, _state(3))
    assert ckpt.all_steps() == [2, 3]
    _assert_state(ckpt.restore(_TEMPLATE)[1], 3)
    ckpt.close()


_REAL_WRITE_FAILURE = """
import json, os, resource, signal, sys
import numpy as np, jax.numpy as jnp
from sympad.train.checkpoint import CheckpointError, Checkpointer

directory = sys.argv[1]
state = lambda step: {"w": jnp.asarray(np.random.default_rng(step).normal(size=(256, 256)), jnp.float32)}
ckpt = Checkpointer(directory, max_to_keep=2)
ckpt.save(1, state(1))
ckpt.save(2, state(2))
# From here on no file may grow past 16 KiB (a 256 KB array file must): the kernel refuses the
# write with EFBIG, as it would refuse one on a full disk with ENOSPC. Works as root, unlike chmod.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
try:
    ckpt.save(3, state(3))
    out = {"raised": None}
except CheckpointError as e:
    out = {"raised": str(e)}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["steps"] = ckpt.all_steps()
step, restored = ckpt.restore({"w": jnp.zeros((256, 256))})
out["restored_step"] = step
out["restored_ok"] = bool(np.array_equal(np.asarray(restored["w"]), np.asarray(state(2)["w"])))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs RLIMIT_FSIZE (Linux)")
def test_real_write_failure_in_a_subprocess(tmp_path):
    """A genuine failed write() in tensorstore, not a mock: the error names path and cause."""
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(_REAL_WRITE_FAILURE))
    env = {k: v for k, v in os.environ.items() if k != "SYMPAD_TRACEBACK"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu")
    directory = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, str(script), str(directory)], check=False, capture_output=True, text=True,
                            env=env, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["raised"] is not None, "the save should have failed"
    assert str(directory / "3") in out["raised"] and "File too large (errno 27)" in out["raised"]
    assert "steps [1, 2] are intact" in out["raised"]
    assert out["steps"] == [1, 2] and out["restored_step"] == 2 and out["restored_ok"]
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1", "2"]
    # orbax logs the failure from its writer thread (logging.exception): the message stays, the
    # traceback does not, so the command's own error line is not buried.
    assert "Traceback" not in result.stderr

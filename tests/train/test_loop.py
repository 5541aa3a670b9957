"""The shared training loop on a tiny fake suite: cadence, resume, data placement, NaN guard, cleanup."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sympad
from sympad.train import data as sdata
from sympad.train import loop
from sympad.train.checkpoint import Checkpointer
from sympad.train.config import add_loop_fields
from sympad.train.errors import ConfigError
from sympad.train.metrics import DivergenceError

BATCH = 4
KEY = jax.random.key(7)


@flax.struct.dataclass
class State:
    step: jax.Array
    w: jax.Array


def _dataset(n: int = 24) -> sdata.Dataset:
    images = np.random.default_rng(0).integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    return sdata.Dataset(images=images, labels=None, num_classes=None, name="fake")


def _update(state: State, batch: jax.Array, nan_at: int) -> tuple[State, dict[str, jax.Array]]:
    # A toy "optimizer": w moves toward each batch's mean; the loss is the distance it moved.
    target = jnp.mean(batch, axis=0)
    w = 0.5 * state.w + 0.5 * target
    loss = jnp.sum((w - state.w) ** 2)
    loss = jnp.where(state.step + 1 == nan_at, jnp.nan, loss)  # step numbers count from 1
    return State(step=state.step + 1, w=w), {"loss": loss, "w_sum": jnp.sum(w)}


def _input(dataset: sdata.Dataset, *, nan_at: int = -1, seen: list | None = None) -> loop.Input:
    @jax.jit
    def device_step(state, images):
        if seen is not None:  # runs while tracing: which C*sp formulation is in force then
            seen.append(sympad.choose_implementation(jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32),
                                                     jax.ShapeDtypeStruct((2, 2, 64, 64), jnp.float32)))
        batch, _ = sdata.get_batch(images, None, KEY, state.step, batch_size=BATCH)
        return _update(state, batch, nan_at)

    @jax.jit
    def batch_step(state, batch):
        return _update(state, sdata.to_float(batch), nan_at)

    return loop.Input(
        dataset=dataset,
        device_step=device_step,
        host_loader=lambda start: sdata.HostLoader(dataset.images, None, batch_size=BATCH, key=KEY, start_step=start),
        host_step=lambda state, loader: batch_step(state, next(loader)[0]),
    )


def _config(**loop_fields) -> ml_collections.ConfigDict:
    fields = dict(log_every=1, checkpoint_every=2, max_checkpoints=10)
    fields.update(loop_fields)
    return add_loop_fields(ml_collections.ConfigDict(), **fields)


def _init() -> State:
    return State(step=jnp.zeros((), jnp.int32), w=jnp.zeros((2, 2, 3), jnp.float32))


def _train(workdir, total, config=None, **kwargs):
    kwargs.setdefault("data", _input(_dataset()))
    return loop.train(config or _config(), workdir, mesh=loop.checked_mesh(BATCH), init_state=_init,
                      total_steps=total, **kwargs)


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# ----------------------------------------------------------------------------------------------
# Cadence


@pytest.mark.parametrize("every, total, due", [
    (2, 7, [2, 4, 6, 7]),
    (3, 9, [3, 6, 9]),
    (0, 5, [5]),  # 0: only at the end
    (10, 4, [4]),
    (1, 3, [1, 2, 3]),
])
def test_itstime(every, total, due):
    assert [s for s in range(1, total + 1) if loop.itstime(s, every, total)] == due
    assert [s for s in range(1, total + 1) if loop.itstime(s, every, total, last=False)] == [
        s for s in due if every > 0 and s % every == 0]


def test_resolve_every():
    assert loop.resolve_every(5, steps_per_epoch=16, name="log_every") == 5
    assert loop.resolve_every(0, steps_per_epoch=None, name="log_every") == 0
    assert loop.resolve_every(-2, steps_per_epoch=16, name="eval_every") == 32  # every 2 epochs
    with pytest.raises(ConfigError, match="config.eval_every.*epoch"):
        loop.resolve_every(-1, steps_per_epoch=None, name="eval_every")
    with pytest.raises(ConfigError, match="config.log_every"):
        loop.resolve_every(2.5, steps_per_epoch=4, name="log_every")


def test_checked_mesh_names_the_batch_size():
    for bad in (0, -4, "8", 8.0, True):
        with pytest.raises(ConfigError, match=r"config\.batch_size=.*: must be a positive int"):
            loop.checked_mesh(bad)


def test_host_data_must_be_a_bool():
    with pytest.raises(ConfigError, match="config.host_data='yes': must be a bool"):
        loop.on_device(sdata.load("synthetic", image_size=8, max_examples=8), host_data="yes")


# ----------------------------------------------------------------------------------------------
# The loop


def test_records_hooks_and_checkpoints(tmp_path):
    calls = []

    def hook(step, state, writer):
        calls.append((step, int(state.step)))
        return {"hook_value": float(step) * 10}

    config = _config(log_every=2, checkpoint_every=3)
    state, record = _train(tmp_path, 7, config, hooks=[loop.Hook(5, hook, "hook_every")],
                           first_record={"num_params": 36}, summarize=lambda s, m: {**m, "double": 2 * s})
    assert int(state.step) == 7 and calls == [(5, 5), (7, 7)]  # every 5 and at the end
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4, 5, 6, 7]
    assert records[0] == {"step": 0, "num_params": 36.0}
    # Train metrics are means over the steps since the last record; hooks join their step's record.
    assert set(records[1]) == {"step", "loss", "w_sum", "double", "steps_per_s"}
    assert set(records[3]) == {"step", "hook_value"}  # step 5: a hook, no log
    assert records[-1]["hook_value"] == 70.0 and records[-1]["double"] == 14
    assert record == {k: v for k, v in records[-1].items() if k != "step"}
    assert _steps(tmp_path) == [3, 6, 7]


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("host_data", [False, True])
def test_resume_equals_uninterrupted(tmp_path, host_data):
    config = _config(host_data=host_data)
    straight, _ = _train(tmp_path / "straight", 6, config)
    half, _ = _train(tmp_path / "resumed", 3, config)
    resumed, _ = _train(tmp_path / "resumed", 6, config)
    assert int(half.step) == 3 and int(resumed.step) == 6
    assert not np.array_equal(np.asarray(half.w), np.asarray(resumed.w))
    np.testing.assert_array_equal(np.asarray(straight.w), np.asarray(resumed.w))
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
    assert [r["step"] for r in _records(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_host_and_device_data_give_the_same_run(tmp_path):
    on_device, _ = _train(tmp_path / "device", 5, _config(host_data=False))
    on_host, _ = _train(tmp_path / "host", 5, _config(host_data=True))
    # The same batches in the same order; XLA fuses the uint8->float conversion differently in the
    # two programs, hence float tolerance.
    np.testing.assert_allclose(np.asarray(on_device.w), np.asarray(on_host.w), rtol=1e-6, atol=1e-7)
    device, host = _losses(tmp_path / "device"), _losses(tmp_path / "host")
    assert list(device) == list(host) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(list(device.values()), list(host.values()), rtol=1e-5)


@pytest.mark.parametrize("log_every", [1, 4])
def test_nan_stops_before_saving_and_keeps_the_last_good_checkpoint(tmp_path, log_every):
    # NaN at step 3; with log_every=4 the metrics are fetched only at step 4, yet the error names step 3.
    config = _config(log_every=log_every, checkpoint_every=2)
    with pytest.raises(DivergenceError, match=r"step 3: loss is nan.*step 2"):
        _train(tmp_path, 6, config, data=_input(_dataset(), nan_at=3))
    assert _steps(tmp_path) == [2]
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        step, state = ckpt.restore(_init())
    assert step == 2 and int(state.step) == 2 and np.isfinite(np.asarray(state.w)).all()


_CLOSED: list[str] = []  # names of the resources closed, in order


def _recording(cls, name):
    class Recording(cls):
        def close(self):
            _CLOSED.append(name)
            super().close()

    return Recording


@pytest.mark.parametrize("host_data", [False, True])
def test_resources_are_closed_when_a_hook_fails(tmp_path, monkeypatch, host_data):
    _CLOSED.clear()
    for name in ("Checkpointer", "MetricWriter", "Progress"):
        monkeypatch.setattr(loop, name, _recording(getattr(loop, name), name))
    dataset = _dataset()
    loader_class = _recording(sdata.HostLoader, "HostLoader")
    data = dataclasses.replace(_input(dataset), host_loader=lambda start: loader_class(
        dataset.images, None, batch_size=BATCH, key=KEY, start_step=start))

    def failing_hook(step, state, writer):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        _train(tmp_path, 5, _config(host_data=host_data), data=data, hooks=[loop.Hook(2, failing_hook)])
    expected = ["Progress", "MetricWriter"] + (["HostLoader"] if host_data else []) + ["Checkpointer"]
    assert _CLOSED == expected  # each once, in reverse order of opening
    assert _steps(tmp_path) == []  # the failure came before step 2's save


def test_conv_implementation_is_in_force_while_tracing(tmp_path):
    seen: list[str] = []
    _train(tmp_path / "a", 2, _config(conv_implementation="group_sum"), data=_input(_dataset(), seen=seen))
    assert seen == ["group_sum"]  # traced once, inside use_implementation
    # Outside the loop the measured choice is back.
    assert sympad.choose_implementation(jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32),
                                        jax.ShapeDtypeStruct((2, 2, 64, 64), jnp.float32)) != "group_sum"


def test_restore_latest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        loop.restore_latest(tmp_path / "checkpoints", _init())
    final, _ = _train(tmp_path, 3)
    step, state = loop.restore_latest(tmp_path / "checkpoints", _init())
    assert step == 3
    np.testing.assert_array_equal(np.asarray(state.w), np.asarray(final.w))


# ----------------------------------------------------------------------------------------------
# An outside step limit (config.step_limit_file)


@pytest.mark.parametrize("written_at, limit, ends_at", [
    (0, "5", 5),     # there from the start
    (2, "4", 4),     # written while training: the run ends there, as if total were 4
    (3, "2", 4),     # already passed: the next step is the last
    (2, "50", 8),    # a limit never lengthens a run
    (2, "oops", 8),  # unreadable: no limit
])
def test_step_limit_file_ends_the_run_with_its_last_step_records(tmp_path, written_at, limit, ends_at):
    limit_file = tmp_path / "limit"
    if written_at == 0:
        limit_file.write_text(limit)
    seen = []

    def hook(step, state, writer):
        seen.append(step)
        if step == written_at:
            limit_file.write_text(limit)
        return {}

    workdir = tmp_path / "run"
    state, record = _train(workdir, 8, config=_config(step_limit_file=str(limit_file), checkpoint_every=100),
                           hooks=[loop.Hook(every=1, fn=hook)])
    assert int(state.step) == ends_at
    assert seen == list(range(1, ends_at + 1))
    assert _steps(workdir) == [ends_at]  # the final checkpoint, at the limit
    assert [r["step"] for r in _records(workdir)] == list(range(1, ends_at + 1))

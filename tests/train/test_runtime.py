"""Tests for sympad.train (mesh, checkpoint, metrics, progress), the divergence guard included."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sympad.train.checkpoint import Checkpointer, CheckpointError
from sympad.train.mesh import (
    _distributed_init_kwargs,
    batch_sharded,
    make_mesh,
    maybe_initialize_distributed,
    replicate,
    shard_batch,
)
from sympad.train.metrics import DivergenceError, MetricWriter, check_finite, image_grid, save_image_grid
from sympad.train.progress import Progress

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Devices

_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    import flax.linen as nn
    from sympad.train.checkpoint import Checkpointer
    from sympad.train.mesh import (
        _distributed_init_kwargs, batch_sharded, make_mesh, maybe_initialize_distributed, replicate, replicated,
        shard_batch,
    )
    from sympad.train.metrics import check_finite, image_grid, save_image_grid

    assert jax.device_count() == 4, jax.devices()

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.Conv(4, (3, 3), use_bias=False)(x)  # a bias before BatchNorm has no gradient
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x).mean(axis=(1, 2))
            return nn.Dense(3)(x)

    model = Net()
    tx = optax.sgd(0.1, momentum=0.9)  # Adam would amplify float noise in near-zero gradients
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 6, 6, 3)).astype(np.float32)   # 2 steps of a global batch of 8
    labels = rng.integers(0, 3, size=(2, 8)).astype(np.int32)
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), images[0], train=False)
    state0 = {"params": variables["params"], "batch_stats": variables["batch_stats"],
              "opt_state": tx.init(variables["params"])}

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                          x, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

    def run(mesh):
        state = replicate(state0, mesh)
        losses = []
        for i in range(2):
            x, y = shard_batch((images[i], labels[i]), mesh)
            state, loss = train_step(state, x, y)
            losses.append(float(loss))
        return state, losses, x

    mesh1 = make_mesh(jax.devices()[:1])
    mesh4 = make_mesh()
    state1, losses1, x1 = run(mesh1)
    state4, losses4, x4 = run(mesh4)
    flat1, flat4 = jax.tree.leaves(state1), jax.tree.leaves(state4)
    max_diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                   for a, b in zip(flat1, flat4))
    moved = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                for a, b in zip(jax.tree.leaves(state0), flat4))

    try:
        shard_batch(np.zeros((6, 2)), mesh4)
        indivisible = "no error"
    except ValueError as e:
        indivisible = str(e)

    # Checkpoint written from 4 devices, restored onto the 4-device mesh and onto one device.
    with tempfile.TemporaryDirectory() as d:
        ckpt = Checkpointer(d)
        ckpt.save(2, state4)
        _, on_mesh = ckpt.restore(replicate(state0, mesh4))
        _, on_one = ckpt.restore(jax.device_put(state0, jax.devices()[0]))
        ckpt.close()
    restored_equal = all(np.array_equal(a, b) for a, b in zip(flat4, jax.tree.leaves(on_mesh)))
    restored_equal &= all(np.array_equal(a, b) for a, b in zip(flat4, jax.tree.leaves(on_one)))

    print("RESULT " + json.dumps({
        "mesh_shape": dict(mesh4.shape),
        "losses1": losses1, "losses4": losses4, "max_param_diff": max_diff, "moved": moved,
        "x4_spec": list(x4.sharding.spec), "x4_shards": sorted({s.data.shape[0] for s in x4.addressable_shards}),
        "n_x4_shards": len(x4.addressable_shards),
        "state4_replicated": all(l.sharding.is_fully_replicated for l in flat4),
        "indivisible": indivisible,
        "restored_equal": bool(restored_equal),
        "on_mesh_replicated": all(l.sharding == replicated(mesh4) for l in jax.tree.leaves(on_mesh)),
        "on_one_devices": sorted({len(l.sharding.device_set) for l in jax.tree.leaves(on_one)}),
    }))
    """
)


@pytest.mark.integration
def test_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    assert r["mesh_shape"] == {"data": 4}
    # The global batch of 8 is split 2 per device and the state stays replicated.
    assert r["x4_spec"] == ["data"]
    assert r["n_x4_shards"] == 4 and r["x4_shards"] == [2]
    assert r["state4_replicated"]
    # Same loss and parameters (incl. BatchNorm statistics and Adam moments) as on one device.
    np.testing.assert_allclose(r["losses4"], r["losses1"], rtol=1e-5)
    assert r["moved"] > 1e-3  # the comparison is not between two untouched initial states
    assert r["max_param_diff"] < 1e-5
    assert "divisible" in r["indivisible"]
    assert r["restored_equal"] and r["on_mesh_replicated"] and r["on_one_devices"] == [1]


def test_mesh_helpers_on_one_device():
    mesh = make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    x = shard_batch({"x": np.arange(4 * jax.device_count(), dtype=np.float32)}, mesh)["x"]
    assert x.sharding == batch_sharded(mesh)
    np.testing.assert_array_equal(x, np.arange(4 * jax.device_count()))
    s = replicate({"w": jnp.ones(3)}, mesh)["w"]
    assert s.sharding.is_fully_replicated
    with pytest.raises(ValueError, match="divisible"):
        shard_batch(np.float32(1.0), mesh)  # no batch axis


def test_distributed_env_detection():
    kw = _distributed_init_kwargs
    assert kw({}) is None
    assert kw({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None  # plain srun of one task
    assert kw({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}) == {}
    assert kw({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}) == {}
    assert kw({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == dict(
        coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1
    )
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        kw({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    assert maybe_initialize_distributed({}) is False


# ----------------------------------------------------------------------------------------------
# Checkpoints: exact resume

_DATA_X = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
_DATA_Y = (_DATA_X @ np.arange(1.0, 6.0, dtype=np.float32) + 0.5).astype(np.float32)
_TX = optax.adam(0.05)


def _init_state(seed: int = 0) -> dict:
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    return {
        "params": params,
        "opt_state": _TX.init(params),
        "ema": jax.tree.map(jnp.copy, params),
        "batch_stats": {"mean": jnp.zeros(5)},
        "key": jax.random.key(seed),  # typed key: stored as key_data
        "raw_key": jax.random.PRNGKey(seed + 1),  # legacy uint32 key
        "data_pos": jnp.int32(0),
    }


@jax.jit
def _train_step(state: dict) -> dict:
    key, sub = jax.random.split(state["key"])
    idx = jax.random.choice(sub, _DATA_X.shape[0], (8,), replace=False)
    x, y = jnp.asarray(_DATA_X)[idx], jnp.asarray(_DATA_Y)[idx]

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    grads = jax.grad(loss_fn)(state["params"])
    updates, opt_state = _TX.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {
        "params": params,
        "opt_state": opt_state,
        "ema": jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state["ema"], params),
        "batch_stats": {"mean": 0.9 * state["batch_stats"]["mean"] + 0.1 * x.mean(0)},
        "key": key,
        "raw_key": jax.random.fold_in(state["raw_key"], 1),
        "data_pos": state["data_pos"] + 8,
    }


def _as_numpy(tree):
    def leaf(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return jax.tree.map(leaf, tree)


def test_kill_and_resume_is_exact(tmp_path):
    n = 6
    straight = _init_state()
    for _ in range(n):
        straight = _train_step(straight)

    first = Checkpointer(tmp_path / "ckpt")
    assert first.restore(_init_state()) is None  # nothing saved yet: a fresh start
    state = _init_state()
    for _ in range(n // 2):
        state = _train_step(state)
    first.save(n // 2, state, metrics={"loss": 1.0})
    first.close()
    del state  # the "killed" run

    second = Checkpointer(tmp_path / "ckpt")
    step, state = second.restore(_init_state(seed=7))  # template values must not leak through
    assert step == n // 2
    assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
    for _ in range(n - step):
        state = _train_step(state)
    second.close()

    got, want = _as_numpy(state), _as_numpy(straight)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    assert int(got["data_pos"]) == 8 * n
    assert not np.array_equal(got["params"]["w"], _as_numpy(_init_state())["params"]["w"])


def test_restore_from_abstract_template_and_python_scalars(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": 3, "lr": 0.25, "np": np.arange(4, dtype=np.int16)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state)
        _, restored = ckpt.restore(jax.eval_shape(lambda: {**state, "np": jnp.zeros(4, jnp.int16)}))
        np.testing.assert_array_equal(restored["w"], state["w"])
        assert int(restored["step"]) == 3 and float(restored["lr"]) == 0.25
        _, restored = ckpt.restore({**state, "step": 0, "lr": 0.0, "np": np.zeros(4, np.int16)})
        assert restored["step"] == 3 and restored["lr"] == 0.25
        assert isinstance(restored["np"], np.ndarray)
        np.testing.assert_array_equal(restored["np"], state["np"])


# ----------------------------------------------------------------------------------------------
# Checkpoints: retention


def _expected_kept(values: list[float], k: int, mode: str | None) -> list[int]:
    """Reference retention: the last k steps plus the step with the best finite value."""
    steps = list(range(1, len(values) + 1))
    kept = set(steps[-k:])
    finite = [(v, s) for v, s in zip(values, steps) if np.isfinite(v)]
    if mode and finite:
        kept.add((min if mode == "min" else max)(finite)[1])
    return sorted(kept)


@pytest.mark.parametrize("mode", ["min", "max", None])
def test_keeps_last_k_and_best(tmp_path, mode):
    values = [5.0, 1.0, 4.0, 9.0, float("nan"), 3.0, 6.0]
    state = {"w": jnp.ones(2)}
    ckpt = Checkpointer(tmp_path, max_to_keep=2, best_metric="score" if mode else None, best_mode=mode or "min")
    for step, v in enumerate(values[:5], start=1):
        ckpt.save(step, state, metrics={"score": v})
    ckpt.close()
    # A restart must still know which step was best (orbax keeps metrics only when told to).
    ckpt = Checkpointer(tmp_path, max_to_keep=2, best_metric="score" if mode else None, best_mode=mode or "min")
    for step, v in enumerate(values[5:], start=6):
        ckpt.save(step, state, metrics={"score": v})
    ckpt.save(8, state)  # no metrics: kept as recent, never as best
    expected = _expected_kept(values + [float("nan")], 2, mode)
    assert ckpt.all_steps() == expected
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == expected
    assert ckpt.best_step() == (2 if mode == "min" else 4 if mode == "max" else None)
    assert ckpt.latest_step() == 8
    assert ckpt.save(8, state) is False  # a step is written once
    ckpt.close()


# ----------------------------------------------------------------------------------------------
# Checkpoints: failures


def _two_checkpoints(directory: Path) -> tuple[Checkpointer, dict, dict]:
    rng = np.random.default_rng(0)
    s1 = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32), "step": jnp.int32(1)}
    s2 = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32), "step": jnp.int32(2)}
    ckpt = Checkpointer(directory, max_to_keep=3)
    ckpt.save(1, s1)
    ckpt.save(2, s2)
    return ckpt, s1, s2


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: _flip_byte(_largest_file(d / "state")), id="flipped-byte-in-array-data"),
        pytest.param(lambda d: _truncate(_largest_file(d / "state")), id="truncated-array-data"),
        pytest.param(lambda d: (d / "state" / "_METADATA").write_text("garbage"), id="garbage-metadata"),
        pytest.param(lambda d: (d / "manifest" / "metadata").write_text("{"), id="garbage-manifest"),
        pytest.param(lambda d: [p.unlink() for p in (d / "state").rglob("*") if p.is_file()],
                     id="partial-no-state-files"),
    ],
)
def test_corrupt_checkpoint_raises_naming_path_and_keeps_previous(tmp_path, damage):
    ckpt, s1, _ = _two_checkpoints(tmp_path)
    ckpt.close()
    damage(tmp_path / "2")
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore({"w": jnp.zeros((64, 64)), "step": jnp.int32(0)})
    assert str(tmp_path / "2") in str(info.value)
    assert "step=1" in str(info.value)  # tells how to resume from the previous good step
    assert ckpt.all_steps() == [1, 2]
    step, restored = ckpt.restore({"w": jnp.zeros((64, 64)), "step": jnp.int32(0)}, step=1)
    assert step == 1
    np.testing.assert_array_equal(restored["w"], s1["w"])
    ckpt.close()


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    ckpt, _, s2 = _two_checkpoints(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("simulated crash halfway through the save")

    # The manifest is written after the arrays started: the step is half on disk when this fires.
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", crash)
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "save", crash)
    with pytest.raises(CheckpointError, match=str(tmp_path / "3")):
        ckpt.save(3, {"w": jnp.zeros((64, 64)), "step": jnp.int32(3)})
    monkeypatch.undo()
    leftovers = [p.name for p in tmp_path.iterdir() if "tmp" in p.name]
    assert leftovers and all(name.startswith("3.") for name in leftovers)  # written aside, never renamed
    assert not (tmp_path / "3").exists()

    reader = Checkpointer(tmp_path, read_only=True)  # e.g. an evaluator: must not touch the leftovers
    assert reader.restore({"w": jnp.zeros((64, 64)), "step": jnp.int32(0)})[0] == 2
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == leftovers
    with pytest.raises(CheckpointError, match="read_only"):
        reader.save(3, s2)
    reader.close()

    restarted = Checkpointer(tmp_path)  # a new run after the crash
    assert restarted.all_steps() == [1, 2]
    step, restored = restarted.restore({"w": jnp.zeros((64, 64)), "step": jnp.int32(0)})
    assert step == 2
    np.testing.assert_array_equal(restored["w"], s2["w"])
    assert restarted.save(3, s2)  # waits for orbax's background cleanup of the leftovers
    assert restarted.all_steps() == [1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    restarted.close()


@pytest.mark.parametrize(
    "template, needle",
    [
        ({"w": jnp.zeros((64, 63)), "step": jnp.int32(0)}, "'w' has shape (64, 64) in the checkpoint, (64, 63)"),
        ({"w": jnp.zeros((64, 64))}, "'step' is in the checkpoint but not in the template"),
        ({"w": jnp.zeros((64, 64)), "step": jnp.int32(0), "ema": jnp.zeros(2)}, "'ema' is not in the checkpoint"),
        ({"w": jnp.zeros((64, 64), jnp.bfloat16), "step": jnp.int32(0)}, "dtype float32 in the checkpoint, bfloat16"),
        ({"w": {"kernel": jnp.zeros((64, 64))}, "step": jnp.int32(0)}, "'w/kernel' is not in the checkpoint"),
    ],
)
def test_incompatible_template_raises(tmp_path, template, needle):
    ckpt, _, _ = _two_checkpoints(tmp_path)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore(template)
    assert str(tmp_path / "2") in str(info.value)
    assert needle in str(info.value)
    ckpt.close()


def test_typed_and_raw_keys_are_not_confused(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"key": jax.random.key(3)})
        mismatch = "typed PRNG key .* in the checkpoint, raw uint32 key data in the template"
        with pytest.raises(CheckpointError, match=mismatch):
            ckpt.restore({"key": jax.random.PRNGKey(0)})
        _, restored = ckpt.restore({"key": jax.random.key(0)})
        np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(jax.random.key(3)))


def test_missing_step_and_bad_arguments(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
            ckpt.restore({"w": jnp.zeros(2)}, step=5)
        ckpt.save(1, {"w": jnp.zeros(2)})
        with pytest.raises(CheckpointError, match=r"available steps: \[1\]"):
            ckpt.restore({"w": jnp.zeros(2)}, step=5)
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, best_mode="lowest")


def test_orbax_info_lines_are_dropped_only_while_a_checkpointer_is_open(tmp_path):
    absl = logging.getLogger("absl")

    def record(level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "a line", None, None)

    orbax_file = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    before = list(absl.filters)  # other tests' Checkpointers left open keep theirs
    with Checkpointer(tmp_path):
        added = [f for f in absl.filters if f not in before]
        assert len(added) == 1
        assert not added[0].filter(record(logging.INFO, orbax_file))
        assert added[0].filter(record(logging.WARNING, orbax_file))
        assert added[0].filter(record(logging.INFO, "/repo/sympad/train/loop.py"))
    assert absl.filters == before
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    assert absl.filters == before  # a Checkpointer that did not open leaves none behind


# ----------------------------------------------------------------------------------------------
# Divergence guard


@pytest.mark.parametrize("value, kind", [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_check_finite_message(tmp_path, value, kind):
    for name in ("3", "10", "12.orbax-checkpoint-tmp"):
        (tmp_path / name).mkdir()
    with pytest.raises(DivergenceError) as info:
        check_finite(17, {"loss": jnp.float32(1.0), "d_loss": jnp.asarray(value)}, checkpoint_dir=tmp_path)
    assert str(info.value) == (
        f"step 17: d_loss is {kind}; stopping. The last good checkpoint is at {tmp_path} (step 10)."
    )


def test_check_finite_passes_and_other_messages(tmp_path):
    check_finite(1, {"loss": 0.5, "count": np.int32(3), "vec": np.ones(3)})
    with pytest.raises(DivergenceError, match="^step 2: vec is nan; stopping. No checkpoint directory was given.$"):
        check_finite(2, {"vec": np.array([1.0, np.nan])})
    with pytest.raises(DivergenceError, match="No checkpoint has been saved yet"):
        check_finite(2, {"loss": np.inf}, checkpoint_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Metrics and images


def _read_tfrecords(path: Path) -> list[bytes]:
    """Records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data, records, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        records.append(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
    return records


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.write(1, {"loss": jnp.float32(0.5), "lr": 0.1, "n": np.int64(3)})
        writer.write(2, {"loss": np.array([0.25])})
        writer.write_image(2, "samples", np.full((4, 5, 3), 7, np.uint8))
        with pytest.raises(ValueError, match="'vec'"):
            writer.write(3, {"vec": np.ones(2)})
    with MetricWriter(tmp_path, tensorboard=False) as writer:  # a resumed run appends
        writer.write(3, {"loss": float("nan")})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[:2] == [{"step": 1, "loss": 0.5, "lr": pytest.approx(0.1), "n": 3.0}, {"step": 2, "loss": 0.25}]
    assert records[2]["step"] == 3 and np.isnan(records[2]["loss"]) and len(records) == 3

    from tensorboardX.proto import event_pb2  # after MetricWriter, which imports tensorboardX without torch

    events = [event_pb2.Event.FromString(r) for f in tmp_path.glob("events.out.tfevents.*") for r in _read_tfrecords(f)]
    scalars = {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
    assert scalars == {(1, "loss"): 0.5, (1, "lr"): pytest.approx(0.1), (1, "n"): 3.0, (2, "loss"): 0.25}
    images = [
        (e.step, v.tag, v.image.height, v.image.width) for e in events for v in e.summary.value if v.HasField("image")
    ]
    assert images == [(2, "samples", 4, 5)]


def test_save_image_grid_matches_loop_reference(tmp_path):
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3, 3), dtype=np.uint8)
    path = save_image_grid(images, tmp_path / "grid.png", ncols=2)
    got = np.asarray(Image.open(path))
    pad = 2
    want = np.zeros((3 * (4 + pad) + pad, 2 * (3 + pad) + pad, 3), np.uint8)
    for i in range(5):
        r, c = divmod(i, 2)
        for y in range(4):
            for x in range(3):
                want[pad + r * (4 + pad) + y, pad + c * (3 + pad) + x] = images[i, y, x]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(images.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Progress


class _FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_plain_lines_every_tenth():
    out, clock = io.StringIO(), _FakeClock()
    progress = Progress(100, desc="train", file=out, clock=clock)
    for step in range(1, 101):
        clock.t += 0.5
        progress.update(step, loss=1.0 / step)
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"train: step {s}/100 ({s}%)" for s in range(10, 101, 10)]
    # 2 steps/s: at step 40, 60 steps remain → 30 s.
    assert lines[3] == "train: step 40/100 (40%), 2 steps/s, ETA 0:00:30, loss=0.025"
    assert "\r" not in out.getvalue()  # no bar redraws in a log file


def test_progress_plain_lines_by_time_and_resume():
    out, clock = io.StringIO(), _FakeClock()
    progress = Progress(1000, initial=500, file=out, clock=clock, log_every_s=30)
    for step in range(501, 511):
        clock.t += 10.0
        progress.update(step)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["step 503/1000", "step 506/1000", "step 509/1000"]
    eta = datetime.timedelta(seconds=round((1000 - 503) / 0.1))
    assert lines[0] == f"step 503/1000 (50%), 0.1 steps/s, ETA {eta}"


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Progress(20, desc="train", file=out) as progress:
        for step in range(1, 21):
            progress.update(step, loss=0.5)
    text = out.getvalue()
    assert "train" in text and "20/20" in text and "step/s" in text and "loss=0.5" in text

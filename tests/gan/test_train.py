"""GAN training: one step, resume equality, gan.main end to end, sampling and export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sympad
from configs.gan import sngan_cifar10
from gan import evaluate, export, models, sample, train
from gan import state as gan_state
from gan import step as gan_step
from sympad.train import data as sdata
from sympad.train.checkpoint import Checkpointer
from sympad.train.config import lock_and_validate, read_config
from sympad.train.mesh import make_mesh, replicate
from sympad.train.metrics import DivergenceError
from tests.gan.tiny import TINY, tiny_config  # noqa: F401 (the other GAN test modules used to import them here)
from tests.gan.tiny import all_leaves_differ as _all_leaves_differ
from tests.gan.tiny import assert_trees_equal as _assert_trees_equal
from tests.gan.tiny import numpy_tree as _numpy

REPO = Path(__file__).resolve().parents[2]


def _adam_count(opt_state) -> int:
    counts = {int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
              if "count" in jax.tree_util.keystr(path)}
    assert len(counts) == 1  # Adam's and the schedule's step counters agree
    return counts.pop()


def _one_step(config):
    """The state before (as numpy), the replicated batch, and one step's (state, metrics)."""
    generator, discriminator = gan_state.create_models(config)
    g_tx, d_tx = gan_state.create_optimizers(config)
    mesh = make_mesh()
    state = replicate(gan_state.create_train_state(config, generator, discriminator, g_tx, d_tx), mesh)
    before = _numpy(state)
    images = replicate(sdata.load("synthetic", image_size=8, max_examples=64).images, mesh)
    step, _ = gan_step.make_train_step(generator, discriminator, g_tx, d_tx, config, mesh=mesh,
                                       data_key=jax.random.key(5))
    return before, step(state, images)  # the step donates its state


def test_one_step_runs_n_critic_d_updates_and_one_g_update():
    config = tiny_config()
    before, (new, metrics) = _one_step(config)
    assert int(new.step) == 1
    assert _adam_count(new.d_opt_state) == config.n_critic == 5
    assert _adam_count(new.g_opt_state) == 1
    # Every parameter of both networks moved, and so did every spectral-norm vector u.
    assert _all_leaves_differ(before.g_params, new.g_params)
    assert _all_leaves_differ(before.d_params, new.d_params)
    def u_vectors(stats):
        return [x for p, x in jax.tree_util.tree_leaves_with_path(stats) if p[-1].key.endswith("/u")]

    u_before, u_after = u_vectors(before.d_stats), u_vectors(_numpy(new.d_stats))
    assert u_before and all(not np.allclose(a, b) for a, b in zip(u_before, u_after))
    # EMA with decay 0.5 after one update: the mean of the old and the new weights.
    expected_ema = jax.tree_util.tree_map(lambda a, b: 0.5 * a + 0.5 * b, before.g_params, _numpy(new.g_params))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           expected_ema, _numpy(new.ema_params))
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    assert 0 < float(metrics["d_real"]) < 1 and 0 < float(metrics["d_fake"]) < 1
    assert float(metrics["d_grad_norm"]) > 0 and float(metrics["g_grad_norm"]) > 0


@pytest.mark.slow
def test_unrolled_d_updates_compute_the_scanned_step():
    # The paper configs unroll the n_critic D updates (fast on XLA:CPU); the tests' tiny config
    # scans them (compiles faster). Both are the same step.
    (_, (scanned, _)), (_, (unrolled, _)) = (_one_step(tiny_config(unroll_d_steps=u)) for u in (False, True))
    for a, b in zip(jax.tree_util.tree_leaves(_numpy(unrolled)), jax.tree_util.tree_leaves(_numpy(scanned))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_conv_implementation_reaches_the_traced_step():
    # The step traces under the formulation in force (the loop's config.conv_implementation), so each
    # formulation gets its own program: group_sum computes a C2sp conv as one conv per direction
    # group, pad_concat as a single conv.
    config = tiny_config(kernel="C2sp")
    generator, discriminator = gan_state.create_models(config)
    g_tx, d_tx = gan_state.create_optimizers(config)
    state = gan_state.create_train_state(config, generator, discriminator, g_tx, d_tx)
    images = jnp.zeros((16, 8, 8, 3), jnp.uint8)
    convs = {}
    for name in ("pad_concat", "group_sum"):
        step, _ = gan_step.make_train_step(generator, discriminator, g_tx, d_tx, config)
        with sympad.use_implementation(name):
            text = step.lower(state, images).as_text()
        convs[name] = text.count("convolution(")
    assert convs["group_sum"] > convs["pad_concat"] > 0


@pytest.mark.slow
def test_resume_gives_identical_parameters(tmp_path):
    straight = train.train_and_evaluate(tiny_config(num_train_steps=4), str(tmp_path / "straight"))
    half = train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "resumed"))
    resumed = train.train_and_evaluate(tiny_config(num_train_steps=4), str(tmp_path / "resumed"))
    assert int(half.step) == 2 and int(resumed.step) == int(straight.step) == 4
    assert _all_leaves_differ(half.g_params, resumed.g_params)
    for field in ("g_params", "d_params", "d_stats", "g_opt_state", "d_opt_state"):
        _assert_trees_equal(getattr(straight, field), getattr(resumed, field))
    # The second call restored step 2 rather than starting over: its records begin at step 3.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# trained_workdir: tests/gan/conftest.py, one trained run for the whole test run.


@pytest.mark.slow
def test_main_end_to_end(trained_workdir):
    files = {p.name for p in trained_workdir.iterdir()}
    assert {"config.json", "model_summary.json", "metrics.jsonl", "samples_0000001.png", "samples_0000002.png",
            "checkpoints"} <= files  # --config.sample_every=1 took effect
    summary = json.loads((trained_workdir / "model_summary.json").read_text())
    config = read_config(trained_workdir)
    assert config.sample_every == 1
    generator, discriminator = gan_state.create_models(config)
    g_vars = generator.init(jax.random.key(0), jnp.zeros((1, config.z_dim)))
    d_vars = discriminator.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert summary["generator"]["params"] == models.count_params(g_vars["params"])
    assert summary["discriminator"]["params"] == models.count_params(d_vars["params"])
    records = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "steps_per_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert sorted(int(p.name) for p in (trained_workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2]


@pytest.mark.slow
def test_samples_are_deterministic(trained_workdir):
    config, generator, state = gan_state.restore_state(trained_workdir)
    assert int(state.step) == 2 and state.ema_params is not None
    variables = gan_state.generator_variables(state)
    a = sample.generate_samples(generator, variables, num=7, seed=3, batch_size=3)
    b = sample.generate_samples(generator, variables, num=7, seed=3, batch_size=5)
    c = sample.generate_samples(generator, variables, num=7, seed=4, batch_size=3)
    assert a.shape == (7, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # independent of the batch size
    assert not np.array_equal(a, c)
    # Sample i is G(z_i), z_i drawn from fold_in(key(seed), i): recompute two of them directly.
    for i in (0, 6):
        z = jax.random.normal(jax.random.fold_in(jax.random.key(3), i), (1, config.z_dim))
        expected = sdata.to_uint8(generator.apply(variables, z))
        np.testing.assert_array_equal(a[i : i + 1], expected)
    # The EMA weights are what gets sampled.
    live = sample.generate_samples(generator, gan_state.generator_variables(state, use_ema=False), num=7, seed=3)
    assert not np.array_equal(a, live)


@pytest.mark.integration
def test_sample_command_writes_next_to_the_run(trained_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    subprocess.run(
        [sys.executable, "-m", "gan.sample", f"--workdir={workdir}", "--num=5", "--batch=2", "--seed=3",
         f"--grid={tmp_path / 'grid.png'}", "--grid_num=4"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )
    images = np.load(workdir / "samples.npz")["images"]
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    _, generator, state = gan_state.restore_state(workdir)
    want = sample.generate_samples(generator, gan_state.generator_variables(state, use_ema=True), num=5, seed=3)
    np.testing.assert_array_equal(images, want)
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert evaluate.find_samples(workdir) == workdir / "samples.npz"


@pytest.mark.slow
def test_exported_generator_matches(trained_workdir, tmp_path):
    pytest.importorskip("flatbuffers")  # jax.export serialization needs it
    config, generator, state = gan_state.restore_state(trained_workdir)
    variables = gan_state.generator_variables(state)
    path = export.save(export.export_generator(generator, variables, z_dim=config.z_dim), tmp_path / "g.bin")
    loaded = jax.export.deserialize(bytearray(path.read_bytes()))  # the documented loader
    for batch in (1, 5):  # symbolic batch dimension
        z = np.random.default_rng(batch).standard_normal((batch, config.z_dim)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(loaded.call(z)), np.asarray(generator.apply(variables, z)),
                                   rtol=1e-5, atol=1e-6)
def test_bad_config_values():
    with pytest.raises(ValueError, match="kernel"):
        sngan_cifar10.get_config("kernel=C5x")
    with pytest.raises(ValueError, match="arch"):
        gan_state.create_models(tiny_config(arch="dcgan"))
    config = tiny_config()
    config.optimizer.schedule = "cosine"
    with pytest.raises(ValueError, match="config.optimizer.schedule"):
        gan_state.create_optimizers(config)
    with pytest.raises(ValueError, match="config.conv_implementation"):
        lock_and_validate(tiny_config(conv_implementation="fastest"))


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(trained_workdir, tmp_path):
    workdir = tmp_path / "diverged"
    shutil.copytree(trained_workdir, workdir)
    config, _, state = gan_state.restore_state(workdir)
    # A NaN in G's weights (as after an exploding update), saved as step 3.
    poisoned = state.replace(step=state.step + 1,
                             g_params=jax.tree_util.tree_map(lambda x: x * jnp.nan, state.g_params))
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(3, poisoned)
    ckpt.close()
    config.num_train_steps = 5
    with pytest.raises(DivergenceError, match=r"step 4: .* is nan.*step 3"):
        train.train_and_evaluate(config, str(workdir))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]

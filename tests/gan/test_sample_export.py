"""gan.sample and gan.export for class-conditional runs: labels in the .npz, class grids, interpolation
sheets, truncation, and the exported (z, labels) -> images function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import export, sample, sampling
from gan import state as gan_state
from sympad.train.checkpoint import Checkpointer
from sympad.train.config import write_config
from sympad.train.data import to_uint8
from tests.gan.tiny import tiny_config

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 3


def _make_run(workdir: Path, config) -> Path:
    """A run directory as gan.main leaves it (config.json, a checkpoint at step 2), without training.

    G's class tables are random rather than initial: a fresh conditional G's are zero, which would
    make every class draw the same image.
    """
    generator, discriminator = gan_state.create_models(config)
    g_tx, d_tx = gan_state.create_optimizers(config)
    state = gan_state.create_train_state(config, generator, discriminator, g_tx, d_tx)
    state = state.replace(step=jnp.asarray(2, jnp.int32), ema_params=_with_class_tables(state.ema_params, seed=1),
                          g_params=_with_class_tables(state.g_params, seed=2))
    write_config(config, workdir)
    checkpointer = Checkpointer(workdir / "checkpoints")
    checkpointer.save(2, state)
    checkpointer.close()
    return workdir


def _with_class_tables(params, *, seed):
    """``params`` with random gamma/beta class tables (the conditional BNs'); other weights unchanged."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    key = jax.random.key(seed)
    return jax.tree_util.tree_unflatten(tree, [
        0.5 * jax.random.normal(jax.random.fold_in(key, i), x.shape)
        if jax.tree_util.keystr(path).endswith(("['gamma']['embedding']", "['beta']['embedding']")) else x
        for i, (path, x) in enumerate(leaves)])


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    config = tiny_config(conditional=True, num_classes=NUM_CLASSES, norm="batch", loss="hinge")
    return _make_run(tmp_path_factory.mktemp("conditional") / "run", config)


@pytest.fixture(scope="module")
def unconditional_run(trained_workdir):
    return trained_workdir  # the suite's trained run (tests/gan/conftest.py); read only


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.integration
def test_conditional_samples_and_sheets(conditional_run, tmp_path):
    result = _run("gan.sample", f"--workdir={conditional_run}", f"--out={tmp_path / 's.npz'}", "--num=7",
                  "--batch=4", "--seed=3", "--labels=2,0", "--truncation=0.8", f"--class_grid={tmp_path / 'c.png'}",
                  "--per_class=3", f"--interpolate={tmp_path / 'i.png'}", "--interp_rows=3", "--interp_steps=4",
                  f"--grid={tmp_path / 'g.png'}", "--grid_num=4")
    assert result.returncode == 0, result.stderr
    _, generator, state = gan_state.restore_state(conditional_run)
    assert generator.num_classes == NUM_CLASSES
    variables = gan_state.generator_variables(state)

    def generate(z, labels):
        return np.asarray(to_uint8(generator.apply(variables, jnp.asarray(z), jnp.asarray(labels, jnp.int32))))

    # Samples: --labels cycles through the given classes; sample i is G(z_i, y_i), z_i truncated.
    samples = np.load(tmp_path / "s.npz")
    labels = samples["labels"]
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [2, 0, 2, 0, 2, 0, 2])
    z = sampling.sample_latents(jax.random.key(3), jnp.arange(7), z_dim=8, truncation=0.8)
    np.testing.assert_array_equal(samples["images"], generate(z, labels))
    grid = np.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(grid["images"], samples["images"][:4])
    np.testing.assert_array_equal(grid["labels"], labels[:4])

    # Class grid: row r is class --labels[r]; column c is latent z_c in every row.
    sheet = np.load(tmp_path / "c.npz")
    assert sheet["images"].shape == (2, 3, 8, 8, 3)
    np.testing.assert_array_equal(sheet["labels"], [[2, 2, 2], [0, 0, 0]])
    for r, label in enumerate((2, 0)):
        np.testing.assert_array_equal(sheet["images"][r], generate(z[:3], [label] * 3))
    assert not np.array_equal(sheet["images"][0], sheet["images"][1])

    # Interpolations: row r at class --labels[r % 2], along a slerp between two truncated latents.
    interp = np.load(tmp_path / "i.npz")
    assert interp["images"].shape == (3, 4, 8, 8, 3)
    np.testing.assert_array_equal(interp["labels"], np.repeat([[2], [0], [2]], 4, axis=1))
    path = sampling.interpolation_latents(jax.random.key(3), num_rows=3, steps=4, z_dim=8, truncation=0.8)
    for r in range(3):
        np.testing.assert_array_equal(interp["images"][r], generate(path[r], interp["labels"][r]))

    for png, (rows, cols) in (("c.png", (2, 3)), ("i.png", (3, 4))):
        from PIL import Image

        # 8 px images with 2 px padding: the PNG has the sheet's rows and columns.
        assert Image.open(tmp_path / png).size == (cols * 10 + 2, rows * 10 + 2)


@pytest.mark.integration
def test_default_labels_are_balanced(conditional_run, tmp_path):
    out = tmp_path / "s.npz"
    result = _run("gan.sample", f"--workdir={conditional_run}", f"--out={out}", "--num=5", f"--class_grid="
                  f"{tmp_path / 'c.png'}", "--per_class=2")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out)["labels"], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["labels"], [[0, 0], [1, 1], [2, 2]])


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (("--labels=1,3",), "--labels=1,3: 3 out of range; this run has 3 classes (0 to 2)"),
    (("--class_grid=c.jpg",), "--class_grid='c.jpg': must name a .png file"),
])
def test_bad_flags_are_one_error_line(conditional_run, args, message):
    result = _run("gan.sample", f"--workdir={conditional_run}", "--out=", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr


def test_labels_flag_parsing():
    assert sample._parse_labels("3, 5,3") == [3, 5]
    assert sample._parse_labels("") == []
    with pytest.raises(ValueError, match="--labels='a': use comma-separated class indices"):
        sample._parse_labels("a")


@pytest.mark.integration
def test_class_grid_needs_a_conditional_run(unconditional_run, tmp_path):
    result = _run("gan.sample", f"--workdir={unconditional_run}", "--out=", f"--class_grid={tmp_path / 'c.png'}")
    assert result.returncode == 2
    assert "error: --class_grid needs a conditional run" in result.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.integration
def test_unconditional_interpolation_sheet(unconditional_run, tmp_path):
    result = _run("gan.sample", f"--workdir={unconditional_run}", f"--out={tmp_path / 's.npz'}", "--num=2",
                  f"--interpolate={tmp_path / 'i.png'}", "--interp_rows=2", "--interp_steps=3")
    assert result.returncode == 0, result.stderr
    assert "labels" not in np.load(tmp_path / "s.npz").files
    interp = np.load(tmp_path / "i.npz")
    assert interp.files == ["images"] and interp["images"].shape == (2, 3, 8, 8, 3)
    _, generator, state = gan_state.restore_state(unconditional_run)
    path = sampling.interpolation_latents(jax.random.key(0), num_rows=2, steps=3, z_dim=8)
    want = to_uint8(generator.apply(gan_state.generator_variables(state), path.reshape(6, 8)))
    np.testing.assert_array_equal(interp["images"].reshape(6, 8, 8, 3), want)


@pytest.mark.integration
def test_exported_conditional_generator_matches(conditional_run, tmp_path):
    pytest.importorskip("flatbuffers")  # jax.export serialization needs it
    result = _run("gan.export", f"--workdir={conditional_run}", f"--out={tmp_path / 'g.bin'}", "--platforms=cpu")
    assert result.returncode == 0, result.stderr
    metadata = json.loads((tmp_path / "g.bin.json").read_text())
    assert metadata["num_classes"] == NUM_CLASSES and metadata["z_dim"] == 8
    assert metadata["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["B", 8]},
                                  {"name": "labels", "dtype": "int32", "shape": ["B"], "range": [0, NUM_CLASSES]}]
    loaded = export.load(tmp_path / "g.bin")
    _, generator, state = gan_state.restore_state(conditional_run)
    variables = gan_state.generator_variables(state)
    for batch in (1, 5):  # symbolic batch dimension, shared by z and labels
        z = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        labels = (np.arange(batch) % NUM_CLASSES).astype(np.int32)
        np.testing.assert_allclose(np.asarray(loaded.call(z, labels)),
                                   np.asarray(generator.apply(variables, z, labels)), rtol=1e-5, atol=1e-5)
    z = np.zeros((2, 8), np.float32)
    assert not np.allclose(np.asarray(loaded.call(z, np.array([0, 0], np.int32)))[1],
                           np.asarray(loaded.call(z, np.array([0, 1], np.int32)))[1])


@pytest.mark.integration
def test_unconditional_export_metadata(unconditional_run, tmp_path):
    pytest.importorskip("flatbuffers")
    result = _run("gan.export", f"--workdir={unconditional_run}", f"--out={tmp_path / 'g.bin'}", "--platforms=cpu")
    assert result.returncode == 0, result.stderr
    metadata = json.loads((tmp_path / "g.bin.json").read_text())
    assert metadata["num_classes"] == 0
    assert metadata["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["B", 8]}]
    assert len(export.load(tmp_path / "g.bin").in_avals) == 1

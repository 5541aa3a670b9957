"""Several GAN seeds in one vmapped program (``config.num_seeds``): each seed is its own run.

A run started with ``seed=s, num_seeds=N`` trains seeds ``s .. s+N-1``; seed ``s+i`` must compute
what a single run with ``seed=s+i`` computes (initialization, latents, data order, labels,
augmentation draws), up to floating-point rounding: the vmapped convolutions may sum in another
order, and 20 GAN steps under Adam carry that rounding along (seen on a 2-core CPU: losses to
3e-7, gradient norms to 1.4e-5, parameters to 3e-5 of their tensor's largest value). The
tolerances, 1e-4 relative on the metrics and 1e-4 of each tensor's scale on the parameters, are
far below what a wrong key, batch, label or augmentation draw for one seed does (O(1) from the
first step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from gan import sampling, train
from gan import state as gan_state
from sympad.train.errors import ConfigError
from tests.gan.tiny import numpy_tree, tiny_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 20  # with n_critic = 5: 100 D updates, each with a spectral-norm power iteration
POLICY = "color,translation,cutout"
TRAIN_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm")


def _config(**overrides):
    base = dict(num_train_steps=STEPS, log_every=1, checkpoint_every=STEPS // 2, sample_every=STEPS)
    return tiny_config(**{**base, **overrides})


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_close_trees(got, want, *, scale=1e-4, noise=lambda path: False):
    """Leaf by leaf to rounding, relative to each leaf's scale; ``noise(path)`` leaves only finite."""
    flat_got, tree_got = jax.tree_util.tree_flatten_with_path(numpy_tree(got))
    flat_want, tree_want = jax.tree_util.tree_flatten_with_path(numpy_tree(want))
    assert tree_got == tree_want
    for (path, x), (_, y) in zip(flat_got, flat_want):
        name = jax.tree_util.keystr(path)
        if noise(name):
            assert np.all(np.isfinite(x)), name
        elif np.issubdtype(y.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=scale * float(np.max(np.abs(y)) or 1.0), err_msg=name)
        else:  # step counters, PRNG key data
            np.testing.assert_array_equal(x, y, err_msg=name)


def _removed_by_batchnorm(name: str) -> bool:
    """G's conv and dense biases that BatchNorm subtracts again (norm='batch'): their true gradient is
    zero, so Adam turns a rounding-level gradient into full-size steps and their values are noise in
    any two runs. Only the output conv's bias reaches the images."""
    return name.endswith("['bias']") and "final_conv" not in name


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Single-seed runs, trained once per test module (and xdist worker) and shared by the forms."""
    done: dict = {}

    def run(seed: int, **overrides):
        key = (seed, tuple(sorted(overrides.items())))
        if key not in done:
            workdir = tmp_path_factory.mktemp(f"seed{seed}")
            done[key] = (train.train_and_evaluate(_config(seed=seed, **overrides), str(workdir)), _records(workdir))
        return done[key]

    return run


def _check_seeds_match_single_runs(tmp_path: Path, alone, form: str, **overrides) -> None:
    """Seeds 3 and 4 trained at once (interrupted and resumed halfway) vs each trained alone."""
    workdir = tmp_path / "seeds"
    train.train_and_evaluate(_config(seed=3, num_seeds=2, seed_batching=form, num_train_steps=STEPS // 2,
                                     **overrides), str(workdir))
    config = _config(seed=3, num_seeds=2, seed_batching=form, **overrides)
    both = train.train_and_evaluate(config, str(workdir))
    records = _records(workdir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # resumed, not restarted
    generator = gan_state.create_models(config)[0]  # (a conditional run's num_classes: resolved from the data)
    for index, seed in enumerate((3, 4)):
        single, single_records = alone(seed, **overrides)
        mine = gan_state.select_seed(both, index)
        for field in ("d_params", "d_stats", "d_opt_state"):
            _assert_close_trees(getattr(mine, field), getattr(single, field))
        batchnorm = config.norm == "batch"
        for field in ("g_params", "g_opt_state", "ema_params"):
            _assert_close_trees(getattr(mine, field), getattr(single, field),
                                noise=_removed_by_batchnorm if batchnorm else lambda name: False)
        # BN's running means absorb those biases' noise (the model subtracts both in inference mode).
        _assert_close_trees(mine.g_stats, single.g_stats, scale=1e-3 if batchnorm else 1e-4)
        np.testing.assert_array_equal(jax.random.key_data(mine.key), jax.random.key_data(single.key))
        for mine_record, alone_record in zip(records, single_records, strict=True):
            for name in TRAIN_METRICS:
                np.testing.assert_allclose(mine_record[f"seed{seed}/{name}"], alone_record[name], rtol=1e-4,
                                           err_msg=f"step {alone_record['step']} {name}")
        # Samples: the same generator up to rounding (the EMA weights, as sampling uses them).
        got = sampling.generate_samples(generator, gan_state.generator_variables(mine), num=16, seed=1)
        want = sampling.generate_samples(generator, gan_state.generator_variables(single), num=16, seed=1)
        differ = np.abs(got.astype(int) - want.astype(int))
        assert differ.max() <= 1 and differ.mean() < 0.05  # uint8: rounding moves a few pixels by one level
    for record in records:
        # The plain names are the mean over the seeds, and the two seeds really differ.
        for name in TRAIN_METRICS:
            assert record[name] == pytest.approx((record[f"seed3/{name}"] + record[f"seed4/{name}"]) / 2, rel=1e-5)
        assert record["seed3/g_loss"] != record["seed4/g_loss"]
        assert record["seed3/d_loss"] != record["seed4/d_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["vmap", "loop"])
def test_two_seeds_train_exactly_as_two_single_runs(tmp_path, alone, form):
    _check_seeds_match_single_runs(tmp_path, alone, form)


@pytest.mark.slow
def test_two_conditional_seeds_with_diffaugment_train_as_two_single_runs(tmp_path, alone):
    # vmap: the accelerators' form, where a batching bug would hide ('loop' runs each seed's own ops).
    _check_seeds_match_single_runs(tmp_path, alone, "vmap", conditional=True, norm="batch", loss="hinge",
                                   diffaugment=POLICY)


@pytest.mark.slow
def test_host_batches_give_each_seed_its_device_batches(tmp_path):
    # Each seed's host loader reads with that seed's data stream: the batches the device gathers.
    config = dict(conditional=True, norm="batch", loss="hinge", num_seeds=2, num_train_steps=2, checkpoint_every=2)
    device = train.train_and_evaluate(_config(**config), str(tmp_path / "device"))
    host = train.train_and_evaluate(_config(**config, host_data=True), str(tmp_path / "host"))
    for field in ("d_params", "d_stats"):
        _assert_close_trees(getattr(host, field), getattr(device, field))
    for mine, theirs in zip(_records(tmp_path / "host"), _records(tmp_path / "device"), strict=True):
        for seed in (0, 1):
            np.testing.assert_allclose(mine[f"seed{seed}/d_loss"], theirs[f"seed{seed}/d_loss"], rtol=1e-5)


@pytest.mark.slow
def test_a_run_of_seeds_resumes_only_as_itself(tmp_path):
    config = _config(num_seeds=2, num_train_steps=1, checkpoint_every=1)
    state = train.train_and_evaluate(config, str(tmp_path))
    assert state.key.shape == (2,)  # one checkpoint holds both seeds
    summary = json.loads((tmp_path / "model_summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match=r"config.num_seeds=3: .*num_seeds=2.*--config.num_seeds=2"):
        train.train_and_evaluate(_config(num_seeds=3, num_train_steps=2), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config.num_seeds=1: .*num_seeds=2"):
        train.train_and_evaluate(_config(num_seeds=1, num_train_steps=2), str(tmp_path))


def test_seed_helpers():
    config = tiny_config(seed=5, num_seeds=3)
    assert gan_state.run_seeds(config) == (5, 6, 7)
    assert gan_state.run_seeds({"seed": 2}) == (2,)  # config.json of a run before num_seeds existed
    assert gan_state.parse_seed_indices("", config) == [0, 1, 2]
    assert gan_state.parse_seed_indices("2,0,2", config) == [2, 0]
    with pytest.raises(ConfigError, match=r"--seed_index=3: 3 out of range; .*3 seed\(s\): indices 0 to 2 "
                                          r"\(seeds 5, 6, 7\)"):
        gan_state.parse_seed_indices("3", config)
    with pytest.raises(ConfigError, match="comma-separated seed indices"):
        gan_state.parse_seed_indices("one", config)
    with pytest.raises(ConfigError, match="config.num_seeds=0"):
        gan_state.run_seeds({"seed": 0, "num_seeds": 0})
    assert gan_state.seed_path("runs/x/samples.npz", 6) == Path("runs/x/samples_seed6.npz")


def test_a_stacked_state_holds_each_seed_s_single_state():
    config = tiny_config(seed=1, num_seeds=2)
    generator, discriminator = gan_state.create_models(config)
    g_tx, d_tx = gan_state.create_optimizers(config)
    stacked = gan_state.create_train_state(config, generator, discriminator, g_tx, d_tx)
    assert stacked.step.shape == () and stacked.key.shape == (2,)
    for index, seed in enumerate((1, 2)):
        alone = gan_state.create_train_state(tiny_config(seed=seed), generator, discriminator, g_tx, d_tx)
        _assert_close_trees(gan_state.select_seed(stacked, index), alone)
        np.testing.assert_array_equal(numpy_tree(gan_state.select_seed(stacked, index).g_params["dense"]["kernel"]),
                                      numpy_tree(alone.g_params["dense"]["kernel"]))  # exactly, not to rounding
    with pytest.raises(ValueError, match="seed index 2 out of range"):
        gan_state.select_seed(stacked, 2)


# Two fake CPU devices: 2 vmapped seeds split over them (one seed per device) and 3 vmapped seeds
# (the device count does not divide them: every device holds every seed and the batch is split;
# looped seeds take this path too) train what the same seeds train on one device.
CASES = (("vmap", 2), ("vmap", 3))
_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from gan import state as gan_state, train
    from tests.gan.tiny import numpy_tree, tiny_config

    out = {"devices": jax.device_count()}
    for form, num_seeds in %r:
        name = f"{form}{num_seeds}"
        config = tiny_config(seed=0, num_seeds=num_seeds, seed_batching=form, num_train_steps=3, checkpoint_every=3)
        workdir = f"{sys.argv[1]}/{name}"
        final = train.train_and_evaluate(config, workdir)
        out[f"split_{name}"] = not final.g_params["dense"]["kernel"].sharding.is_fully_replicated
        state = gan_state.restore_state(workdir, config)[2]  # the checkpoint, written from the devices
        out[f"kernel_{name}"] = numpy_tree(state.g_params["dense"]["kernel"]).tolist()
        out[f"loss_{name}"] = [json.loads(l)["g_loss"] for l in open(f"{workdir}/metrics.jsonl")]
    print("RESULT " + json.dumps(out))
""" % (CASES,))  # noqa: UP031 - an f-string would double every brace of the script's own f-strings


def _run_on_devices(count: int, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env.update(XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={count}"]), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(workdir)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.integration
def test_seeds_on_two_devices_train_as_on_one(tmp_path):
    one, two = _run_on_devices(1, tmp_path / "one"), _run_on_devices(2, tmp_path / "two")
    assert one["devices"] == 1 and two["devices"] == 2
    # Only vmapped seeds whose count the devices divide are split over them, one seed per device.
    assert [two[f"split_{form}{n}"] for form, n in CASES] == [True, False]
    assert not any(one[f"split_{form}{n}"] for form, n in CASES)
    for form, n in CASES:
        np.testing.assert_allclose(two[f"loss_{form}{n}"], one[f"loss_{form}{n}"], rtol=1e-5)
        kernel = np.asarray(one[f"kernel_{form}{n}"])
        np.testing.assert_allclose(two[f"kernel_{form}{n}"], kernel, rtol=1e-5, atol=1e-4 * np.abs(kernel).max())


@pytest.mark.slow
def test_sample_evaluate_and_export_pick_a_seed(tmp_path, capsys):
    from gan import evaluate, export, sample
    from sympad.train.config import write_config

    config = _config(seed=3, num_seeds=2, num_train_steps=2, checkpoint_every=2)
    state = train.train_and_evaluate(config, str(tmp_path))
    write_config(config, tmp_path)  # what gan.main writes first
    sample.main([f"--workdir={tmp_path}", "--num=24", "--batch=8", f"--grid={tmp_path / 'grid.png'}"])
    generator = gan_state.create_models(config)[0]
    for index, seed in enumerate((3, 4)):
        with np.load(tmp_path / f"samples_seed{seed}.npz") as f:
            variables = gan_state.generator_variables(gan_state.select_seed(state, index))
            want = sampling.generate_samples(generator, variables, num=24, seed=0, batch_size=8)
            np.testing.assert_array_equal(f["images"], want)
        assert (tmp_path / f"grid_seed{seed}.png").is_file()
    with pytest.raises(ConfigError, match="--seed_index=2: 2 out of range"):
        sample.main([f"--workdir={tmp_path}", "--seed_index=2"])

    flags = ["--feature_network=offline", "--reference=synthetic", "--num_reference=24", "--batch_size=8",
             "--precision_recall=false"]
    combined = evaluate.main([f"--workdir={tmp_path}", *flags])
    per_seed = {seed: json.loads((tmp_path / f"eval_offline_cifar10_test10k_seed{seed}.json").read_text())
                for seed in (3, 4)}
    fids = [per_seed[seed]["metrics"]["fid_offline_cifar10"] for seed in (3, 4)]
    assert fids[0] != fids[1]
    assert combined["mean"]["fid_offline_cifar10"] == pytest.approx(np.mean(fids))
    assert combined["std"]["fid_offline_cifar10"] == pytest.approx(np.std(fids, ddof=1))
    assert json.loads((tmp_path / "eval_offline_cifar10_test10k_seeds.json").read_text())["num_seeds"] == 2
    assert "fid_offline_cifar10 = " in capsys.readouterr().out
    only = evaluate.main([f"--workdir={tmp_path}", "--seed_index=1", *flags])
    assert list(only["seeds"]) == ["4"] and only["mean"]["fid_offline_cifar10"] == pytest.approx(fids[1])

    export.main([f"--workdir={tmp_path}", f"--out={tmp_path / 'g.bin'}", "--seed_index=1", "--platforms=cpu",
                 "--no_ema"])
    assert json.loads((tmp_path / "g.bin.json").read_text())["seed"] == 4
    z = np.asarray(jax.random.normal(jax.random.key(0), (4, config.z_dim)))
    live = gan_state.generator_variables(gan_state.select_seed(state, 1), use_ema=False)
    np.testing.assert_allclose(np.asarray(export.load(tmp_path / "g.bin").call(z)),
                               np.asarray(generator.apply(live, z, train=False)), atol=1e-5)
    with pytest.raises(ConfigError, match="export one seed"):
        export.main([f"--workdir={tmp_path}", f"--out={tmp_path / 'g.bin'}", "--seed_index=0,1"])

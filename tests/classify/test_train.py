"""Classification training, from the optimizer's pieces to the command lines.

Optimizer pieces vs closed forms, one step, classify.main and classify.profile end to end.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from classify import models, profile, train
from classify import state as classify_state
from classify import step as classify_step
from tests.classify.test_models import _conv_macs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "classify"


def _config(name: str, arg: str) -> ml_collections.ConfigDict:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("family", ["blocks_cifar/sep", "blocks_cifar/invert", "mobilenetv2"])
def test_weight_decay_mask_excludes_depthwise_bn_and_biases(family):
    kwargs = {
        "blocks_cifar/sep": dict(block="sep", depth=8, width=4),
        "blocks_cifar/invert": dict(block="invert", depth=8, width=4),
        "mobilenetv2": dict(width=0.25),
    }[family]
    model = models.create_model(family.split("/")[0], **kwargs)
    params = models.param_shapes(model, 32)["params"]
    mask = classify_state.weight_decay_mask(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_mask = jax.tree.leaves(mask)
    depthwise = 0
    for (path, leaf), decayed in zip(flat, flat_mask):
        name = str(path[-1].key)
        # Depthwise kernels are recognisable by shape alone: (k, k, 1, C) with k > 1.
        is_depthwise = leaf.ndim == 4 and leaf.shape[2] == 1 and leaf.shape[0] > 1
        depthwise += is_depthwise
        assert decayed == (name == "kernel" and not is_depthwise), jax.tree_util.keystr(path)
    assert depthwise > 0


def test_optimizer_is_sgd_momentum_with_masked_coupled_decay():
    config = _config("resnet_cifar", "")
    tx = classify_state.create_optimizer(config, total_steps=100, steps_per_epoch=10)
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.standard_normal((2, 2, 3, 4)).astype(np.float32)},
        "block_depthwise": {"kernel": rng.standard_normal((3, 3, 1, 4)).astype(np.float32)},
        "bn": {"scale": np.ones(4, np.float32), "bias": rng.standard_normal(4).astype(np.float32)},
        "classifier": {"kernel": rng.standard_normal((4, 2)).astype(np.float32), "bias": np.ones(2, np.float32)},
    }
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    updates2, _ = tx.update(grads, state, params)
    lr0, lr1 = 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 100))
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [k.key for k in path]
        decayed = keys[-1] == "kernel" and keys[0] != "block_depthwise"
        g = 0.5 + (1e-4 * p if decayed else 0.0)
        got1 = _get(updates, keys)
        got2 = _get(updates2, keys)
        np.testing.assert_allclose(got1, -lr0 * g, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(got2, -lr1 * (0.9 * g + g), rtol=1e-5, atol=1e-8)  # momentum 0.9, not Nesterov


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return np.asarray(tree)


def test_learning_rate_schedules_closed_form():
    config = _config("resnet_cifar", "")
    cosine = classify_state.learning_rate_schedule(config, total_steps=1000, steps_per_epoch=10)
    for t in (0, 250, 500, 999, 1000):
        assert float(cosine(t)) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * t / 1000)), abs=1e-7)
    config = _config("densenet_cifar", "")
    assert config.optimizer.schedule == "piecewise"
    piecewise = classify_state.learning_rate_schedule(config, total_steps=1000, steps_per_epoch=10)
    steps, rates = (0, 499, 500, 749, 750, 999), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert [float(piecewise(t)) for t in steps] == pytest.approx(rates)
    config.optimizer.warmup_epochs = 5.0
    warm = classify_state.learning_rate_schedule(config, total_steps=1000, steps_per_epoch=10)
    assert float(warm(25)) == pytest.approx(0.05)


def test_one_train_step_lowers_the_loss_on_a_fixed_batch():
    config = _config("resnet_cifar", "kernel=C2sp,runlocal")
    config.augment = False  # the same batch every step
    config.optimizer.learning_rate = 0.05
    config.model.width = 4
    model = classify_state.create_model(config)
    tx = classify_state.create_optimizer(config, total_steps=100, steps_per_epoch=10)
    state = classify_state.create_train_state(model, tx, seed=0, image_size=16)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (16,), dtype=np.int32))
    _, step = classify_step.make_train_step(model, tx, config, num_classes=10)
    before = jax.tree.map(np.asarray, state.params)
    state, first = step(state, images, labels)
    state, second = step(state, images, labels)  # reports the loss after the first update
    assert int(state.step) == 2
    assert float(second["loss"]) < float(first["loss"])
    assert np.isfinite(float(first["grad_norm"])) and float(first["grad_norm"]) > 0
    moved = jax.tree.map(lambda a, b: not np.allclose(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(moved))


def _run_main(workdir: Path, *overrides: str):
    from sympad.train.config import run_main

    argv = [
        "classify.main",
        f"--config={CONFIGS / 'resnet_cifar.py'}:kernel=C2sp,data=synthetic,runlocal",
        f"--workdir={workdir}",
        "--config.input.max_examples=64",
        "--config.input.eval_max_examples=40",
        "--config.batch_size=16",
        "--config.eval_batch_size=32",
        "--config.model.width=4",
        "--config.log_every=1",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        *overrides,
    ]
    return run_main(train.train_and_evaluate, argv=argv)


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_main_end_to_end_two_steps_then_resume(tmp_path):
    # The first run also exercises mixup and cutout (neither is part of the checkpointed state).
    result = _run_main(tmp_path, "--config.num_train_steps=2", "--config.mixup_alpha=1.0", "--config.cutout=8")
    assert (tmp_path / "config.json").exists() and (tmp_path / "checkpoints" / "2").is_dir()
    records = _records(tmp_path)
    evals = [r for r in records if "test_error" in r]
    assert [r["step"] for r in evals] == [2]
    assert 0.0 <= evals[0]["test_error"] <= 1.0 and np.isfinite(evals[0]["test_loss"])
    # 40 test images: the error is a multiple of 1/40 (every example counted once, padding masked).
    assert evals[0]["test_error"] * 40 == pytest.approx(round(evals[0]["test_error"] * 40), abs=1e-4)
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2]
    assert result["test_error"] == evals[0]["test_error"]
    assert result["num_params"] == models.count_params(classify_state.create_model(_tiny_model_config()), 32)

    # Resume: the second run starts at the checkpointed step 2 and only trains step 3.
    _run_main(tmp_path, "--config.num_train_steps=3")
    records = _records(tmp_path)
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3]
    assert json.loads((tmp_path / "final_metrics.json").read_text())["epoch"] == pytest.approx(3 / 4)


@pytest.mark.slow  # 5 s: the model's init compiles
def test_restore_state_rebuilds_a_run_from_its_workdir(tmp_path):
    from sympad.train.checkpoint import Checkpointer
    from sympad.train.config import checkpoint_dir, write_config

    with pytest.raises(FileNotFoundError, match="config.json"):
        classify_state.restore_state(tmp_path)
    config = _tiny_model_config()
    write_config(config, tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        classify_state.restore_state(tmp_path)
    model = classify_state.create_model(config)
    tx = classify_state.create_optimizer(config, total_steps=100, steps_per_epoch=10)
    state = classify_state.create_train_state(model, tx, seed=3, image_size=16)
    with Checkpointer(checkpoint_dir(tmp_path)) as checkpointer:
        checkpointer.save(5, state)
    restored_config, restored_model, step, restored = classify_state.restore_state(tmp_path, image_size=16)
    assert step == 5 and restored_model == model and restored_config.to_dict() == json.loads(
        (tmp_path / "config.json").read_text())
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tiny_model_config() -> ml_collections.ConfigDict:
    config = _config("resnet_cifar", "kernel=C2sp,runlocal")
    config.model.width = 4
    return config


@pytest.mark.slow
def test_profile_prints_every_column(tmp_path):
    out = io.StringIO()
    path = tmp_path / "profile.json"
    with contextlib.redirect_stdout(out):
        result = profile.main([
            "classify.profile",
            f"--config={CONFIGS / 'resnet_cifar.py'}:kernel=C2sp,runlocal",
            f"--json={path}",
            "--config.model.width=4",
            "--batch_size=4",
            "--warmup=0",
            "--repeats=2",
            "--steps=1",
        ])
    text = out.getvalue()
    for key, header, _, _ in profile.COLUMNS:
        if key != "peak_bytes_in_use":  # GPU only
            assert header in text
    saved = json.loads(path.read_text())
    for key in ("params", "flops_per_image", "train_memory_bytes", "images_per_s"):
        assert key in saved and saved[key] > 0
    model = classify_state.create_model(_tiny_model_config())
    assert saved["params"] == models.count_params(model, 32)
    # XLA counts 2 FLOPs per multiply-add but skips taps on the zero padding (-), and adds BN/ReLU/pooling (+).
    macs = _conv_macs(model)
    assert 1.6 * macs <= saved["flops_per_image"] <= 3 * macs
    # The train step's arguments hold at least the parameters and their momentum (float32).
    assert saved["argument_bytes"] >= 2 * 4 * saved["params"]
    assert saved["train_memory_bytes"] == saved["temp_bytes"] + saved["argument_bytes"] + saved["output_bytes"]
    per_round = saved["images_per_s_all"]
    assert len(per_round) == 2 and saved["images_per_s"] == pytest.approx(np.median(per_round))
    assert result["params"] == saved["params"]


CONFIG_NAMES = [
    "resnet_cifar", "densenet_cifar", "wide_densenet", "blocks_cifar100",
    "resnet50_imagenet", "densenet121_imagenet", "mobilenetv2_imagenet",
]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_builds_and_documents_its_command(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert f"python -m classify.main --config=configs/classify/{name}.py" in module.__doc__
    full = module.get_config(None)
    assert full.batch_size in (64, 256) and full.optimizer.momentum == 0.9 and full.optimizer.learning_rate == 0.1
    assert full.num_epochs == {"wide_densenet": 600}.get(name, 100 if "imagenet" in name else 300)
    classify_state.create_model(full)  # builds (parameter counts are checked in test_classify_models)
    local = module.get_config("runlocal")
    assert local.data == "digits" and local.num_train_steps > 0
    assert models.count_params(classify_state.create_model(local), 32) < 200_000
    with pytest.raises(ValueError, match="valid keys"):
        module.get_config("depht=20")

"""Configs are validated whole, before any data is loaded or anything compiled; the reliability keys.

Covers: every shipped config passes ``validate``; each bad field fails with a ValueError naming
``config.<field>``; validation runs before the data is touched; ``allow_corrupt`` reaches the data
loader and the skipped-file count reaches the first metrics record; ``resume_corrupt`` reaches the
Checkpointer; the GAN suite keeps its best-FID checkpoint when it evaluates.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sympad.train import data as sdata
from sympad.train import loop
from sympad.train.checkpoint import CheckpointError
from sympad.train.config import (
    LOOP_FIELDS,
    RESUME_CORRUPT,
    RUN_FIELDS,
    add_loop_fields,
)

ROOT = Path(__file__).resolve().parents[2]
GAN_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "gan").glob("*.py") if p.stem not in ("__init__", "common"))
CLASSIFY_CONFIGS = sorted(
    p.stem for p in (ROOT / "configs" / "classify").glob("*.py") if p.stem not in ("__init__", "common"))


def _config(suite: str, name: str, arg: str | None = "runlocal") -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{suite}.{name}").get_config(arg)


def _with(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    """A copy with dotted fields (``optimizer__b1``) set to any value, whatever its type."""
    fields = config.to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        holder = fields
        for part in parents:
            holder = holder[part]
        holder[leaf] = value
    return ml_collections.ConfigDict(fields)


def _validate(suite: str):
    return importlib.import_module(f"{suite}.train").validate


# ----------------------------------------------------------------------------------------------
# Every shipped config is valid; every bad field is named


@pytest.mark.parametrize("name", GAN_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal", "kernel=C2sp,runlocal", "kernel=C4sp,norm=batch,loss=hinge"])
def test_shipped_gan_configs_are_valid(name, arg):
    _validate("gan")(_config("gan", name, arg))


@pytest.mark.parametrize("name", CLASSIFY_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_shipped_classify_configs_are_valid(name, arg):
    _validate("classify")(_config("classify", name, arg))


# (field, bad value, what the message must say): shared fields first, then each suite's.
SHARED_BAD = [
    ("batch_size", -3, "config.batch_size=-3: must be an int >= 1"),
    ("batch_size", 0, "config.batch_size"),
    ("batch_size", 2.5, "config.batch_size"),
    ("seed", -1, "config.seed"),
    ("seed", True, "config.seed"),
    ("kernel", "C5sp5", "config.kernel"),
    ("data", "", "config.data"),
    ("data", "folder:", "config.data"),
    ("data", "Not A Name!", "config.data"),
    ("log_every", 1.5, "config.log_every"),
    ("checkpoint_every", "often", "config.checkpoint_every"),
    ("max_checkpoints", 0, "config.max_checkpoints"),
    ("host_data", "yes", "config.host_data"),
    ("conv_implementation", "fastest", "config.conv_implementation"),
    ("allow_corrupt", 1, "config.allow_corrupt"),
    ("resume_corrupt", "skip", "config.resume_corrupt"),
    ("optimizer__learning_rate", 0.0, "config.optimizer.learning_rate"),
    ("optimizer__learning_rate", float("nan"), "config.optimizer.learning_rate"),
    ("optimizer__schedule", "step", "config.optimizer.schedule"),
]
GAN_BAD = [
    ("arch", "dcgan", "config.arch"),
    ("norm", "layer", "config.norm"),
    ("upsample", "bilinear", "config.upsample"),
    ("weight_init", "xavier", "config.weight_init"),
    ("loss", "wgan", "config.loss"),
    ("z_dim", 0, "config.z_dim"),
    ("bottom_size", -1, "config.bottom_size"),
    ("max_examples", -5, "config.max_examples"),
    ("optimizer__b1", 1.0, "config.optimizer.b1"),
    ("optimizer__b2", -0.1, "config.optimizer.b2"),
    ("n_critic", 0, "config.n_critic"),
    ("ema_decay", 1.0, "config.ema_decay"),
    ("ema_decay", -0.5, "config.ema_decay"),
    ("num_train_steps", 0, "config.num_train_steps"),
    ("unroll_d_steps", "no", "config.unroll_d_steps"),
    ("num_grid", 0, "config.num_grid"),
    ("digits_quality_samples", -1, "config.digits_quality_samples"),
    ("g_channels", (32, 0, 32, 32), "config.g_channels"),
    ("g_channels", (32,), "config.g_channels"),
    ("d_channels", (32, -1, 32, 32), "config.d_channels"),
    ("d_downsample", (1, 1, 0), "config.d_downsample"),
    ("d_downsample", (1, 2, 0, 0), "config.d_downsample"),
    ("eval__feature_network", "vgg", "config.eval.feature_network"),
    ("eval__protocol", "fid50k", "config.eval.protocol"),
    ("eval__num_samples", -1, "config.eval.num_samples"),
]
CLASSIFY_BAD = [
    ("model__name", "vgg", "config.model.name"),
    ("model__num_classes", 0, "config.model.num_classes"),
    ("model__dtype", "float64", "config.model.dtype"),
    ("model__depth", 7, "config.model"),
    ("input__image_size", -32, "config.input.image_size"),
    ("input__crop_pad", -1, "config.input.crop_pad"),
    ("input__flip", "yes", "config.input.flip"),
    ("eval_batch_size", 0, "config.eval_batch_size"),
    ("num_train_steps", -1, "config.num_train_steps"),
    ("optimizer__momentum", 1.5, "config.optimizer.momentum"),
    ("optimizer__weight_decay", -1e-4, "config.optimizer.weight_decay"),
    ("optimizer__warmup_epochs", -1.0, "config.optimizer.warmup_epochs"),
    ("optimizer__nesterov", "no", "config.optimizer.nesterov"),
    ("mixup_alpha", -1.0, "config.mixup_alpha"),
    ("cutout", -4, "config.cutout"),
    ("augment", None, "config.augment"),
]


@pytest.mark.parametrize(("field", "value", "needle"), SHARED_BAD + GAN_BAD)
def test_gan_bad_field_is_named(field, value, needle):
    with pytest.raises(ValueError, match="^" + needle.replace(".", r"\.").replace("(", r"\(")):
        _validate("gan")(_with(_config("gan", "sngan_cifar10"), **{field: value}))


@pytest.mark.parametrize(("field", "value", "needle"), SHARED_BAD + CLASSIFY_BAD)
def test_classify_bad_field_is_named(field, value, needle):
    with pytest.raises(ValueError, match="^" + needle.replace(".", r"\.").replace("(", r"\(")):
        _validate("classify")(_with(_config("classify", "resnet_cifar"), **{field: value}))


def test_messages_list_the_allowed_values():
    with pytest.raises(ValueError, match="must be one of 'ns', 'hinge'"):
        _validate("gan")(_with(_config("gan", "sngan_cifar10"), loss="wgan"))
    with pytest.raises(ValueError, match="must be one of 'raise', 'fall_back'"):
        _validate("classify")(_with(_config("classify", "resnet_cifar"), resume_corrupt="ignore"))


def test_cross_field_rules():
    gan = _config("gan", "sngan_cifar10")
    with pytest.raises(ValueError, match=r"config\.d_downsample=\(\): must be one 0/1 per config\.d_channels"):
        _validate("gan")(_with(gan, d_downsample=()))
    with pytest.raises(ValueError, match=r"config\.d_downsample=.*only with config\.d_channels"):
        _validate("gan")(_with(gan, d_channels=(), d_downsample=(1, 1, 0, 0)))
    # 16x16 images halved five times: not a whole side.
    with pytest.raises(ValueError, match=r"config\.d_downsample=.*halves the 16x16 images 5 times"):
        _validate("gan")(_with(gan, d_channels=(32,) * 5, d_downsample=(1,) * 5))
    classify = _config("classify", "resnet_cifar")
    with pytest.raises(ValueError, match=r"config\.input\.crop_pad=40: must be < config\.input\.image_size=32"):
        _validate("classify")(_with(classify, input__image_size=32, input__crop_pad=40))
    # num_epochs only matters when num_train_steps does not override it.
    _validate("classify")(_with(classify, num_epochs=0, num_train_steps=5))
    with pytest.raises(ValueError, match=r"config\.num_epochs=0"):
        _validate("classify")(_with(classify, num_epochs=0, num_train_steps=0))


def test_batch_must_split_over_the_devices(monkeypatch):
    config = _config("gan", "sngan_cifar10")  # runlocal: batch 32
    monkeypatch.setattr(jax, "device_count", lambda: 3)
    with pytest.raises(ValueError, match=r"config\.batch_size=32: must be a multiple of the 3 devices"):
        _validate("gan")(config)
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    _validate("gan")(config)


def test_data_source_syntax(tmp_path):
    ok = ["digits", "synthetic", "cifar10", "lsun/bedroom", "celeb_a_hq/128", "cifar10:3.0.2", f"folder:{tmp_path}"]
    for name in ok:
        RUN_FIELDS["data"].check(name)
    for name in ["", "folder:", f"folder:{tmp_path / 'none'}", "CIFAR 10", "cifar10;rm"]:
        with pytest.raises(ValueError, match=r"^config\.data="):
            RUN_FIELDS["data"].check(name)


def test_loop_fields_must_all_be_present():
    config = _config("gan", "sngan_cifar10")
    fields = config.to_dict()
    del fields["resume_corrupt"]
    with pytest.raises(ValueError, match=r"config\.resume_corrupt is missing"):
        _validate("gan")(ml_collections.ConfigDict(fields))


# ----------------------------------------------------------------------------------------------
# Each field declared once: the suites' tables are the whole config


def _table(suite: str) -> dict:
    return importlib.import_module(f"{suite}.fields").__dict__[f"{suite.upper()}_FIELDS"]


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    return {name for key, value in tree.items()
            for name in (_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key})}


@pytest.mark.parametrize(("suite", "name"),
                         [("gan", n) for n in GAN_CONFIGS] + [("classify", n) for n in CLASSIFY_CONFIGS])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_the_table_declares_every_field_of_the_shipped_configs(suite, name, arg):
    fields = _leaves(_config(suite, name, arg).to_dict())
    table = set(_table(suite))
    assert table <= fields, sorted(table - fields)
    # Only the model block holds fields of its own: each family's, checked by building the model.
    assert {f for f in fields - table if not f.startswith("model.")} == set(), sorted(fields - table)
    assert suite == "classify" or not fields - table


def test_the_base_config_is_the_table_s_defaults():
    from sympad.train.config import default_config

    assert _config("gan", "sngan_cifar10", None).to_dict() == default_config(_table("gan")).to_dict()
    classify = _config("classify", "resnet_cifar", None).to_dict()
    for name, f in _table("classify").items():
        block, _, leaf = name.rpartition(".")
        assert (classify[block] if block else classify)[leaf] == f.default, name


@pytest.mark.parametrize("suite", ["gan", "classify"])
def test_the_boundary_checks_every_field_of_the_table(suite):
    from sympad.train.config import lock_and_validate

    config = _config(suite, "sngan_cifar10" if suite == "gan" else "resnet_cifar")
    bad = _with(config, **({"loss": "wgan"} if suite == "gan" else {"augment": "yes"}))
    with pytest.raises(ValueError, match=r"^config\.(loss|augment)="):
        lock_and_validate(bad, _table(suite))
    lock_and_validate(bad)  # without the table: only the shared fields
    assert lock_and_validate(config, _table(suite)).is_locked


@pytest.mark.integration
def test_helpfull_lists_the_fields():
    result = subprocess.run([sys.executable, "-m", "gan.main", "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    text = " ".join(result.stdout.split())  # absl wraps the lines
    for f in _table("gan").values():
        assert " ".join(f.describe().split()) in text, f.name


# ----------------------------------------------------------------------------------------------
# Validation comes first; allow_corrupt reaches the loader


class _Stop(Exception):
    pass


@pytest.mark.parametrize("suite", ["gan", "classify"])
def test_validated_before_any_data_is_loaded(monkeypatch, tmp_path, suite):
    def load(*args, **kwargs):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(sdata, "load_split", load)  # the suites load through it
    config = _config(suite, "sngan_cifar10" if suite == "gan" else "resnet_cifar")
    train = importlib.import_module(f"{suite}.train")
    with pytest.raises(ValueError, match=r"config\.optimizer\.learning_rate"):
        train.train_and_evaluate(_with(config, optimizer__learning_rate=-1.0), str(tmp_path))


@pytest.mark.parametrize("suite", ["gan", "classify"])
@pytest.mark.parametrize("allow", [False, True])
def test_allow_corrupt_reaches_the_loader(monkeypatch, tmp_path, suite, allow):
    seen = []

    def load(*args, **kwargs):
        seen.append(kwargs.get("allow_corrupt"))
        raise _Stop

    monkeypatch.setattr(sdata, "load_split", load)  # the suites load through it
    config = _with(_config(suite, "sngan_cifar10" if suite == "gan" else "resnet_cifar"), allow_corrupt=allow)
    with pytest.raises(_Stop):
        importlib.import_module(f"{suite}.train").train_and_evaluate(config, str(tmp_path))
    assert seen == [allow]


def _image_folder(root: Path, *, good: int, bad: int) -> Path:
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"ok{i}.png")
    for i in range(bad):
        (root / f"bad{i}.png").write_bytes(b"\x89PNG but not really")
    return root


def _fake_loop(monkeypatch, calls: list) -> None:
    def train(config, workdir, **kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(ema_params=None, g_params={}, g_stats={}), {}

    monkeypatch.setattr(loop, "train", train)


def test_gan_skipped_files_reach_the_first_record(monkeypatch, tmp_path):
    folder = _image_folder(tmp_path / "images", good=3, bad=2)
    config = _with(_config("gan", "sngan_cifar10"), data=f"folder:{folder}", allow_corrupt=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the decoded split's cache
    calls: list = []
    _fake_loop(monkeypatch, calls)
    importlib.import_module("gan.train").train_and_evaluate(config, str(tmp_path / "run"))
    (kwargs,) = calls
    assert kwargs["first_record"]["data/skipped"] == 2
    assert kwargs["best_metric"] is None  # no evaluation: no best-FID checkpoint


def test_gan_keeps_the_best_fid_when_it_evaluates(monkeypatch, tmp_path):
    gan_train = importlib.import_module("gan.train")
    config = _with(_config("gan", "sngan_cifar10"), eval_every=10, digits_quality_samples=0)
    class Evaluator:  # gan.metrics.Evaluator's interface: settings, fid_key, called with the samples
        settings = types.SimpleNamespace(num_samples=50)
        fid_key = "fid_offline_cifar10"

        def __call__(self, images, labels=None):
            assert len(images) == 50
            return {"fid_offline_cifar10": 12.5, "is_offline_cifar10": 2.0}

    monkeypatch.setattr(gan_train, "_build_evaluator", lambda config: Evaluator())
    monkeypatch.setattr(gan_train.sampling, "generate_samples",
                        lambda *a, num, **k: np.zeros((num, 16, 16, 3), np.uint8))
    calls: list = []
    _fake_loop(monkeypatch, calls)
    gan_train.train_and_evaluate(config, str(tmp_path))
    (kwargs,) = calls
    assert kwargs["best_metric"] == "eval/fid"
    assert kwargs["first_record"] is None  # digits: nothing skipped, so no step-0 record
    (evaluate,) = [h for h in kwargs["hooks"] if h.name == "eval_every"]
    state = types.SimpleNamespace(ema_params=None, g_params={}, g_stats={})
    record = evaluate.fn(10, state, None)
    assert record == {"eval/fid_offline_cifar10": 12.5, "eval/is_offline_cifar10": 2.0, "eval/fid": 12.5}


# ----------------------------------------------------------------------------------------------
# resume_corrupt reaches the Checkpointer (a real, tiny loop)


@flax.struct.dataclass
class _State:
    step: jax.Array
    w: jax.Array


def _tiny_run(workdir: Path, total: int, resume_corrupt: str) -> _State:
    images = np.random.default_rng(0).integers(0, 256, (16, 2, 2, 3), dtype=np.uint8)
    dataset = sdata.Dataset(images=images, labels=None, num_classes=None, name="fake")

    @jax.jit
    def step(state, images):
        batch, _ = sdata.get_batch(images, None, jax.random.key(0), state.step, batch_size=4)
        w = 0.5 * state.w + 0.5 * jnp.mean(batch, axis=0)
        return _State(step=state.step + 1, w=w), {"loss": jnp.sum(w)}

    data = loop.Input(dataset=dataset, device_step=step, host_loader=None, host_step=None)
    config = add_loop_fields(ml_collections.ConfigDict(), log_every=1, checkpoint_every=2, max_checkpoints=10,
                             resume_corrupt=resume_corrupt)
    state, _ = loop.train(config, workdir, mesh=loop.checked_mesh(4), data=data, total_steps=total,
                          init_state=lambda: _State(step=jnp.zeros((), jnp.int32), w=jnp.zeros((2, 2, 3))))
    return state


def _flip_byte(step_dir: Path) -> None:
    path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_corrupt_reaches_the_checkpointer(tmp_path):
    assert LOOP_FIELDS["resume_corrupt"].default == "raise" and RESUME_CORRUPT == ("raise", "fall_back")
    reference = _tiny_run(tmp_path / "reference", 6, "raise")
    _tiny_run(tmp_path / "run", 4, "raise")
    _flip_byte(tmp_path / "run" / "checkpoints" / "4")
    with pytest.raises(CheckpointError, match="--config.resume_corrupt=fall_back"):
        _tiny_run(tmp_path / "run", 6, "raise")
    state = _tiny_run(tmp_path / "run", 6, "fall_back")  # from step 2, the damaged 4 set aside
    assert int(state.step) == 6
    np.testing.assert_array_equal(np.asarray(state.w), np.asarray(reference.w))

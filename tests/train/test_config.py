"""Tests for sympad.train.config: fields, big_vision-style config args, absl entry point, config.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from absl import flags

from sympad.train.config import (
    LOOP_FIELDS,
    Field,
    Range,
    add_loop_fields,
    checkpoint_dir,
    default_config,
    describe_fields,
    field_table,
    lock_and_validate,
    parse_config_arg,
    read_config,
    run_main,
    validate_fields,
    with_defaults,
    write_config,
)
from sympad.train.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

DEFAULTS = dict(kernel="C3", data="cifar10", runlocal=False, steps=100, lr=0.1, note=None)


# ----------------------------------------------------------------------------------------------
# parse_config_arg


def test_defaults_when_no_arg():
    for arg in (None, "", " , "):
        assert parse_config_arg(arg, DEFAULTS).to_dict() == DEFAULTS


def test_big_vision_style_arg_with_casting():
    c = parse_config_arg("kernel=C2sp,data=folder:/a/b=c,runlocal,steps=7,lr=3,note=hi", DEFAULTS)
    assert c.to_dict() == dict(kernel="C2sp", data="folder:/a/b=c", runlocal=True, steps=7, lr=3.0, note="hi")
    assert type(c.steps) is int and type(c.lr) is float and type(c.runlocal) is bool


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True), ("True", True), ("1", True), ("yes", True),
        ("false", False), ("FALSE", False), ("0", False), ("no", False),
    ],
)
def test_bool_values(text, value):
    assert parse_config_arg(f"runlocal={text}", {**DEFAULTS, "runlocal": not value}).runlocal is value


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError) as info:
        parse_config_arg("kernal=C2", DEFAULTS)
    message = str(info.value)
    assert "'kernal'" in message
    assert "valid keys: data, kernel, lr, note, runlocal, steps" in message


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("steps=1.5", "steps='1.5': expected an int"),
        ("lr=fast", "lr='fast': expected a float"),
        ("runlocal=maybe", "expected a bool"),
        ("steps", "'steps' needs a value"),
        ("kernel=C2,kernel=C4", "given twice"),
    ],
)
def test_bad_values(arg, needle):
    with pytest.raises(ValueError, match=needle):
        parse_config_arg(arg, DEFAULTS)


def test_choices_and_unsupported_default_types():
    assert parse_config_arg("kernel=C4sp", DEFAULTS, choices={"kernel": ("C3", "C4sp")}).kernel == "C4sp"
    with pytest.raises(ValueError, match="must be one of C3, C4sp"):
        parse_config_arg("kernel=C5", DEFAULTS, choices={"kernel": ("C3", "C4sp")})
    with pytest.raises(ValueError, match="only bool, int, float and str"):
        parse_config_arg("widths=1", {"widths": (1, 2)})


# ----------------------------------------------------------------------------------------------
# Fields


@pytest.mark.parametrize("field, value, problem", [
    (Field("n", int, 1, "", Range(1)), 0, "must be an int >= 1"),
    (Field("n", int, 1, "", Range(1)), True, "must be an int >= 1"),  # a bool is not an int
    (Field("n", int, 1, "", Range(1)), 2.0, "must be an int >= 1"),
    (Field("b", float, 0.5, "", Range(0.0, 1.0, max_open=True)), 1.0, "must be a number >= 0.0 and < 1.0"),
    (Field("lr", float, 0.1, "", Range(0.0, min_open=True)), 0.0, "must be a number > 0.0"),
    (Field("lr", float, 0.1, "", Range(0.0, min_open=True)), float("inf"), "must be a number > 0.0"),
    (Field("x", float, 0.0, ""), "a", "must be a number"),
    (Field("flag", bool, False, ""), 1, "must be a bool (True or False)"),
    (Field("name", str, "", ""), None, "must be a string"),
    (Field("mode", str, "a", "", ("a", "b")), "c", "must be one of 'a', 'b'"),
    (Field("level", int, 1, "", (1, 2)), True, "must be one of 1, 2"),  # True == 1, yet not a choice
    (Field("odd", int, 1, "", lambda v: None if v % 2 else "must be odd"), 2, "must be odd"),
])
def test_field_problems(field, value, problem):
    assert field.problem(value) == problem
    with pytest.raises(ConfigError, match="^" + re.escape(f"config.{field.name}={value!r}: {problem}") + "$"):
        field.check(value)


@pytest.mark.parametrize("field, value", [
    (Field("n", int, 1, "", Range(1)), 1),
    (Field("n", int, 1, "", Range(1)), np.int64(7)),
    (Field("b", float, 0.5, "", Range(0.0, 1.0, max_open=True)), 0),
    (Field("mode", str, "a", "", ("a", "b")), "b"),
    (Field("widths", tuple, (), ""), [1, 2]),  # tuple fields: only their own check, if any
])
def test_field_accepts(field, value):
    assert field.problem(value) is None and field.check(value) is value


def test_a_table_declares_each_field_once_and_gives_the_base_config():
    lr = Field("optimizer.learning_rate", float, 0.1, "peak rate", Range(0.0, min_open=True))
    table = field_table(Field("seed", int, 0, "the seed", Range(0)), {lr.name: lr})
    with pytest.raises(ValueError, match="field 'seed' declared twice"):
        field_table(table, Field("seed", int, 1, "again"))
    config = default_config(with_defaults(table, {"seed": 3}))
    assert config.to_dict() == {"seed": 3, "optimizer": {"learning_rate": 0.1}}
    assert table["seed"].default == 0  # with_defaults copies
    with pytest.raises(ConfigError, match="sede: not fields of the table"):
        with_defaults(table, {"sede": 1})
    assert describe_fields(table).splitlines() == [
        "seed (int, default 0; >= 0): the seed",
        "optimizer.learning_rate (float, default 0.1; > 0.0): peak rate"]
    validate_fields(config, table)
    config.optimizer.learning_rate = 0.0
    with pytest.raises(ConfigError, match=r"^config\.optimizer\.learning_rate=0\.0: must be a number > 0\.0$"):
        validate_fields(config, table)
    del config["optimizer"]
    validate_fields(config, table, partial=True)  # checks what is there
    with pytest.raises(ConfigError, match=r"^config\.optimizer\.learning_rate is missing"):
        validate_fields(config, table)


# ----------------------------------------------------------------------------------------------
# lock_and_validate, write_config


def test_lock_and_validate():
    config = ml_collections.ConfigDict(dict(kernel="C2sp", data="digits", runlocal=True, train=dict(steps=3)))
    assert lock_and_validate(config) is config
    config.train.steps = 5  # values stay editable
    with pytest.raises(AttributeError):
        config.train.stepz = 5  # but a misspelt key fails
    for bad, needle in [
        (dict(kernel="C5"), "config.kernel='C5'"), (dict(runlocal="yes"), "runlocal"), (dict(data=""), "config.data")
    ]:
        with pytest.raises(ValueError, match=needle):
            lock_and_validate(ml_collections.ConfigDict(bad))


def test_loop_fields_one_vocabulary():
    config = add_loop_fields(ml_collections.ConfigDict(dict(kernel="C3")), log_every=5, eval_every=-1)
    assert set(config) == {"kernel", *LOOP_FIELDS}
    assert (config.log_every, config.eval_every) == (5, -1)
    assert config.checkpoint_every == LOOP_FIELDS["checkpoint_every"].default and config.host_data is False
    assert config.conv_implementation == "auto"
    with pytest.raises(ValueError, match="log_evry: not loop fields; valid: log_every"):
        add_loop_fields(ml_collections.ConfigDict(), log_evry=5)
    # Both suites' configs carry exactly this vocabulary, and no old spelling of it.
    from configs.classify import resnet_cifar
    from configs.gan import resnet19_128, sngan_cifar10

    old = {"log_every_steps", "eval_every_steps", "checkpoint_every_steps", "max_to_keep", "lr", "lr_decay",
           "sp_implementation"}
    for module in (sngan_cifar10, resnet19_128, resnet_cifar):
        suite = module.get_config("runlocal")
        assert set(LOOP_FIELDS) <= set(suite) and not old & set(suite), module.__name__
        assert "learning_rate" in suite.optimizer and "schedule" in suite.optimizer
        assert "on_device" not in suite.get("input", {})
        lock_and_validate(suite)


@pytest.mark.parametrize("field, value, needle", [
    ("log_every", 2.5, "config.log_every=2.5: must be an int"),
    ("eval_every", True, "config.eval_every=True: must be an int"),
    ("max_checkpoints", 0, "config.max_checkpoints=0: must be an int >= 1"),
    ("host_data", "yes", "config.host_data='yes': must be a bool"),
    ("conv_implementation", "fast", "config.conv_implementation='fast': must be one of auto, pad_select"),
])
def test_lock_and_validate_checks_the_loop_fields(field, value, needle):
    fields = {name: f.default for name, f in LOOP_FIELDS.items()}
    fields[field] = value  # as a config file could write it (ConfigDict only type-checks later edits)
    with pytest.raises(ValueError, match=needle):
        lock_and_validate(ml_collections.ConfigDict(fields))


def test_write_config_round_trips(tmp_path):
    config = ml_collections.ConfigDict(dict(kernel="C2", model=dict(widths=(16, 32), dropout=0.0), name=None))
    path = write_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "config.json"
    assert json.loads(path.read_text()) == dict(kernel="C2", model=dict(widths=[16, 32], dropout=0.0), name=None)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_read_config_reads_back_what_write_config_wrote(tmp_path):
    config = ml_collections.ConfigDict(dict(kernel="C2", model=dict(widths=(16, 32), dropout=0.0), name=None))
    write_config(config, tmp_path / "run")
    read = read_config(tmp_path / "run")
    assert isinstance(read, ml_collections.ConfigDict) and read.model.dropout == 0.0
    assert read.to_dict() == dict(kernel="C2", model=dict(widths=[16, 32], dropout=0.0), name=None)
    assert checkpoint_dir(tmp_path / "run") == tmp_path / "run" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        read_config(tmp_path / "not-a-run")


# ----------------------------------------------------------------------------------------------
# run_main

CONFIG_FILE = '''
"""python -m suite.main --config=this.py:kernel=C2sp,runlocal --workdir=/tmp/x"""
import ml_collections
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    arg = parse_config_arg(arg, dict(kernel="C3", data="cifar10", runlocal=False))
    config = ml_collections.ConfigDict()
    config.kernel = arg.kernel
    config.data = arg.data
    config.runlocal = arg.runlocal
    config.train = ml_collections.ConfigDict(dict(steps=10 if arg.runlocal else 1000, lr=0.1))
    return config
'''


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG_FILE)
    return path


def test_run_main_with_args_and_overrides(tmp_path, config_file):
    calls = []
    workdir = tmp_path / "work" / "run1"
    result = run_main(
        lambda config, wd: calls.append((config, wd)) or "done",
        argv=["main", f"--config={config_file}:kernel=C2sp,runlocal", f"--workdir={workdir}", "--config.train.lr=0.5"],
    )
    assert result == "done" and len(calls) == 1
    config, wd = calls[0]
    assert wd == str(workdir) and workdir.is_dir()
    expected = dict(kernel="C2sp", data="cifar10", runlocal=True, train=dict(steps=10, lr=0.5))
    assert config.to_dict() == expected
    assert json.loads((workdir / "config.json").read_text()) == expected


def test_run_main_rejects_unknown_override_key(tmp_path, config_file):
    argv = ["main", f"--config={config_file}", f"--workdir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"--config.train.lrr: the config has no field 'train.lrr'"):
        run_main(lambda c, w: None, argv=[*argv, "--config.train.lrr=1"])
    with pytest.raises(flags.IllegalFlagValueError, match="abc"):
        run_main(lambda c, w: None, argv=[*argv, "--config.train.lr=abc"])
    # absl wraps errors raised inside get_config into its flag error, message intact.
    with pytest.raises(flags.IllegalFlagValueError, match="valid keys: data, kernel, runlocal"):
        run_main(lambda c, w: None, argv=["main", f"--config={config_file}:kernal=C2", f"--workdir={tmp_path}"])
    with pytest.raises(ValueError, match="--workdir is required"):
        run_main(lambda c, w: None, argv=["main", f"--config={config_file}"])
    assert not (tmp_path / "config.json").exists()


_MAIN = textwrap.dedent(
    """
    from sympad.train.config import run_main

    def train_and_evaluate(config, workdir):
        print("TRAIN", config.kernel, config.train.steps, config.train.lr, workdir)
        return {"not": "an exit code"}

    run_main(train_and_evaluate)
    """
)


@pytest.mark.integration
def test_run_main_command_line(tmp_path, config_file):
    """The real path: absl app.run parsing sys.argv, as `python -m <suite>.main` does."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run(
        [sys.executable, "-c", _MAIN, f"--config={config_file}:kernel=C4sp", f"--workdir={tmp_path / 'w'}",
         "--config.train.steps=3"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"TRAIN C4sp 3 0.1 {tmp_path / 'w'}" in ok.stdout
    assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["steps"] == 3

    bad = subprocess.run(
        [sys.executable, "-c", _MAIN, f"--config={config_file}", f"--workdir={tmp_path / 'bad'}",
         "--config.trian.steps=3"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode != 0
    assert "trian" in bad.stderr and "TRAIN" not in bad.stdout


def test_load_config_file_loads_as_main_does(tmp_path):
    from sympad.train.config import load_config_file

    config = load_config_file(str(REPO / "configs/gan/sngan_cifar10.py") + ":kernel=C4sp,seeds=3")
    assert config.kernel == "C4sp" and config.num_seeds == 3 and config.is_locked
    with pytest.raises(ConfigError, match=r"--config=.*nothing\.py: the config did not load"):
        load_config_file(str(tmp_path / "nothing.py"))

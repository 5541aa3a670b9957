"""The GPU campaign's device path: packed groups sized while they train, scoring where the samples
are made, the CPU's check of the device's features, what travels, and the whole of
``bash paper/device/run.sh OUT`` in a device-like sandbox (issue 23).

The sandbox is the GPU machine's software as far as a CPU can show it: ml_collections,
tensorboardX, grain and tensorflow_datasets unimportable except from the carried wheels, sockets
blocked, no ``.git``, ``python3`` as the interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from paper import reproduce
from paper.campaign import evaluate, plan, results, runner
from tests.shared import FAST_COMPILE_FLAG

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


# ----------------------------------------------------------------------------------------------
# Sizing a packed group.


def test_size_group_gives_every_trainer_what_the_slowest_reaches():
    # a: at step 100, 10 steps/s; b: at step 80, 5 steps/s; 100 s left at 90% of the rates.
    progress = {"a": (100, [10.0, 10.0]), "b": (80, [5.0, 4.0, 6.0])}
    assert runner.size_group(progress, seconds_left=100, cap=10_000, quantum=100) == 500  # 80 + 0.9*5*100 = 530
    assert runner.size_group(progress, seconds_left=100, cap=300, quantum=100) == 300  # the plan's cap
    # No time left: just past every trainer's last logged step (two periods: one may be dispatched).
    assert runner.size_group(progress, seconds_left=0, cap=10_000, quantum=100) == 300
    # A trainer without a measured interval counts at the slowest measured rate.
    assert runner.size_group({"a": (0, [10.0]), "c": (0, [])}, seconds_left=10, cap=10_000, quantum=1) == 90
    with pytest.raises(ValueError, match="no trainer"):
        runner.size_group({"a": (0, [])}, seconds_left=10, cap=10, quantum=1)


# A stand-in trainer: logs steps/s every step like the loop, honours --config.step_limit_file,
# and a stand-in sampler; seconds, not minutes.
TRAINER = textwrap.dedent("""
    import json, pathlib, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    workdir, limit, cap, rate = (pathlib.Path(args["--workdir"]), pathlib.Path(args["--config.step_limit_file"]),
                                 int(args["--cap"]), float(args["--rate"]))
    step, total = 0, cap
    while step < total:
        if limit.is_file() and limit.read_text().strip():
            total = min(total, max(int(limit.read_text()), step + 1))
        time.sleep(1 / rate)
        step += 1
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "steps_per_s": rate}) + "\\n")
""")
SAMPLER = ("import numpy as np, sys; np.savez(sys.argv[1] + '/samples.npz', "
           "images=np.full((6, 4, 4, 3), 7, np.uint8))")


def _fake_commands(rates):
    def commands(entry, *, workdir, data="", deadline_s=0.0):
        train = ["python", "-c", TRAINER, f"--workdir={workdir}", f"--cap={entry.set['steps']}",
                 f"--rate={rates[entry.id]}"]
        return [train, ["python", "-c", SAMPLER, str(workdir)]]
    return commands


def _gan_entry(entry_id, *, steps=10_000, group="g"):
    return plan.Entry(id=entry_id, experiment="table4", suite="gan", estimate_s=1, budget="b", group=group,
                      set={"steps": steps, "log_every": 1}, samples=6, config="configs/gan/sngan_cifar10.py")


@pytest.mark.integration  # the runner's processes
def test_a_packed_group_trains_for_one_step_count_sized_while_it_runs(tmp_path, monkeypatch):
    rates = {"fast": 40.0, "slow": 20.0}
    monkeypatch.setattr(runner, "entry_commands", _fake_commands(rates))
    entries = [_gan_entry("fast"), _gan_entry("slow")]
    out = tmp_path / "out"
    written = runner.run_plan(entries, out=out, deadline_s=12, workroot=tmp_path / "work", packing=2,
                              overhead={"sample": 4, "score": 0, "margin": 0}, return_samples=4)
    (sizing,) = [r for r in written if r["record"] == "sizing"]
    done = {r["id"]: r for r in written if r["record"] == "result"}
    assert {r["status"] for r in done.values()} == {"done"}, done
    # One step count for both: at most what the slower reaches in the 8 s left for training (20/s,
    # at 90%), at least two log periods past the three logged intervals calibration waits for.
    assert done["fast"]["steps"] == done["slow"]["steps"] == sizing["steps"] == done["fast"]["step_limit"]
    assert 5 <= sizing["steps"] <= 0.9 * 20 * 8 + 5
    assert sizing["rates"] == {"fast": 40.0, "slow": 20.0} and done["slow"]["packing"] == 2
    with np.load(out / done["slow"]["artifacts"][0]) as z:
        assert z["images"].shape == (4, 4, 4, 3)  # the first return_samples of 6
    # A finished group is not run again.
    again = runner.run_plan(entries, out=out, deadline_s=12, workroot=tmp_path / "work", packing=2)
    assert [r["record"] for r in again] == ["run"]


@pytest.mark.integration  # the runner's processes
def test_the_rest_of_a_group_trains_for_the_count_its_finished_kinds_had(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "entry_commands", _fake_commands({"a": 50.0, "b": 50.0}))
    entries = [_gan_entry("a"), _gan_entry("b")]
    committed = [{"record": "result", "id": "a", "run": "r0", "status": "done", "steps": 30}]
    written = runner.run_plan(entries, out=tmp_path / "out", deadline_s=30, committed=committed,
                              workroot=tmp_path / "work", packing=2)
    (b,) = [r for r in written if r["record"] == "result"]
    assert b["id"] == "b" and b["status"] == "done" and b["steps"] == 30
    assert not [r for r in written if r["record"] == "sizing"]


@pytest.mark.integration  # the runner's processes
def test_a_group_still_training_at_the_deadline_stops_with_its_step_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "entry_commands", _fake_commands({"a": 0.5}))
    # Too slow to show its calibration intervals (three logs: 6 s) before the deadline.
    written = runner.run_plan([_gan_entry("a", steps=100_000)], out=tmp_path / "out", deadline_s=3,
                              workroot=tmp_path / "work")
    (a,) = [r for r in written if r["record"] == "result"]
    assert a["status"] == "killed" and 0 < a["steps"] < 100_000 and a["allotted_s"] <= 3


# ----------------------------------------------------------------------------------------------
# Scoring on the device, checking on the CPU.


def _features(images):
    # A stand-in feature network: per-image channel means, exact on every machine.
    return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


def _report(images, labels=None):
    return {"metrics": {"fid_inception": float(images.mean())}, "feature_network": {"name": "inception",
            "sha256": "f" * 64, "form": "float16, byte-shuffled zlib"}, "num_samples": len(images)}


def test_score_run_scores_every_sample_and_stores_the_returned_features(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    (work / "g").mkdir(parents=True)
    np.savez(work / "g" / "samples.npz", images=images)
    out.mkdir()
    names = runner.write_samples(images[:8], out=out, stem="samples-g")
    recs = [{"record": "result", "id": "g", "run": "r", "suite": "gan", "status": "done", "artifacts": names},
            {"record": "result", "id": "old", "run": "r0", "suite": "gan", "status": "done", "artifacts": names}]
    (ev,) = evaluate.score_run(recs, run_id="r", workroot=work, out=out, scorer=_report, features=_features,
                               network="inception-ffff", device="1 x GPU (gpu)", command="c", feature_check=5)
    assert ev["metrics"]["fid_inception"] == pytest.approx(images.mean())  # all 20, not the 8 returned
    assert ev["num_samples"] == 20 and ev["feature_network"]["form"] == "float16, byte-shuffled zlib"
    assert ev["feature_check"] == {"file": names[0], "num": 5}
    with np.load(out / names[0]) as z:
        np.testing.assert_array_equal(z["features"], _features(images[:5]))
        np.testing.assert_array_equal(z["images"], images[:8])
    # The CPU recomputes those features: equal here, so the differences are zero; a second
    # pass adds nothing.
    checks = evaluate.crosscheck([*recs, ev], run_dir=out, features=_features, network="inception-cpu",
                                 identity={"form": "float32"}, device="cpu", command="c")
    assert [(c["id"], c["num"], c["max_rel_diff"], c["form"]) for c in checks] == [("g", 5, 0.0, "float32")]
    assert evaluate.crosscheck([*recs, ev, *checks], run_dir=out, features=_features, network="inception-cpu",
                               identity={}, device="cpu", command="c") == []
    # A different network's features differ, and the check says by how much.
    (off,) = evaluate.crosscheck([*recs, ev], run_dir=out, features=lambda x: 1.01 * _features(x),
                                 network="other", identity={}, device="cpu", command="c")
    assert off["max_rel_diff"] == pytest.approx(0.01, rel=1e-3)


# ----------------------------------------------------------------------------------------------
# What travels to the device.


def _tree_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return [root / f for f in listed if f and (root / f).is_file()]


def test_what_travels_fits_the_carry_limit():
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to list what travels")
    tree = sum(p.stat().st_size for p in _tree_files(REPO))
    carry = reproduce.CARRY
    if (carry / "COMMIT").is_file():  # prepared here: measure it
        carried = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    else:  # what prepare.sh writes: the archives, the compact weights (37.6 MB measured), a wheel
        shared = REPO.parent / "shared" / "data"
        archives = [shared / f"cifar10-{s}.tar.gz" for s in ("train", "test")]
        if not all(a.is_file() for a in archives):
            pytest.skip("no CIFAR-10 archives in ../shared/data")
        carried = sum(a.stat().st_size for a in archives) + 37_623_334 + 200_000
    assert tree < 8 * MIB, f"the repository alone is {tree / MIB:.1f} MiB"
    assert tree + carried <= 60 * MIB, f"{(tree + carried) / MIB:.1f} MiB travel (limit 60)"


# ----------------------------------------------------------------------------------------------
# The device-like run: bash paper/device/run.sh OUT in a sandbox like the GPU machine.

SANDBOX = textwrap.dedent("""
    # Loaded by every Python process of the device-like test (PYTHONPATH): the GPU image's limits.
    import importlib.machinery, socket, sys

    HIDDEN = {"ml_collections", "tensorboardX", "grain", "tensorflow_datasets"}

    class _PathFinderHiding(importlib.machinery.PathFinder):
        # Those packages are found only where the carried wheels were put, never in site-packages:
        # absent as on the GPU image (find_spec says None, import raises ModuleNotFoundError).
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN and path is None:
                path = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [_PathFinderHiding if f is importlib.machinery.PathFinder else f for f in sys.meta_path]

    def _blocked(*args, **kwargs):
        raise OSError("network blocked (device-like sandbox)")

    _connect = socket.socket.connect
    def _connect_local(self, address):
        if self.family == socket.AF_UNIX:
            return _connect(self, address)
        _blocked()

    socket.socket.connect = _connect_local
    socket.socket.connect_ex = lambda self, address: _blocked()
    socket.create_connection = _blocked
""")


def _wheel(package: str, dest: Path) -> Path:
    """A wheel (zip) of an installed pure-Python package: what prepare.sh downloads."""
    import importlib

    module = importlib.import_module(package)
    root = Path(module.__file__).parent
    path = dest / f"{package}-0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in root.rglob("*.py"):
            z.write(f, f.relative_to(root.parent))
    return path


def _cut_archive(source: Path, dest: Path, *, per_class: int) -> None:
    """The shared archive's first ``per_class`` JPEGs of each class, same layout and format.

    The runs below read 64 images; extracting all 60k files (about 50 s here: Python's tarfile
    creates files slowly) would be most of the test.
    """
    taken: dict[str, int] = {}
    with tarfile.open(source) as src, tarfile.open(dest, "w:gz") as out:
        for member in src:
            folder = member.name.rsplit("/", 1)[0]
            if member.isfile():
                if taken.get(folder, 0) >= per_class:
                    continue
                taken[folder] = taken.get(folder, 0) + 1
                out.addfile(member, src.extractfile(member))
            else:
                out.addfile(member)
    assert len(taken) == 10 and set(taken.values()) == {per_class}, taken


@pytest.fixture(scope="module")
def device_tree(tmp_path_factory):
    """A prepared copy of the working tree, as it lands on the device: no .git, carry/ filled."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to copy what travels")
    shared = REPO.parent / "shared" / "data"
    if not all((shared / f"cifar10-{s}.tar.gz").is_file() for s in ("train", "test")):
        pytest.skip("no CIFAR-10 archives in ../shared/data")
    base = tmp_path_factory.mktemp("device")
    tree = base / "repo"
    for f in _tree_files(REPO):
        target = tree / f.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    carry = tree / "paper" / "device" / "carry"
    (carry / "wheels").mkdir(parents=True)
    (carry / "data").mkdir()
    prepared = sorted((reproduce.CARRY / "wheels").glob("*.whl"))
    for wheel in prepared:  # what prepare.sh downloaded, where it ran here
        shutil.copy(wheel, carry / "wheels")
    if not prepared:
        _wheel("ml_collections", carry / "wheels")
    for s in ("train", "test"):
        _cut_archive(shared / f"cifar10-{s}.tar.gz", carry / "data" / f"cifar10-{s}.tar.gz", per_class=20)
    (carry / "COMMIT").write_text("0123456789abcdef-test\n")
    (base / "sandbox").mkdir()
    (base / "sandbox" / "sitecustomize.py").write_text(SANDBOX)
    (base / "bin").mkdir()
    shim = base / "bin" / "python3"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    return base


def _run_device(base: Path, out: Path, *flags: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SYMPAD", "XLA"))}
    env.update(PATH=f"{base / 'bin'}:{env['PATH']}", PYTHONPATH=str(base / "sandbox"),
               SYMPAD_CACHE=str(base / "cache"), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = FAST_COMPILE_FLAG  # the test run's compile setting (tests/conftest.py)
    return subprocess.run(["bash", "paper/device/run.sh", str(out), *flags], cwd=base / "repo", env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_device_like_sandbox_hides_the_missing_packages(device_tree):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(device_tree / "sandbox"))
    code = ("import importlib.util, socket\n"
            "for m in ('ml_collections', 'tensorboardX', 'grain', 'tensorflow_datasets'):\n"
            "    assert importlib.util.find_spec(m) is None, m\n"
            "    try:\n        __import__(m)\n    except ModuleNotFoundError:\n        pass\n"
            "    else:\n        raise SystemExit(m + ' importable')\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError as e:\n    print(e)\n")
    done = subprocess.run([str(device_tree / "bin" / "python3"), "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "network blocked" in done.stdout, done.stderr
    assert not (device_tree / "repo" / ".git").exists()


@pytest.mark.integration
def test_device_run_unprepared_says_what_to_do(device_tree, tmp_path):
    commit = device_tree / "repo" / "paper" / "device" / "carry" / "COMMIT"
    saved = commit.read_text()
    commit.unlink()
    try:
        done = _run_device(device_tree, tmp_path / "out", timeout=60)
    finally:
        commit.write_text(saved)
    assert done.returncode == 2 and "prepare.sh" in done.stderr


@pytest.mark.integration
def test_device_run_smoke_plan(device_tree, tmp_path):
    out = tmp_path / "out"
    done = _run_device(device_tree, out, "--budget=smoke", f"--workroot={tmp_path / 'work'}", "--deadline=900",
                       timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recs = results.read(out / "results.jsonl")
    by_id = {r["id"]: r for r in recs if r["record"] == "result"}
    assert {i: r["status"] for i, r in by_id.items()} == dict.fromkeys(
        ["smoke-sngan-C2sp", "smoke-sngan-C3", "smoke-resnet8-C2sp"], "done"), done.stdout[-3000:]
    gan, resnet = by_id["smoke-sngan-C2sp"], by_id["smoke-resnet8-C2sp"]
    # The two GAN kinds ran at once and trained for one step count.
    assert gan["packing"] == by_id["smoke-sngan-C3"]["packing"] == 2
    assert gan["steps"] == by_id["smoke-sngan-C3"]["steps"] == gan["step_limit"]
    assert gan["num_samples"] == 64 and gan["params"]["generator"] > 0 and gan["step_time_s"] > 0
    samples = evaluate.load_samples(out, gan["artifacts"])
    assert samples.shape == (64, 16, 16, 3) and samples.dtype == np.uint8 and samples.std() > 0
    assert 0.0 <= resnet["metrics"]["test_error"] <= 1.0 and resnet["metrics"]["num_params"] > 0
    assert gan["commands"][0].startswith("python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp")
    assert all(r["campaign"] == "smoke" for r in recs if r["record"] in ("run", "result"))
    assert all(r["commit"] == "0123456789abcdef-test" for r in by_id.values())
    assert "tensorboardX is not installed" in (tmp_path / "work" / "smoke-sngan-C3" / "log.txt").read_text()


@pytest.mark.integration
def test_device_run_first_table4_entries_on_cifar10_with_scores(device_tree, tmp_path):
    # The committed plan's first group, cut to one step, a few images and two kinds, on the
    # carried CIFAR-10 archive; scored on the "device" by the offline network (the Inception
    # weights' compact form is tested in tests/gan/test_inception_port.py).
    entries = plan.load_plan(REPO / "paper" / "plan.json")[:2]
    assert [e.group for e in entries] == ["table4-seed0"] * 2
    cut = [plan.Entry.from_dict({**e.to_dict(), "samples": 24,
                                 "set": {**e.set, "steps": 1, "log_every": 1, "batch_size": 8, "max_examples": 64}})
           for e in entries]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.plan_json(cut, step_times=plan.STEP_TIMES))
    out = tmp_path / "out"
    done = _run_device(device_tree, out, f"--plan={plan_file}", f"--results={tmp_path / 'none.jsonl'}",
                       f"--workroot={tmp_path / 'work'}", "--deadline=1500", "--feature_network=offline",
                       "--num_reference=32", "--feature_batch=8", "--return_samples=16", timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recs = results.read(out / "results.jsonl")
    got = {r["id"]: r for r in recs if r["record"] == "result"}
    assert [got[e.id]["status"] for e in cut] == ["done", "done"], done.stdout[-3000:]
    assert {got[e.id]["steps"] for e in cut} == {1} and {got[e.id]["packing"] for e in cut} == {2}
    evs = {r["id"]: r for r in recs if r["record"] == "evaluation"}
    assert set(evs) == {e.id for e in cut}, done.stdout[-3000:]
    for e in cut:
        ev = evs[e.id]
        assert ev["num_samples"] == 24 and ev["num_reference"] == 32
        assert np.isfinite(ev["metrics"]["fid_offline_cifar10"])
        with np.load(out / got[e.id]["artifacts"][0]) as z:
            assert z["images"].shape == (16, 32, 32, 3) and z["features"].shape[0] == 16
    # Back on the CPU: merge, then this machine's features of the returned images match the device's.
    committed = tmp_path / "results.jsonl"
    reproduce.main(["--evaluate", f"--out={out}", f"--results={committed}", "--feature_network=offline",
                    "--reference=synthetic", "--num_reference=32", "--feature_batch=8", f"--plan={plan_file}"])
    checks = [r for r in results.read(committed) if r["record"] == "crosscheck"]
    assert sorted(c["id"] for c in checks) == sorted(e.id for e in cut)
    assert all(c["max_rel_diff"] < 1e-4 for c in checks), checks
    assert not [r for r in results.read(committed) if r["record"] == "evaluation" and r["device"] == "cpu"]

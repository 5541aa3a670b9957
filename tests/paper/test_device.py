"""The GPU campaign's device path: packed groups sized while they train, scoring where the samples
are made, the CPU's check of the device's features, what travels, and the whole of
``bash paper/device/prepare.sh`` then ``bash paper/device/run.sh OUT`` in a device-like sandbox,
pre-flight included (issues 23, 29).

The sandbox is the GPU machine's software as far as a CPU can show it: ml_collections,
tensorboardX, grain and tensorflow_datasets unimportable except from the carried wheels, sockets
blocked, no ``.git``, ``python3`` as the interpreter, XLA's default compile settings and run.sh's
own compilation cache (none of the test run's, tests/conftest.py), the carry written by prepare.sh.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from gan.metrics import inception_formats as inception
from paper import reproduce, shared_data
from paper.campaign import evaluate, plan, preflight, results, runner
from tests.shared import COMPILE_CACHE_ENV, FAST_COMPILE_FLAG, build_once

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
    written = runner.run_plan(entries, out=out, deadline_s=16, workroot=tmp_path / "work", packing=2,
                              overhead={"sample": 4, "score": 0, "margin": 0}, return_samples=4)
    (sizing,) = [r for r in written if r["record"] == "sizing"]
    done = {r["id"]: r for r in written if r["record"] == "result"}
    assert {r["status"] for r in done.values()} == {"done"}, done
    # One step count for both: what the slower reaches in the training time left (20/s, counted at
    # 90%), and at least two log periods past every trainer's last log (the floor, all a trainer
    # without rates could be given). The lower bound from the rate tells the two apart: about 200
    # steps in the ~11 s left, the floor about 40-80 (the fast one's step ~1-2 s in).
    assert done["fast"]["steps"] == done["slow"]["steps"] == sizing["steps"] == done["fast"]["step_limit"]
    left, at = sizing["train_left_s"], sizing["at_steps"]
    # The record rounds train_left_s to 0.1 s and the count is floored to a whole step: bounds with that slack.
    low, high = 0.9 * 20 * (left - 0.05) - 1, at["slow"] + 0.9 * 20 * (left + 0.05)
    assert low <= sizing["steps"] <= max(max(at.values()) + 2, high)
    assert sizing["steps"] >= max(at.values()) + 2
    assert sizing["rates"] == {"fast": 40.0, "slow": 20.0} and done["slow"]["packing"] == 2
    with np.load(out / done["slow"]["artifacts"][0]) as z:
        assert z["images"].shape == (4, 4, 4, 3)  # the first return_samples of 6
    # A finished group is not run again.
    again = runner.run_plan(entries, out=out, deadline_s=12, workroot=tmp_path / "work", packing=2)
    assert [r["record"] for r in again] == ["run"]


# A stand-in trainer of several seeds (``seeds=N`` in its --config): logs the loop's per-seed
# scalars; its sampler writes gan.sample's per-seed files.
SEEDS_TRAINER = textwrap.dedent("""
    import json, pathlib, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    workdir, limit = pathlib.Path(args["--workdir"]), pathlib.Path(args["--config.step_limit_file"])
    seeds = [int(args["--seed"]) + i for i in range(int(args["--seeds"]))]
    step, total = 0, 10_000
    while step < total:
        if limit.is_file() and limit.read_text().strip():
            total = min(total, max(int(limit.read_text()), step + 1))
        time.sleep(0.05)
        step += 1
        line = {"step": step, "steps_per_s": 20.0, "d_loss": 0.5}
        line.update({f"seed{s}/d_loss": s + step / 1000 for s in seeds})
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\\n")
""")
SEEDS_SAMPLER = textwrap.dedent("""
    import numpy as np, sys
    seeds = range(int(sys.argv[2]), int(sys.argv[3]))
    for s in seeds:
        name = f"samples_seed{s}.npz" if len(seeds) > 1 else "samples.npz"
        np.savez(f"{sys.argv[1]}/{name}", images=np.full((6, 4, 4, 3), s, np.uint8))
""")


def _seed_entry(kind, seed):
    return plan.Entry(id=f"t-{kind}-seed{seed}", experiment="table4", suite="gan", estimate_s=1, budget="b",
                      group="t", set={"steps": 10_000, "log_every": 1}, samples=6, args={"kernel": kind, "seed": seed},
                      config="configs/gan/sngan_cifar10.py")


@pytest.mark.integration  # the runner's processes
def test_a_kinds_seeds_train_in_one_process_and_are_recorded_one_by_one(tmp_path, monkeypatch):
    started = []

    def commands(entry, *, workdir, data="", deadline_s=0.0):
        started.append(entry.id)
        seed, n = entry.args["seed"], entry.args.get("seeds", 1)
        return [["python", "-c", SEEDS_TRAINER, f"--workdir={workdir}", f"--seed={seed}", f"--seeds={n}"],
                ["python", "-c", SEEDS_SAMPLER, str(workdir), str(seed), str(seed + n)]]

    monkeypatch.setattr(runner, "entry_commands", commands)
    entries = [_seed_entry(k, s) for k in ("a", "b") for s in (0, 1)] + [_seed_entry("c", 0)]
    out, work = tmp_path / "out", tmp_path / "work"
    # As the packed test above: room for a loaded machine's process starts (the stand-in logs a fixed
    # 20 steps/s, so the sizing cannot see a slow start; the margin is in the reserve and the deadline).
    written = runner.run_plan(entries, out=out, deadline_s=16, workroot=work, packing=4, seeds_per_process=2,
                              overhead={"sample": 4, "score": 0, "margin": 0}, return_samples=4)
    # Three processes at once: a's seeds, b's seeds, c alone.
    assert started == ["t-a-seed0..1", "t-b-seed0..1", "t-c-seed0"]
    (sizing,) = [r for r in written if r["record"] == "sizing"]
    assert set(sizing["rates"]) == {"t-a-seed0..1", "t-b-seed0..1", "t-c-seed0"} and sizing["packing"] == 3
    done = {r["id"]: r for r in written if r["record"] == "result"}
    assert list(done) == [e.id for e in entries] and {r["status"] for r in done.values()} == {"done"}, done
    assert {r["steps"] for r in done.values()} == {sizing["steps"]}
    assert [done[f"t-a-seed{s}"]["seeds"] for s in (0, 1)] == [[0, 1], [0, 1]] and "seeds" not in done["t-c-seed0"]
    started_recs = [r for r in written if r["record"] == "started"]
    assert [r.get("seeds") for r in started_recs] == [[0, 1]] * 4 + [None]
    for s in (0, 1):  # each entry its own seed's scalars and samples
        r = done[f"t-b-seed{s}"]
        assert r["metrics"]["d_loss"] == pytest.approx(s + r["steps"] / 1000)
        assert r["samples_file"] == f"t-b-seed0..1/samples_seed{s}.npz"
        with np.load(out / r["artifacts"][0]) as z:
            assert z["images"].shape == (4, 4, 4, 3) and (z["images"] == s).all()
    assert done["t-c-seed0"]["samples_file"] == "t-c-seed0/samples.npz"
    # Scoring on the device reads every entry's own samples file.
    evs = evaluate.score_run(results.read(out / "results.jsonl"), run_id=written[0]["run"], workroot=work, out=out,
                             scorer=_report, features=_features, network="n", device="d", command="c")
    assert {e["id"]: e["metrics"]["fid_inception"] for e in evs if e["id"].startswith("t-a")} == {
        "t-a-seed0": 0.0, "t-a-seed1": 1.0}


def test_trainers_join_a_kinds_consecutive_seeds_only():
    a0, a1, a2, b0 = _seed_entry("a", 0), _seed_entry("a", 1), _seed_entry("a", 2), _seed_entry("b", 0)
    assert [t.name for t in runner.trainers([a0, a1, a2, b0], seeds_per_process=2)] == [
        "t-a-seed0..1", "t-a-seed2", "t-b-seed0"]
    assert [t.name for t in runner.trainers([a0, a1, a2, b0], seeds_per_process=1)] == [
        e.id for e in (a0, a1, a2, b0)]
    assert [t.seeds for t in runner.trainers([a0, a2, a1], seeds_per_process=4)] == [(), (), ()]  # not consecutive
    other = plan.Entry.from_dict({**a1.to_dict(), "set": {"steps": 5, "log_every": 1}})
    assert len(runner.trainers([a0, other], seeds_per_process=2)) == 2  # differs beyond its seed
    (t,) = runner.trainers([a0, a1, a2], seeds_per_process=3)
    assert t.entry.args == {"kernel": "a", "seed": 0, "seeds": 3} and t.entry.id == t.name == "t-a-seed0..2"
    # The runner's first processes: up to `packing` of them, each with its seeds.
    assert runner.first_batch([a0, a1, a2, b0], [], packing=2, seeds_per_process=2) == [a0, a1, a2]


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
# The pre-flight, with stand-in processes (the device-like runs below use the real ones).


def test_first_batch_is_what_the_run_starts_first():
    group = [_gan_entry(f"k{i}", group="seed0") for i in range(5)]
    single = plan.Entry(id="single", experiment="figure4", suite="classify", estimate_s=1, budget="b")
    entries = [*group, single]
    assert runner.first_batch(entries, [], packing=4) == group[:4]  # up to packing at once
    done = [{"record": "result", "id": e.id, "run": "r", "status": "done"} for e in group[:4]]
    assert runner.first_batch(entries, done, packing=4) == group[4:]
    failed = [{"record": "result", "id": "k4", "run": "r", "status": "failed"}]
    assert runner.first_batch(entries, [*done, *failed], packing=4) == [single]
    assert runner.first_batch(entries, [*done, *failed], packing=4, retry=["k4"]) == group[4:]
    gone = [{"record": "result", "id": e.id, "run": "r", "status": "done"} for e in entries]
    assert runner.first_batch(entries, gone, packing=4) == []


def test_wheel_modules_reads_top_level_txt_or_the_file_names(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.whl", "w") as z:
        z.writestr("a-1.dist-info/top_level.txt", "alpha\nbeta\n")
        z.writestr("alpha/__init__.py", "")
    with zipfile.ZipFile(tmp_path / "b.whl", "w") as z:
        z.writestr("b_pkg/__init__.py", "")
        z.writestr("b_mod.py", "")
        z.writestr("b-1.dist-info/METADATA", "")
        z.writestr("b-1.data/scripts/x", "")
    assert preflight.wheel_modules(tmp_path / "a.whl") == ["alpha", "beta"]
    assert preflight.wheel_modules(tmp_path / "b.whl") == ["b_mod", "b_pkg"]


# A stand-in trainer for the pre-flight: logs its step like the loop; STANDIN_FAIL / STANDIN_HANG.
STANDIN = textwrap.dedent("""
    import json, pathlib, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    if "fail" in args["--workdir"]:
        raise RuntimeError("XLA ran out of memory compiling the step")
    if "hang" in args["--workdir"]:
        time.sleep(60)
    limit = int(pathlib.Path(args["--config.step_limit_file"]).read_text())
    with open(pathlib.Path(args["--workdir"]) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": limit, "steps_per_s": 1.0}) + "\\n")
""")


def _probe_argv(result):
    return ["python", "-c", f"print({preflight.PROBE_PREFIX!r} + {json.dumps(json.dumps(result))})"]


@pytest.mark.integration  # the pre-flight's processes
def test_preflight_trains_each_entry_one_step_and_reads_the_probe(tmp_path, monkeypatch):
    seen = []

    def commands(entry, *, workdir, data="", deadline_s=0.0):
        seen.append((entry.id, data))
        return [["python", "-c", STANDIN, f"--workdir={workdir}"], ["never", "run"]]

    monkeypatch.setattr(runner, "entry_commands", commands)
    ok = {"ok": True, "platform": "cpu", "devices": 1, "device_kind": "cpu", "modules": ["ml_collections"],
          "inception": {"images": 16, "form": "float16, byte-shuffled zlib", "sha256": "ab" * 32, "weights": "w"}}
    entries = [_gan_entry("a"), _gan_entry("b")]
    summary = preflight.preflight(entries, workroot=tmp_path / "work", data="folder:D", probe_argv=_probe_argv(ok),
                                  limit_s=60)
    assert summary["ok"], summary
    assert seen == [("a", "folder:D"), ("b", "folder:D")] and summary["probe"] == ok
    assert set(summary["seconds_each"]) == {"a", "b", "probe"}
    assert summary["verdict"].startswith("[preflight] ok in ")
    for part in ("1 cpu device(s)", "carried ml_collections import", "2 entries compiled and ran 1 step (a, b)",
                 "Inception (float16, byte-shuffled zlib, abababababab) scored 16 images", "GiB free"):
        assert part in summary["verdict"], summary["verdict"]
    assert not (tmp_path / "work" / "preflight").exists()  # the scratch runs are gone


@pytest.mark.integration  # the pre-flight's processes
@pytest.mark.parametrize("case", ["failing entry", "failing probe", "hanging entry"])
def test_preflight_names_the_first_failure_with_the_versions(tmp_path, monkeypatch, case):
    monkeypatch.setattr(runner, "entry_commands", lambda entry, *, workdir, data="", deadline_s=0.0: [
        ["python", "-c", STANDIN, f"--workdir={workdir}"]])
    ok = {"ok": True, "platform": "cpu", "devices": 1, "device_kind": "cpu", "modules": []}
    bad = {"ok": False, "check": "Inception weights", "error": "BadZipFile: File is not a zip file"}
    ids = {"failing entry": ["good", "fail"], "failing probe": ["good"], "hanging entry": ["hang"]}[case]
    summary = preflight.preflight([_gan_entry(i) for i in ids], workroot=tmp_path / "work", data="",
                                  probe_argv=_probe_argv(bad if case == "failing probe" else ok), limit_s=5)
    verdict = summary["verdict"]
    assert not summary["ok"] and verdict.startswith("[preflight] FAILED after "), verdict
    expected = {"failing entry": "fail: its train step failed (exit 1): RuntimeError: XLA ran out of memory",
                "failing probe": "Inception weights: BadZipFile: File is not a zip file",
                "hanging entry": "time: not done in 5 s (still running: hang)"}[case]
    assert expected in verdict, verdict
    if case == "failing entry":  # its output goes with the verdict (only OUT comes back from a device)
        assert "Traceback" in summary["log_tail"] and "out of memory" in summary["log_tail"]
    assert verdict.endswith(f"(jax {version('jax')}, jaxlib {version('jaxlib')}, flax {version('flax')}, "
                            f"Python {platform.python_version()})"), verdict


def test_preflight_checks_disk_before_starting_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "MIN_FREE_DISK_BYTES", 2**60)
    summary = preflight.preflight([_gan_entry("a")], workroot=tmp_path / "work", data="", probe_argv=["false"],
                                  limit_s=5)
    assert not summary["ok"] and summary["failed"] == "disk" and "the run needs" in summary["verdict"]
    assert not (tmp_path / "work").exists()


@pytest.mark.integration  # the runner's processes
def test_a_run_in_which_no_entry_finished_exits_non_zero_with_its_reason(tmp_path, capsys):
    broken = plan.Entry(id="broken", experiment="bench", suite="command", estimate_s=5, budget="b",
                        argv=("python", "-c", "raise SystemExit('no such device')"))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.plan_json([broken], step_times={}))
    args = ["--budget=device", f"--out={tmp_path / 'out'}", f"--plan={plan_file}", f"--workroot={tmp_path / 'w'}",
            f"--results={tmp_path / 'none.jsonl'}", "--no_preflight", "--no_score", "--deadline=60"]
    assert reproduce.main(args) == reproduce.NOTHING_FINISHED
    assert "no entry finished: broken failed (exit 1: no such device)" in capsys.readouterr().err
    # A complete plan is not a failure.
    results.append(tmp_path / "none.jsonl", {"record": "result", "id": "broken", "run": "r", "status": "done"})
    assert reproduce.main(args) == 0


def test_a_cut_run_is_never_merged(tmp_path):
    out = tmp_path / "out"
    results.append(out / "results.jsonl", {"record": "run", "run": "r", "campaign": "device", "cut": {"steps": 2}})
    with pytest.raises(SystemExit, match="cut run"):
        reproduce.main(["--evaluate", f"--out={out}", f"--results={tmp_path / 'results.jsonl'}"])
    assert not (tmp_path / "results.jsonl").exists()


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
# The device-like run: bash paper/device/prepare.sh, then bash paper/device/run.sh OUT, in a sandbox
# like the GPU machine.

SANDBOX = textwrap.dedent("""
    # Loaded by every Python process of the device-like test (PYTHONPATH): the GPU image's limits.
    import importlib.machinery, json, os, socket, sys

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

    # What every process was started with, for the test to check (the compile settings).
    if os.environ.get("SANDBOX_PROCESS_LOG"):
        with open(os.environ["SANDBOX_PROCESS_LOG"], "a") as f:
            f.write(json.dumps({"argv": sys.orig_argv[1:3], **{k: v for k, v in os.environ.items()
                                                              if k.startswith(("JAX_", "XLA_"))}}) + "\\n")
""")


def _installed_wheel(distribution: str, dest: Path) -> Path:
    """A wheel of an installed distribution, built from its installed files (dist-info included):
    what PyPI serves, for prepare.sh's `pip download` without the network."""
    import importlib.metadata

    dist = importlib.metadata.distribution(distribution)
    name = dist.metadata["Name"].replace("-", "_")
    path = dest / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in dist.files:
            if "__pycache__" not in f.parts:
                z.write(f.locate(), str(f))
    return path


def _random_pytorch_fid_weights(path: Path) -> Path:
    """pytorch-fid's .pth layout (a legacy torch.save of its state dict, fc included) with random
    weights: He-scaled convs and identity batch norms keep the activations of the 94 layers O(1)."""
    from tests.gan.test_inception_archive import conv_shapes, write_legacy

    rng = np.random.default_rng(0)
    state = {}
    for module, shape in conv_shapes().items():
        fan_in = int(np.prod(shape[1:]))
        state[f"{module}.conv.weight"] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        n = shape[0]
        state.update({f"{module}.bn.weight": np.ones(n, np.float32), f"{module}.bn.bias": np.zeros(n, np.float32),
                      f"{module}.bn.running_mean": np.zeros(n, np.float32),
                      f"{module}.bn.running_var": np.ones(n, np.float32),
                      f"{module}.bn.num_batches_tracked": np.zeros((), np.int64)})
    state["fc.weight"] = (0.01 * rng.standard_normal((1008, 2048))).astype(np.float32)
    state["fc.bias"] = np.zeros(1008, np.float32)
    return write_legacy(path, state)


def _clean_env() -> dict[str, str]:
    """This environment without the test run's settings: no PYTHON*, SYMPAD*, JAX_* or XLA_*
    variables (the test compile flags and cache, tests/conftest.py)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SYMPAD", "XLA_", "JAX_"))}


def _prepare(base: Path) -> None:
    """base/repo: the working tree as it lands on the device, prepared by prepare.sh itself; base/sandbox
    and base/bin: the GPU image's limits and its `python3`."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to copy what travels")
    shared = REPO.parent / "shared" / "data"
    if not all((shared / f"cifar10-{s}.tar.gz").is_file() for s in ("train", "test")):
        pytest.skip("no CIFAR-10 archives in ../shared/data")
    tree = base / "repo"
    for f in _tree_files(REPO):
        target = tree / f.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    # prepare.sh runs where PyPI and the weights' URL are reachable; here pip reads a local folder
    # (the installed ml-collections as a wheel) and the weights come from the user-file source of
    # gan.metrics.fetch: random weights in pytorch-fid's layout, 90 MB written here instead of downloaded.
    from gan.metrics import inception_weights

    (base / "wheels").mkdir()
    _installed_wheel("ml-collections", base / "wheels")
    pth = _random_pytorch_fid_weights(base / "pt_inception-2015-12-05.pth")
    inception_weights.fetch(source_file=pth, cache_dir=base / "prepare-cache", log=lambda _: None)
    pth.unlink()
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tree, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "as it travels"], cwd=tree, check=True)
    env = {**_clean_env(), "PYTHON": sys.executable, "SYMPAD_CACHE": str(base / "prepare-cache"),
           "SYMPAD_SHARED_DATA": str(shared), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(base / "wheels")}
    done = subprocess.run(["bash", "paper/device/prepare.sh"], cwd=tree, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(tree / ".git")
    shutil.rmtree(base / "prepare-cache")
    (base / "sandbox").mkdir()
    (base / "sandbox" / "sitecustomize.py").write_text(SANDBOX)
    (base / "bin").mkdir()
    shim = base / "bin" / "python3"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """Built once per test run (every worker reads it; a test that changes a tree copies it)."""
    return build_once(tmp_path_factory, "device-prepared", _prepare)


@pytest.fixture(scope="session")
def extracted(tmp_path_factory, prepared) -> Path:
    """The carried archives extracted once by the run's own code (the runner's data/ folder)."""
    def extract(path: Path) -> None:
        shared_data.cifar10_folder(cache_dir=path, archives=prepared / "repo" / "paper" / "device" / "carry" / "data")

    return build_once(tmp_path_factory, "device-cifar10", extract)


def _device_copy(prepared: Path, dest: Path, *, data: Path | None = None) -> Path:
    """A copy of the prepared tree (the run writes into it); ``data``: its data/ folder, extracted already."""
    shutil.copytree(prepared / "repo", dest)
    if data is not None:
        (dest / "data").symlink_to(data, target_is_directory=True)
    return dest


def _run_device(prepared: Path, tree: Path, out: Path, *flags: str, test_flags: bool = False,
                timeout: float) -> subprocess.CompletedProcess:
    """``bash paper/device/run.sh OUT flags`` in ``tree`` as the GPU machine runs it: XLA's default
    compile settings and run.sh's own compilation cache; ``test_flags``: the test run's instead
    (-O0 and its shared cache, tests/conftest.py)."""
    env = _clean_env()
    env.update(PATH=f"{prepared / 'bin'}:{env['PATH']}", PYTHONPATH=str(prepared / "sandbox"),
               SYMPAD_CACHE=str(out.parent / "cache"), SANDBOX_PROCESS_LOG=str(out.parent / "processes.jsonl"))
    if test_flags:
        env.update({k: os.environ[k] for k in COMPILE_CACHE_ENV if k in os.environ}, XLA_FLAGS=FAST_COMPILE_FLAG)
    return subprocess.run(["bash", "paper/device/run.sh", str(out), *flags], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_device_like_sandbox_hides_the_missing_packages(prepared):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(prepared / "sandbox"))
    code = ("import importlib.util, socket\n"
            "for m in ('ml_collections', 'tensorboardX', 'grain', 'tensorflow_datasets'):\n"
            "    assert importlib.util.find_spec(m) is None, m\n"
            "    try:\n        __import__(m)\n    except ModuleNotFoundError:\n        pass\n"
            "    else:\n        raise SystemExit(m + ' importable')\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError as e:\n    print(e)\n")
    done = subprocess.run([str(prepared / "bin" / "python3"), "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "network blocked" in done.stdout, done.stderr
    assert not (prepared / "repo" / ".git").exists()


@pytest.mark.integration
def test_prepare_carries_the_archives_the_wheel_the_half_weights_and_the_commit(prepared):
    carry = prepared / "repo" / "paper" / "device" / "carry"
    shared = REPO.parent / "shared" / "data"
    for name in ("cifar10-train.tar.gz", "cifar10-test.tar.gz"):
        assert (carry / "data" / name).read_bytes() == (shared / name).read_bytes()
    assert [w.name for w in (carry / "wheels").glob("*.whl")] == [f"ml_collections-{version('ml-collections')}"
                                                                   "-py3-none-any.whl"]
    assert re.fullmatch(r"[0-9a-f]{40}", (carry / "COMMIT").read_text().strip())
    state, meta = inception.load_state_dict(carry / "fid_inception_f16.npz")
    assert meta["form"] == inception.HALF_FORM and "fc.weight" in state
    assert meta["float32_weights_sha256"] != inception.weights_digest(state)  # rounded to float16


@pytest.mark.integration
def test_device_run_unprepared_says_what_to_do(prepared, tmp_path):
    tree = _device_copy(prepared, tmp_path / "repo")
    (tree / "paper" / "device" / "carry" / "COMMIT").unlink()
    done = _run_device(prepared, tree, tmp_path / "out", timeout=60)
    assert done.returncode == 2 and "prepare.sh" in done.stderr


@pytest.mark.integration
def test_device_run_smoke_plan(prepared, tmp_path):
    # The smoke plan through run.sh, pre-flight included; at the test run's -O0 (the production
    # compile settings are the next tests').
    tree = _device_copy(prepared, tmp_path / "repo")
    out = tmp_path / "out"
    done = _run_device(prepared, tree, out, "--budget=smoke", f"--workroot={tmp_path / 'work'}", "--deadline=900",
                       test_flags=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\[preflight\] ok in \d+ s: .*2 entries compiled and ran 1 step", done.stdout, re.M), done.stdout
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
    commit = (tree / "paper" / "device" / "carry" / "COMMIT").read_text().strip()
    assert all(r["commit"] == commit for r in by_id.values())
    assert "tensorboardX is not installed" in (tmp_path / "work" / "smoke-sngan-C3" / "log.txt").read_text()


def _break_wheels(carry: Path) -> str:
    for wheel in (carry / "wheels").glob("*.whl"):
        wheel.unlink()
    return "imports (carried wheels: none): ImportError: sympad.train (the training runtime) needs the 'train' extra"


def _break_weights(carry: Path) -> str:
    weights = carry / "fid_inception_f16.npz"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    return "Inception weights: BadZipFile"


@pytest.mark.integration
@pytest.mark.parametrize("breaks", [_break_wheels, _break_weights], ids=["missing wheel", "truncated weights"])
def test_preflight_stops_a_broken_carry_before_the_plan(prepared, extracted, tmp_path, breaks):
    # The device run as on the GPU (the real plan, production compile settings), with a broken
    # carry: the pre-flight's first failing check stops everything and names the cause.
    tree = _device_copy(prepared, tmp_path / "repo", data=extracted)
    expected = breaks(tree / "paper" / "device" / "carry")
    out = tmp_path / "out"
    done = _run_device(prepared, tree, out, f"--workroot={tmp_path / 'work'}", timeout=600)
    assert done.returncode == reproduce.PREFLIGHT_FAILED, done.stdout[-3000:] + done.stderr[-3000:]
    (verdict,) = [line for line in done.stdout.splitlines() if line.startswith("[preflight]")]
    assert verdict.startswith("[preflight] FAILED after ") and expected in verdict, verdict
    for name in ("jax", "jaxlib", "flax"):
        assert f"{name} {version(name)}" in verdict, verdict
    assert f"Python {platform.python_version()}" in verdict
    assert not (out / "results.jsonl").exists()  # the plan never started
    assert verdict in (out / "log.txt").read_text()  # and the verdict comes back
    assert not [p for p in (tmp_path / "work" / "preflight").rglob("*") if p.name == "metrics.jsonl"]


@pytest.mark.integration
@pytest.mark.timeout(1800)  # the suite's longest test: four full-size models compiled at XLA's defaults
def test_device_run_first_table4_group_as_on_the_gpu(prepared, tmp_path):
    # What the GPU runs: prepare.sh's carry (the half weights converted by its own code from a
    # pytorch-fid .pth), the real archives extracted by the run, the committed plan's first group
    # with all its kinds, XLA's default compile settings and run.sh's own compilation cache;
    # cut only to fit a 2-core CPU: 2 steps at batch 2 (one full-size batch-64 step of a kind takes
    # minutes here, a batch-8 one half a minute), 16 samples, 16 reference images. Each kind's two
    # seeds train in one process, as one vmapped program (a packed 2-seed group, issue 30).
    committed = REPO / "paper" / "plan.json"
    entries = plan.load_plan(committed)
    seeds = plan.load_seeds_per_process(committed)
    group = runner.first_batch(entries, [], packing=plan.load_packing(committed), seeds_per_process=seeds)
    assert len(group) == 8 and len({e.group for e in group}) == 1 and all(e.suite == "gan" for e in group)
    procs = runner.trainers(group, seeds_per_process=seeds)
    assert len(procs) == 4 and {t.seeds for t in procs} == {(0, 1)}  # a packed 2-seed group
    first = tmp_path / "plan.json"  # the group alone, its entries as committed: the run stops after it
    first.write_text(plan.plan_json(group, step_times=plan.STEP_TIMES))
    tree = _device_copy(prepared, tmp_path / "repo")
    out, work = tmp_path / "out", tmp_path / "work"
    # seed_batching=vmap: the program a GPU compiles for two seeds ('auto' writes both out on a CPU).
    done = _run_device(prepared, tree, out, f"--plan={first}", "--set=steps=2", "--set=batch_size=2",
                       "--set=seed_batching=vmap", "--samples=16",
                       "--num_reference=16", "--feature_batch=8", "--return_samples=8", f"--workroot={work}",
                       "--deadline=1700", timeout=1750)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Every process ran at the production settings: no test flags, run.sh's cache.
    processes = [json.loads(line) for line in (tmp_path / "processes.jsonl").read_text().splitlines()]
    processes = [p for p in processes if p["argv"][0] == "-m" and p["argv"][1] != "zipfile"]  # run.sh's unzip first
    modules = [p["argv"][1] for p in processes]
    assert modules.count("gan.main") == modules.count("gan.sample") * 2 == 2 * len(procs), modules  # pre-flight + run
    assert modules.count("paper.reproduce") == 3, modules  # the run, its probe, its scorer
    cache = tree / "runs" / "jax-cache"
    assert all("XLA_FLAGS" not in p and p.get("JAX_COMPILATION_CACHE_DIR") == str(cache) for p in processes), processes

    recs = results.read(out / "results.jsonl")
    commit = (tree / "paper" / "device" / "carry" / "COMMIT").read_text().strip()
    (run,) = [r for r in recs if r["record"] == "run"]
    assert run["commit"] == commit
    assert run["cut"] == {"steps": 2, "batch_size": 2, "seed_batching": "vmap", "samples": 16}
    assert run["preflight"]["ok"] and run["preflight"]["entries"] == [e.id for e in group]
    assert run["preflight"]["trainers"] == [t.name for t in procs] and run["seeds_per_process"] == 2
    got = {r["id"]: r for r in recs if r["record"] == "result"}
    assert set(got) == {e.id for e in group}, done.stdout[-3000:]
    assert {got[e.id]["status"] for e in group} == {"done"}, done.stdout[-3000:]
    assert {got[e.id]["steps"] for e in group} == {2} and {got[e.id]["packing"] for e in group} == {4}
    assert {got[e.id]["commit"] for e in group} == {commit}
    assert {tuple(got[e.id]["seeds"]) for e in group} == {(0, 1)}
    files = [f"{t.name}/samples_seed{s}.npz" for t in procs for s in (0, 1)]
    assert [got[e.id]["samples_file"] for e in group] == files
    # Scored on the "device" with the carried float16 weights, named by their digests.
    state, meta = inception.load_state_dict(tree / "paper" / "device" / "carry" / "fid_inception_f16.npz")
    evs = {r["id"]: r for r in recs if r["record"] == "evaluation"}
    assert set(evs) == {e.id for e in group}, done.stdout[-3000:]
    for e in group:
        ev = evs[e.id]
        assert ev["network"].startswith("inception-")
        assert ev["feature_network"]["form"] == inception.HALF_FORM
        assert ev["feature_network"]["sha256"] == inception.weights_digest(state)
        assert ev["feature_network"]["float32_sha256"] == meta["float32_weights_sha256"]
        assert ev["num_samples"] == 16 and ev["num_reference"] == 16
        for key in ("fid_inception", "kid_inception"):
            assert np.isfinite(ev["metrics"][key]), ev["metrics"]
        with np.load(out / got[e.id]["artifacts"][0]) as z:
            assert z["images"].shape == (8, 32, 32, 3) and z["features"].shape == (8, 2048)
            assert np.isfinite(z["features"]).all()
    # The pre-flight's compiles were the run's: one train-step program per kind in the cache
    # (a recompile of the step by a trainer would have added its own entry).
    steps = sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_step_on_device-"))
    assert len(steps) == len(procs), steps

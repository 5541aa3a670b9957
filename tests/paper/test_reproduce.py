"""The device campaign: plan, runner (deadline, kills, continuation), samples, evaluation, report.

The runner's mechanics are tested with plans of literal commands (``suite: command``, tiny
Python one-liners), so deadlines and kills take seconds; the suites' own commands run in the
slow smoke test.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from paper import reproduce
from paper.campaign import evaluate, plan, report, results, runner

REPO = Path(__file__).resolve().parents[2]


def _command_entry(entry_id: str, code: str, *, estimate_s: float = 5.0) -> plan.Entry:
    return plan.Entry(id=entry_id, experiment="test", suite="command", estimate_s=estimate_s, budget="test",
                      argv=("python", "-c", code))


def _write_plan(path: Path, entries) -> Path:
    path.write_text(plan.plan_json(entries, step_times={}), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# The plan.


def test_committed_plan_is_the_built_plan():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    measured = reproduce.measured_step_times(entries, results.read(REPO / "paper" / "results.jsonl"))
    built = plan.build_plan(measured)
    assert (REPO / "paper" / "plan.json").read_text() == plan.plan_json(
        built, step_times={**plan.STEP_TIMES, **measured})


def test_plan_follows_the_issue_order_and_every_entry_fits_one_run():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    assert plan.load_packing(REPO / "paper" / "plan.json") == plan.PACKING == 4
    # Issue 23: Table 4 seed 0, seed 1, Figure 4 ResNet-56, conditional, benchmarks (ResNet-110 last).
    assert [e.experiment for e in entries] == (["table4"] * 8 + ["figure4"] * 3 + ["conditional"] * 4
                                               + ["bench"] * 4 + ["figure4"] * 3)
    assert [e.args.get("depth") for e in entries if e.experiment == "figure4"] == [56] * 3 + [110] * 3
    # Issue 30: the 8 Table 4 entries are one group, a kind's two seeds side by side (one process).
    assert plan.load_seeds_per_process(REPO / "paper" / "plan.json") == plan.SEEDS_PER_PROCESS == 2
    assert [e.args.get("seed") for e in entries[:8]] == [0, 1] * 4
    assert [e.group for e in entries[:8]] == ["table4"] * 8
    assert [e.args["kernel"] for e in entries[:8:2]] == ["C3", "C2sp", "C2", "C4sp"]
    procs = runner.trainers(entries[:8], seeds_per_process=2)
    assert [t.name for t in procs] == [f"table4-sngan-{k}-seed0..1" for k in ("C3", "C2sp", "C2", "C4sp")]
    assert [t.seeds for t in procs] == [(0, 1)] * 4 and procs[0].entry.args["seeds"] == 2
    for e in entries:
        assert e.estimate_s <= plan.RUN_SECONDS - plan.RUNNER_S, e.id
    # A packed group's steps are sized on the device; the plan caps them at the paper's 200k D steps
    # and starts the group when its fixed costs and some training fit.
    assert {e.set["steps"] for e in entries[:8]} == {200_000 // 5}
    # Scoring 8 entries' samples: the overhead's fixed part once, its per-entry part for each.
    score = plan.OVERHEAD_S["score"]
    assert plan.score_s(8) == pytest.approx(score * 4 / 3) and plan.score_s(4) == plan.score_s(2) == score
    assert {e.estimate_s for e in entries[:8]} == {round(sum(plan.OVERHEAD_S.values()) - score + plan.score_s(8)
                                                         + plan.GROUP_MIN_TRAIN_S)}
    assert all(e.fraction is None and "sized on the device" in e.budget for e in entries[:8])


def test_conditional_entries_follow_the_papers_and_share_one_budget():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    cond = [e for e in entries if e.experiment == "conditional"]
    first = entries.index(cond[0])
    assert entries[first:first + 4] == cond and {e.group for e in cond} == {"conditional-seed0"}
    assert [(e.args["kernel"], e.set.get("diffaugment", "")) for e in cond] == [
        ("C3", ""), ("C2sp", ""), ("C3", plan.DIFFAUGMENT), ("C2sp", plan.DIFFAUGMENT)]
    assert plan.DIFFAUGMENT == "color,translation,cutout"
    for e in cond:
        assert e.set["conditional"] is True and e.set["loss"] == "hinge" and e.set["norm"] == "batch"
        assert e.set["class_embedding"] == "per_class" and e.samples == 10_000
        assert e.estimate_s <= plan.RUN_SECONDS - plan.RUNNER_S, e.id
    assert {e.set["steps"] for e in cond} == {200_000 // 5}
    data = "folder:/data/cifar10-jpeg"
    train = runner.entry_commands(cond[3], workdir=Path("w"), data=data)[0]
    assert {"--config.conditional=True", "--config.loss=hinge", "--config.norm=batch",
            "--config.class_embedding=per_class", "--config.diffaugment=color,translation,cutout"} <= set(train)
    assert not any(a.startswith("--config.diffaugment") for a in runner.entry_commands(cond[0], workdir=Path("w"),
                                                                                        data=data)[0])


def _load_config(entry: plan.Entry):
    spec = importlib.util.spec_from_file_location("_config_under_test", REPO / entry.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ",".join(f"{k}={'synthetic' if v == '{cifar10}' else v}" for k, v in entry.args.items())
    return module.get_config(args)


@pytest.mark.parametrize("entry_id", ["table4-sngan-C2sp-seed1", "figure4-resnet110-C2",
                                      "cond-sngan-C2sp-diffaug-seed0"])
def test_plan_overrides_name_existing_config_fields(entry_id):
    # A renamed config field fails here (fix it in plan.CONFIG_KEYS), not on the GPU machine.
    entry = next(e for e in plan.load_plan(REPO / "paper" / "plan.json") if e.id == entry_id)
    config = _load_config(entry)
    for name, value in entry.set.items():
        node = config
        for part in plan.CONFIG_KEYS[entry.suite][name].split("."):
            assert part in node, f"{entry.suite} config has no field {plan.CONFIG_KEYS[entry.suite][name]!r}"
            node = node[part]
        assert type(node) is type(value), (name, node, value)


def test_plan_rejects_unknown_override_names():
    with pytest.raises(ValueError, match="set has unknown keys"):
        plan.Entry.from_dict({"id": "x", "experiment": "table4", "suite": "gan", "estimate_s": 1, "budget": "b",
                              "set": {"num_steps": 3}})


# ----------------------------------------------------------------------------------------------
# The runner.


@pytest.mark.integration  # the runner's processes
def test_runner_starts_only_what_fits_and_a_later_run_continues(tmp_path):
    entries = [
        _command_entry("a", "print('a')", estimate_s=1),
        _command_entry("too-long", "print('never')", estimate_s=1000),
        _command_entry("b", "import sys; sys.exit(3)", estimate_s=1),
        _command_entry("c", "print('c')", estimate_s=1),
    ]
    out = tmp_path / "out"
    runner.run_plan(entries, out=out, deadline_s=60, workroot=tmp_path / "work", commit="abc")
    recs = results.read(out / "results.jsonl")
    status = {r["id"]: r["status"] for r in recs if r["record"] == "result"}
    assert status == {"a": "done", "b": "failed", "c": "done"}
    assert not any(r.get("id") == "too-long" for r in recs)
    done = [r for r in recs if r["record"] == "result" and r["status"] == "done"]
    assert all(r["commit"] == "abc" and r["device"] and r["versions"]["python"] for r in done)
    assert "===== a (done) =====" in (out / "log.txt").read_text()
    # The same results directory again: nothing is redone (b failed: not retried unless asked).
    again = runner.run_plan(entries, out=out, deadline_s=60, workroot=tmp_path / "work")
    assert [r["record"] for r in again] == ["run"]
    # Records committed elsewhere count as well: a fresh directory with them runs only b (retried).
    fresh = runner.run_plan(entries, out=tmp_path / "fresh", deadline_s=60, committed=recs,
                            workroot=tmp_path / "work", retry=["b"])
    assert [r["id"] for r in fresh if r["record"] == "result"] == ["b"]


@pytest.mark.integration  # the runner's processes
def test_runner_kills_an_entry_at_the_deadline_and_re_estimates_it(tmp_path):
    entries = [_command_entry("slow", "import time; time.sleep(60)", estimate_s=1)]
    out = tmp_path / "out"
    start = time.monotonic()
    runner.run_plan(entries, out=out, deadline_s=2, workroot=tmp_path / "work")
    assert time.monotonic() - start < 30
    (killed,) = [r for r in results.read(out / "results.jsonl") if r["record"] == "result"]
    assert killed["status"] == "killed" and 0 < killed["allotted_s"] <= 2
    # It needed more than the 2 s it had: a shorter run does not start it ...
    again = runner.run_plan(entries, out=out, deadline_s=1.5, workroot=tmp_path / "work")
    assert [r["record"] for r in again] == ["run"]
    # ... but its estimate never exceeds a whole run: a fresh run of the same length can always
    # start it again. After MAX_TRIES unfinished tries it is given up, unless retried by name.
    assert runner._estimate(entries[0], results.attempts(results.read(out / "results.jsonl"), "slow"),
                            deadline_s=2, retry=False) == 2
    # 6 s for a 2.4 s estimate: a margin no load on the machine eats.
    runner.run_plan(entries, out=out, deadline_s=6, workroot=tmp_path / "work")
    assert results.attempts(results.read(out / "results.jsonl"), "slow")["killed"] == runner.MAX_TRIES
    last = runner.run_plan(entries, out=out, deadline_s=100, workroot=tmp_path / "work")
    assert [r["record"] for r in last] == ["run"]
    retried = runner.run_plan(entries, out=out, deadline_s=4, workroot=tmp_path / "work", retry=["slow"])
    assert [r["record"] for r in retried] == ["run", "started", "result"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.integration  # the runner's processes
def test_a_run_killed_mid_experiment_is_continued_by_the_next(tmp_path):
    marker = tmp_path / "pid"
    # First try: records its pid and hangs; a later try finishes at once.
    code = (f"import os, pathlib, time; p = pathlib.Path({str(marker)!r})\n"
            "if p.exists(): print('second try'); raise SystemExit(0)\n"
            "p.write_text(str(os.getpid())); time.sleep(120)")
    plan_file = _write_plan(tmp_path / "plan.json", [_command_entry("hang-once", code, estimate_s=1),
                                                     _command_entry("after", "print('after')", estimate_s=1)])
    args = [sys.executable, "-m", "paper.reproduce", "--budget=device", f"--plan={plan_file}",
            f"--results={tmp_path / 'committed.jsonl'}", f"--out={tmp_path / 'out'}", "--deadline=100",
            f"--workroot={tmp_path / 'work'}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the experiment never started")
    proc.send_signal(signal.SIGKILL)  # the run dies mid-experiment, as at a device time limit
    proc.wait()
    child = int(marker.read_text())
    for _ in range(100):  # the experiment dies with the runner
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
    recs = results.read(tmp_path / "out" / "results.jsonl")
    assert [r["record"] for r in recs] == ["run", "started"]
    assert results.attempts(recs, "hang-once")["interrupted"] == 1

    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    recs = results.read(tmp_path / "out" / "results.jsonl")
    assert results.done_ids(recs) == {"hang-once", "after"}
    assert "second try" in (tmp_path / "out" / "log.txt").read_text()


def test_commands_are_recorded_relative_to_the_repository(tmp_path):
    entry = next(e for e in plan.load_plan(REPO / "paper" / "plan.json") if e.id == "table4-sngan-C2sp-seed0")
    data = f"folder:{REPO / 'data' / 'cifar10-jpeg'}"
    commands = runner.entry_commands(entry, workdir=REPO / "runs" / "campaign" / entry.id, data=data)
    shown = [" ".join(runner._shown_argv(c, data)) for c in commands]
    assert shown[0] == ("python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp,seed=0,"
                        "data=folder:data/cifar10-jpeg --workdir=runs/campaign/table4-sngan-C2sp-seed0 "
                        f"--config.num_train_steps={entry.set['steps']} --config.log_every=100 "
                        "--config.sample_every=0 --config.checkpoint_every=0 --config.max_checkpoints=1")
    assert shown[1].startswith("python -m gan.sample --workdir=runs/campaign/table4-sngan-C2sp-seed0 --num=10000")
    assert str(REPO) not in " ".join(shown)


# ----------------------------------------------------------------------------------------------
# Samples and evaluation.


def test_samples_are_split_into_files_under_the_limit(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    limit = 4096 + 20 * 8 * 8 * 3 + 100  # 20 images a file
    names = runner.write_samples(images, out=tmp_path, stem="s", max_bytes=limit)
    assert names == ["s-0.npz", "s-1.npz", "s-2.npz"]
    assert all((tmp_path / n).stat().st_size <= limit for n in names)
    np.testing.assert_array_equal(evaluate.load_samples(tmp_path, names), images)
    # 10k CIFAR samples at the real limit: two files.
    assert (runner.MAX_FILE_BYTES - 4096) // (32 * 32 * 3) * 2 >= 10_000
    with pytest.raises(ValueError, match="uint8"):
        runner.write_samples(images.astype(np.float32), out=tmp_path, stem="f")
    assert evaluate.load_labels(tmp_path, names) is None
    # A conditional generator's labels travel with their images, split at the same places.
    labels = np.arange(50) % 7
    limit = 4096 + 20 * (8 * 8 * 3 + 4) + 100
    named = runner.write_samples(images, out=tmp_path, stem="l", max_bytes=limit, labels=labels)
    assert len(named) == 3 and all((tmp_path / n).stat().st_size <= limit for n in named)
    np.testing.assert_array_equal(evaluate.load_labels(tmp_path, named), labels)
    np.testing.assert_array_equal(evaluate.load_samples(tmp_path, named), images)
    with pytest.raises(ValueError, match="labels"):
        runner.write_samples(images, out=tmp_path, stem="b", labels=labels[:3])


def _gan_result(entry_id, run, artifacts):
    return {"record": "result", "id": entry_id, "run": run, "suite": "gan", "status": "done", "artifacts": artifacts,
            "campaign": "device"}


def test_evaluation_scores_each_returned_sample_set_once(tmp_path):
    rng = np.random.default_rng(1)
    sets = {"g1": rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8),
            "g2": rng.integers(0, 9, (12, 4, 4, 3), dtype=np.uint8)}
    recs = []
    for name, images in sets.items():
        files = runner.write_samples(images, out=tmp_path, stem=name, max_bytes=4096 + 480)
        recs.append(_gan_result(name, "r1", files))
    recs.append(_gan_result("gone", "r0", ["missing-0.npz"]))  # samples of an earlier run, not here

    def scorer(images):  # a stand-in network: its "FID" is the mean pixel, checked against NumPy
        return {"metrics": {"fid_fake": float(images.mean())}, "feature_network": {"name": "fake", "sha256": "f" * 64},
                "num_samples": len(images), "protocol": {"name": "test10k"}, "reference": {"dataset": "x"}}

    label = evaluate.network_label({"name": "fake", "sha256": "f" * 64})
    new = evaluate.evaluate_samples(recs, run_dir=tmp_path, scorer=scorer, network=label, device="cpu", command="c")
    assert {r["id"]: r["metrics"]["fid_fake"] for r in new} == pytest.approx(
        {k: v.mean() for k, v in sets.items()})
    assert {r["num_samples"] for r in new} == {30, 12} and all(r["of_run"] == "r1" for r in new)
    assert evaluate.evaluate_samples([*recs, *new], run_dir=tmp_path, scorer=scorer, network=label, device="cpu",
                                     command="c") == []


def test_evaluation_passes_labels_for_conditional_results(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    stored = rng.integers(0, 10, 30)
    recs = [{**_gan_result("cond-stored", "r1", runner.write_samples(images, out=tmp_path, stem="a", labels=stored)),
             "conditional": True},
            _gan_result("cond-sngan-C3-seed0", "r1", runner.write_samples(images, out=tmp_path, stem="b")),
            _gan_result("uncond", "r1", runner.write_samples(images, out=tmp_path, stem="c"))]
    seen = {}

    def scorer(images, labels=None):  # a stand-in network: records what it was given
        seen[len(seen)] = None if labels is None else np.asarray(labels)
        metrics = {"fid_fake": 1.0, **({"fid_intra_fake": 2.0} if labels is not None else {})}
        return {"metrics": metrics, "feature_network": {"name": "fake", "sha256": "f" * 64},
                "num_samples": len(images), **({"intra_class": {"classes": sorted(set(labels.tolist()))}}
                                               if labels is not None else {})}

    new = evaluate.evaluate_samples(recs, run_dir=tmp_path, scorer=scorer, network="fake-ffff", device="cpu",
                                    command="c", conditional=["cond-sngan-C3-seed0"])
    np.testing.assert_array_equal(seen[0], stored)  # stored with the samples
    np.testing.assert_array_equal(seen[1], np.arange(30) % 10)  # by the sampling contract
    assert seen[2] is None  # unconditional: no labels, no intra-class metrics
    by_id = {r["id"]: r for r in new}
    assert by_id["cond-stored"]["labels"] == "stored with the samples"
    assert "i % 10" in by_id["cond-sngan-C3-seed0"]["labels"]
    assert by_id["cond-sngan-C3-seed0"]["metrics"]["fid_intra_fake"] == 2.0
    assert "labels" not in by_id["uncond"] and "fid_intra_fake" not in by_id["uncond"]["metrics"]


def test_merge_appends_new_records_once_and_refuses_smoke_runs(tmp_path):
    run = tmp_path / "run"
    results.append(run / "results.jsonl", {"record": "run", "run": "r", "campaign": "device"})
    results.append(run / "results.jsonl", _gan_result("x", "r", []))
    committed = tmp_path / "results.jsonl"
    assert evaluate.merge_run(run, committed) == 2
    assert evaluate.merge_run(run, committed) == 0
    smoke = tmp_path / "smoke"
    results.append(smoke / "results.jsonl", {"record": "run", "run": "s", "campaign": "smoke"})
    with pytest.raises(ValueError, match="smoke"):
        evaluate.merge_run(smoke, committed)


# ----------------------------------------------------------------------------------------------
# The report.


def _records_with(fids, errors):
    recs = [{"record": "run", "run": "r", "device": "1 x NVIDIA H200 (gpu)", "commit": "c0ffee", "versions": {}}]
    for kind, fid in fids.items():
        rid = f"table4-sngan-{kind}-seed0"
        recs.append({**_gan_result(rid, "r", ["s.npz"]), "device": "1 x NVIDIA H200 (gpu)", "commit": "c0ffee",
                     "commands": ["python -m gan.main ..."], "step_time_s": 0.025, "steps": 10_000, "packing": 4})
        for net, value in (("offline_cifar10", 1.0), ("inception", fid)):
            recs.append({"record": "evaluation", "id": rid, "of_run": "r", "network": f"{net}-abc",
                         "feature_network": {"name": net, "sha256": "abc"}, "metrics": {f"fid_{net}": value},
                         "num_samples": 10000})
    for kind, (error, params) in errors.items():
        recs.append({"record": "result", "id": f"figure4-resnet56-{kind}", "run": "r", "status": "done",
                     "suite": "classify", "metrics": {"test_error": error, "num_params": params}})
    return recs


def _verdicts(recs):
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    return {c.split(" (")[0]: v.split(" at ")[0] for c, v, _ in report.claims(entries, recs)}


def test_claims_follow_the_inception_numbers_only():
    verdicts = _verdicts(_records_with({"C2sp": 20.0, "C3": 22.0, "C2": 60.0}, {}))
    assert verdicts["Table 4: C2sp reaches a lower FID than C3"] == "holds"
    assert verdicts["Table 4: C2 does not converge"] == "holds"
    verdicts = _verdicts(_records_with({"C2sp": 25.0, "C3": 22.0, "C2": 23.0}, {}))
    assert verdicts["Table 4: C2sp reaches a lower FID than C3"] == "does not hold"
    assert verdicts["Table 4: C2 does not converge"] == "does not hold"
    # The offline network's numbers (all 1.0 here) never decide a claim.
    assert _verdicts(_records_with({"C2sp": 20.0}, {}))["Table 4: C2sp reaches a lower FID than C3"] == "not measured"


@pytest.mark.parametrize("c2sp_error,verdict", [(0.070, "holds"), (0.080, "does not hold")])
def test_figure4_claim_follows_errors_and_parameters(c2sp_error, verdict):
    recs = _records_with({}, {"C3": (0.072, 850_000), "C2sp": (c2sp_error, 390_000), "C2": (0.09, 390_000)})
    verdicts = _verdicts(recs)
    assert verdicts["Figure 4: ResNet-56 C2sp reaches C3's test error"] == verdict
    assert verdicts["Figure 4: ResNet-56 C2 has a higher test error than C2sp"] == "holds"
    assert verdicts["Figure 4: ResNet-110 C2sp reaches C3's test error"] == "not measured"


def test_report_names_budgets_and_includes_hand_written_sections(tmp_path):
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    section = tmp_path / "50-inception.md"
    section.write_text("## Inception measurement\n\nhand-written text\n")
    text = report.render_report(entries, _records_with({"C2sp": 20.0, "C3": 22.0}, {}), sections=[section])
    assert text.rstrip().endswith("hand-written text")
    row = next(line for line in text.splitlines() if line.startswith("| table4-sngan-C2sp-seed0 | C2sp |")
               and "inception" in line)
    assert "10,000 G = 50,000 D steps (25.0% of the paper's 200k, 4 packed)" in row
    assert "20.00" in row and "23.35" in row and "c0ffee" in row
    assert "| 19 | bench-step4 |" in text
    # The claims name the budget the entries trained.
    claim = next(line for line in text.splitlines() if line.startswith("| Table 4: C2sp reaches a lower FID"))
    assert "holds at 10,000 G = 50,000 D steps" in claim


def test_report_shows_conditional_rows_beside_the_studiogan_yardstick():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    rid = "cond-sngan-C2sp-diffaug-seed0"
    recs = [{"record": "run", "run": "r", "device": "1 x NVIDIA H200 (gpu)", "commit": "c0ffee", "versions": {}},
            {**_gan_result(rid, "r", ["s.npz"]), "device": "1 x NVIDIA H200 (gpu)", "commit": "c0ffee",
             "conditional": True, "step_time_s": 0.03, "steps": 8_000},
            {"record": "evaluation", "id": rid, "of_run": "r", "network": "inception-abc",
             "feature_network": {"name": "inception", "sha256": "abc"}, "num_samples": 10000,
             "labels": "stored with the samples",
             "metrics": {"fid_inception": 17.5, "fid_intra_inception": 41.25, "kid_inception": 0.012}}]
    text = report.render_report(entries, recs)
    section = text.split("## Conditional SNGAN on CIFAR-10")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| {rid} |"))
    assert "| 17.50 | 41.25 | 0.0120 |" in row and "color,translation,cutout" in row
    assert "8,000 G = 40,000 D steps (20.0% of the paper's 200k)" in row
    assert "13.16" in section and "8.13" in section and "different protocol and budget" in section
    # Conditional results never enter Table 4's rows or claims.
    table4 = text.split("## Table 4")[1].split("\n## ")[0]
    assert rid not in table4


def test_committed_report_is_regenerated_from_the_committed_results():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    recs = results.read(REPO / "paper" / "results.jsonl")
    sections = sorted((REPO / "paper" / "sections").glob("*.md"))
    assert (REPO / "REPRODUCTION.md").read_text() == report.render_report(entries, recs, sections=sections)
    assert str(REPO.parent) not in (REPO / "REPRODUCTION.md").read_text()  # no machine path


# ----------------------------------------------------------------------------------------------
# The evaluate command (the smoke plan end to end: tests/paper/test_device.py, through run.sh).


def test_evaluate_command_merges_and_labels_with_the_network(tmp_path, monkeypatch):
    import ml_collections

    from gan.metrics import Evaluator, eval_settings

    monkeypatch.setenv("SYMPAD_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    images = np.random.default_rng(2).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    names = runner.write_samples(images, out=run, stem="samples-g", max_bytes=4096 + 25 * 32 * 32 * 3)
    results.append(run / "results.jsonl", {"record": "run", "run": "r", "campaign": "device"})
    results.append(run / "results.jsonl", _gan_result("table4-sngan-C3-seed0", "r", names))
    committed = tmp_path / "results.jsonl"
    args = ["--evaluate", f"--out={run}", f"--results={committed}", "--feature_network=offline",
            "--reference=synthetic", "--num_reference=64"]
    reproduce.main(args)
    recs = results.read(committed)
    (ev,) = [r for r in recs if r["record"] == "evaluation"]
    assert ev["id"] == "table4-sngan-C3-seed0" and ev["num_samples"] == 40 and ev["num_reference"] == 64
    assert ev["feature_network"]["name"] == "offline_cifar10" and len(ev["feature_network"]["sha256"]) == 64
    assert ev["network"] == f"offline_cifar10-{ev['feature_network']['sha256'][:12]}"
    config = ml_collections.ConfigDict({"data": "synthetic", "eval": dict(feature_network="offline", num_reference=64)})
    direct = Evaluator(eval_settings(config)).report(images)["metrics"]
    assert ev["metrics"]["fid_offline_cifar10"] == pytest.approx(direct["fid_offline_cifar10"], rel=1e-6)
    reproduce.main(args)  # nothing new: merged and scored once
    assert len(results.read(committed)) == len(recs)


def test_evaluate_command_scores_conditional_entries_per_class(tmp_path, monkeypatch):
    import ml_collections

    from gan.metrics import Evaluator, eval_settings

    monkeypatch.setenv("SYMPAD_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    images = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    # gan.sample wrote no labels here: the plan says the entry is conditional, the contract gives i % 10.
    names = runner.write_samples(images, out=run, stem="samples-c")
    results.append(run / "results.jsonl", {"record": "run", "run": "r", "campaign": "device"})
    results.append(run / "results.jsonl", _gan_result("cond-sngan-C2sp-seed0", "r", names))
    committed = tmp_path / "results.jsonl"
    reproduce.main(["--evaluate", f"--out={run}", f"--results={committed}", "--feature_network=offline",
                    "--reference=synthetic", "--num_reference=64"])
    (ev,) = [r for r in results.read(committed) if r["record"] == "evaluation"]
    assert "i % 10" in ev["labels"] and ev["intra_class"]["classes"] == list(range(10))
    config = ml_collections.ConfigDict(
        {"data": "synthetic", "eval": {"feature_network": "offline", "num_reference": 64}})
    direct = Evaluator(eval_settings(config)).report(images, np.arange(40) % 10)["metrics"]
    for key in ("fid_offline_cifar10", "fid_intra_offline_cifar10", "fid_class3_offline_cifar10"):
        assert ev["metrics"][key] == pytest.approx(direct[key], rel=1e-6), key


@pytest.mark.integration  # the runner's processes
def test_bench_entries_resume_their_records_until_complete(tmp_path):
    # A stand-in for benchmarks.all: measures one group per run, says what is left as it does.
    code = ("import json, pathlib, sys\n"
            "out = pathlib.Path(next(a for a in sys.argv if a.startswith('--out=')).split('=', 1)[1])\n"
            "path = out / 'results.jsonl'\n"
            "have = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []\n"
            "n = sum(r['record'] == 'model' for r in have)\n"
            "path.open('a').write(json.dumps({'record': 'model', 'group': n}) + '\\n')\n"
            "print('done: x y; complete' if n == 1 else 'done: x y; 1 groups left (step 1: g1)')\n")
    entry = plan.Entry(id="bench-x", experiment="bench", suite="bench", estimate_s=1, budget="b",
                       argv=("python", "-c", code))
    out = tmp_path / "out"
    first = runner.run_plan([entry], out=out, deadline_s=60, workroot=tmp_path / "work")
    assert [r["status"] for r in first if r["record"] == "result"] == ["partial"]
    # A fresh machine (the work root is gone): the records come from the results.
    second = runner.run_plan([entry], out=out, deadline_s=60, workroot=tmp_path / "work2")
    (done,) = [r for r in second if r["record"] == "result"]
    assert done["status"] == "done" and [b["group"] for b in done["bench_records"]] == [0, 1]


def test_subcommands_spell_the_mode_flags():
    spell = reproduce.from_subcommand
    assert spell(["run", "--out=o"]) == ["--budget=device", "--out=o"]
    assert spell(["run", "smoke", "--out=o", "--evaluate"]) == ["--budget=smoke", "--out=o", "--evaluate"]
    assert spell(["evaluate", "--out=o"]) == ["--evaluate", "--out=o"]
    assert spell(["report", "R.md"]) == ["--report", "R.md"] and spell(["write-plan"]) == ["--write-plan"]
    assert spell(["--evaluate", "--out=o"]) == ["--evaluate", "--out=o"] and spell([]) == []
    parse = reproduce._parser().parse_args
    assert vars(parse(spell(["report", "R.md"]))) == vars(parse(["--report", "R.md"]))
    assert parse(spell(["run", "smoke", "--out=o"])).budget == "smoke"
    with pytest.raises(SystemExit, match="nothing to do: pass a subcommand"):
        reproduce.main([])

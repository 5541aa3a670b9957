"""The results file's typed records (paper.campaign.results) and the report's Table 4 mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from paper.campaign import plan, report, results

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, records, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def _result(entry_id: str, run: str = "r", status: str = "done", **fields):
    return {"record": "result", "id": entry_id, "run": run, "status": status, **fields}


# ----------------------------------------------------------------------------------------------
# Loading and validation.


def test_load_types_each_kind_and_keeps_unknown_keys_and_kinds(tmp_path):
    path = _write(tmp_path / "results.jsonl", [
        {"record": "run", "run": "r", "deadline_s": 510, "versions": {"jax": "0.10.2"}, "new_run_field": [1, 2]},
        {"record": "started", "id": "a", "run": "r", "allotted_s": 400},
        _result("a", seeds=[0, 1], steps=1200, step_time_s=0.025, artifacts=["s-0.npz"], calibration={"n": 2}),
        {"record": "sizing", "group": "table4", "run": "r", "steps": 1200, "rates": {"a": 12.5, "b": None}},
        {"record": "evaluation", "id": "a", "of_run": "r", "network": "inception-abc",
         "feature_network": {"name": "inception"}, "metrics": {"fid_inception": 23.5, "kid_inception": 0.01}},
        {"record": "crosscheck", "id": "a", "of_run": "r", "of_network": "inception-abc", "network": "inception-cpu",
         "num": 512, "max_rel_diff": 1e-5},
        {"record": "seeds_calibration", "seeds": [1, 2, 4]},
    ])
    recs = results.load(path)
    assert [type(r).__name__ for r in recs] == ["Run", "Started", "Result", "Sizing", "Evaluation", "Crosscheck",
                                                "Other"]
    assert [r.line for r in recs] == [1, 2, 3, 4, 5, 6, 7]
    (run,) = recs.runs()
    assert run.deadline_s == 510.0 and isinstance(run.deadline_s, float) and run.extra == {"new_run_field": [1, 2]}
    (result,) = recs.results()
    assert result.seeds == (0, 1) and result.steps == 1200 and result.artifacts == ("s-0.npz",)
    assert result.extra == {"calibration": {"n": 2}}  # a newer runner's field, kept as it was
    (ev,) = recs.evaluations(result)
    assert ev.metric("fid") == 23.5 and ev.metric("kid") == 0.01 and ev.metric("fid_intra") is None
    assert [c.num for c in recs.crosschecks(ev)] == [512] and recs.crosschecks(ev, network="other") == []
    assert recs.sizings()[0].rates == {"a": 12.5, "b": None}
    assert recs[-1].kind == "seeds_calibration" and recs[-1].extra == {"seeds": [1, 2, 4]}


@pytest.mark.parametrize("record, line_text", [
    (_result("a", status="ok"), "field 'status' must be one of done | killed | partial | failed, got 'ok'"),
    ({"record": "result", "id": "a", "run": "r"}, "result record lacks field 'status'"),
    (_result("a", steps="many"), "field 'steps' must be an int or null, got \"many\""),
    (_result("a", seeds=[0, "1"]), "field 'seeds[1]' must be an int, got \"1\""),
    (_result("a", artifacts="s.npz"), "field 'artifacts' must be a list of strings"),
    ({"record": "evaluation", "id": "a", "of_run": "r", "network": "n", "metrics": [1]},
     "field 'metrics' must be an object"),
    ({"id": "a"}, "field 'record' must name the record's kind"),
])
def test_a_malformed_record_is_one_error_naming_file_line_and_field(tmp_path, record, line_text):
    path = _write(tmp_path / "results.jsonl", [{"record": "run", "run": "r"}, record])
    with pytest.raises(results.RecordError) as info:
        results.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and line_text in message and "\n" not in message


def test_only_a_cut_off_last_line_is_dropped(tmp_path):
    ok = [{"record": "run", "run": "r"}, _result("a")]
    assert len(results.load(_write(tmp_path / "cut.jsonl", ok, tail='{"record": "res'))) == 2
    path = tmp_path / "bad.jsonl"
    path.write_text('{"record": "run", "run": "r"}\n{"record": \n' + json.dumps(_result("a")) + "\n")
    with pytest.raises(results.RecordError, match=r"bad.jsonl:2: not a JSON line"):
        results.load(path)
    assert len(results.load(tmp_path / "missing.jsonl")) == 0


def test_dicts_are_validated_too_and_named_by_their_place():
    with pytest.raises(results.RecordError, match=r"^<records>, record 2: result record 'a': field 'run'"):
        results.Records.of([{"record": "run", "run": "r"}, _result("a", run=3)])


def test_latest_results_prefer_done_over_later_outcomes():
    recs = results.Records.of([
        _result("a", "r1", "killed"), _result("a", "r2", "done"), _result("a", "r3", "failed"),
        _result("b", "r1", "failed"), _result("b", "r2", "killed"),
        _result("c", "r1", "done"), _result("c", "r2", "done"),
    ])
    latest = recs.latest_results()
    assert {k: (r.run, r.status) for k, r in latest.items()} == {
        "a": ("r2", "done"), "b": ("r2", "killed"), "c": ("r2", "done")}
    assert recs.done_ids() == {"a", "c"}


def test_attempts_count_outcomes_and_unclosed_starts():
    raw = [{"record": "started", "id": "a", "run": "r1"}, _result("a", "r1", "killed", allotted_s=300),
           {"record": "started", "id": "a", "run": "r2"}, _result("a", "r2", "killed", allotted_s=450.5),
           {"record": "started", "id": "a", "run": "r3"},  # killed from outside: no result
           {"record": "started", "id": "b", "run": "r3"}, _result("b", "r3", "partial")]
    got = results.Records.of(raw).attempts("a")
    assert (got.killed, got.interrupted, got.done, got.allotted_s) == (2, 1, 0, 450.5)
    # The function-level API the runner calls returns the same as a dict.
    assert results.attempts(raw, "b") == {"done": 0, "killed": 0, "partial": 1, "failed": 0, "interrupted": 0,
                                          "allotted_s": 0.0}
    assert results.done_ids(raw) == set()


# ----------------------------------------------------------------------------------------------
# Table 4: mean ± std over seeds, beside the paper's.


def _table4_records(fids: dict[str, dict[int, float]], steps: dict[str, dict[int, int]]):
    recs = [{"record": "run", "run": "r", "device": "1 x NVIDIA H200 (gpu)", "commit": "c0ffee"}]
    for kind, by_seed in fids.items():
        for seed, fid in by_seed.items():
            rid = f"table4-sngan-{kind}-seed{seed}"
            recs.append(_result(rid, suite="gan", seed=seed, seeds=[0, 1], steps=steps[kind][seed], packing=4,
                                artifacts=["s.npz"]))
            recs.append({"record": "evaluation", "id": rid, "of_run": "r", "network": "inception-abc",
                         "feature_network": {"name": "inception"}, "metrics": {"fid_inception": fid}})
    return recs


def _summary_rows(text: str) -> dict[str, list[str]]:
    table4 = text.split("## Table 4")[1].split("Per entry")[0]
    rows = [line.strip("|").split(" | ") for line in table4.splitlines() if line.startswith("| C")]
    return {row[0].strip(): [c.strip() for c in row[1:]] for row in rows}


def test_table4_summary_shows_mean_and_sample_std_over_seeds_beside_the_paper():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    fids = {"C3": {0: 24.0, 1: 25.0}, "C2sp": {0: 22.5, 1: 23.25}, "C4sp": {0: 26.0}}
    steps = {"C3": {0: 1000, 1: 1000}, "C2sp": {0: 1000, 1: 1000}, "C4sp": {0: 900}}
    text = report.render_report(entries, _table4_records(fids, steps))
    rows = _summary_rows(text)
    # Independent reference: the sample std of two values is |a - b| / sqrt(2).
    assert rows["C3"] == ["24.12 ± 0.47", f"24.50 ± {1 / 2 ** 0.5:.2f}", "2 (0, 1)", "5,000"]
    assert rows["C2sp"] == ["23.35 ± 0.26", f"22.88 ± {0.75 / 2 ** 0.5:.2f}", "2 (0, 1)", "5,000"]
    assert rows["C4sp"] == ["24.86 ± 0.41", "26.00 (one seed: no std)", "1 (0)", "4,500"]
    assert rows["C2"] == ["does not converge", "not measured", "0", "-"]
    # The claim compares the means and says how many seeds each has.
    claim = next(line for line in text.splitlines() if line.startswith("| Table 4: C2sp reaches a lower FID"))
    assert "| holds at 1,000 G = 5,000 D steps" in claim and "seeds 0, 1 in one process" in claim
    assert "C2sp 22.88 ± 0.53 (n=2) vs C3 24.50 ± 0.71 (n=2)" in claim
    # The per-entry table stays: one row per (kind, seed).
    entry_rows = [line for line in text.split("Per entry")[1].split("\n## ")[0].splitlines()
                  if line.startswith("| table4-")]
    assert len(entry_rows) == 5


def test_table4_summary_says_when_seeds_trained_different_step_counts():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    recs = _table4_records({"C3": {0: 24.0, 1: 26.0}}, {"C3": {0: 1000, 1: 800}})
    kinds = report.table4_fids(entries, recs)
    assert kinds["C3"].mean == 25.0 and kinds["C3"].std == pytest.approx(statistics.stdev([24.0, 26.0]))
    assert kinds["C2sp"].n == 0
    row = _summary_rows(report.render_report(entries, recs))["C3"]
    assert row[3] == "differ: 5,000 (seed 0), 4,000 (seed 1)"

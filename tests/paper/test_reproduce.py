"""The reproduction runner: claim verdicts from given results, and the smoke budget end to end."""

from __future__ import annotations

import json

import pytest

from paper import reproduce


def _env():
    return {"date": "d", "device": "1 x cpu", "cpu_count": 2, "versions": {"jax": "x"}}


def _classify_rows(c2sp_error, c3_error):
    return [
        {"depth": 20, "kind": "C3", "command": "c3", "seconds": 1.0, "test_error": c3_error, "num_params": 272_000},
        {"depth": 20, "kind": "C2sp", "command": "c2sp", "seconds": 1.0, "test_error": c2sp_error, "num_params": 124_000},
    ]


@pytest.mark.parametrize("c2sp_error,verdict", [(0.080, "holds"), (0.120, "does not hold")])
def test_figure4_claim_follows_the_measured_errors(c2sp_error, verdict):
    results = {"short": {"budget": "short", "command": "cmd", "env": _env(), "classify": _classify_rows(c2sp_error, 0.085)}}
    report = reproduce.render_report(results)
    line = next(l for l in report.splitlines() if l.startswith("| Fig. 4"))
    assert line.endswith(f"| {verdict} |")
    # Unmeasured budgets and rows say so.
    assert "**paper**" in report and "not measured yet" in report
    assert "| - | C4sp | - | 24.86 | not measured |" in report


def test_gan_claim_compares_fid_of_the_same_network():
    gan = [
        {"kind": k, "commands": ["a"], "seconds": 1.0, "metrics": {"fid_offline_cifar10": fid}, "feature_network": "offline_cifar10",
         "num_samples": 10, "protocol": "test10k", "generator_params": 1, "diverged": False}
        for k, fid in (("C3", 20.0), ("C2sp", 25.0))
    ]
    report = reproduce.render_report({"smoke": {"budget": "smoke", "command": "c", "env": _env(), "gan": gan}})
    line = next(l for l in report.splitlines() if l.startswith("| Table 4"))
    assert line.endswith("| does not hold |")


@pytest.mark.slow
def test_smoke_budget_end_to_end(tmp_path):
    report = tmp_path / "REPRODUCTION.md"
    result = reproduce.main(["--budget=smoke", "--kinds=C2sp", f"--out={tmp_path / 'out'}", f"--report={report}"])
    saved = json.loads((tmp_path / "out" / "results_smoke.json").read_text())
    assert saved["budget"] == "smoke" and set(saved) >= {"q_curves", "shift", "classify", "gan"}
    q = result["q_curves"]["q_final_over_q0"]["C2sp"]
    assert 0.0 < q < 1.0  # Q decays through 55 plain layers (paper eq. 7).
    (row,) = result["classify"]
    assert row["kind"] == "C2sp" and 0.0 <= row["test_error"] <= 1.0 and row["num_params"] > 0
    (gan,) = result["gan"]
    assert gan["feature_network"] and any(k.startswith("fid") for k in gan["metrics"])
    text = report.read_text()
    assert "python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp" in text
    assert "| - | C3 | - | 24.12 | not measured |" in text

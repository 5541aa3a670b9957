"""REPRODUCTION.md from the plan and the results file (``python -m paper.reproduce --report``).

Generated sections: how to run the campaign, the claims with verdicts, the plan's status, Table 4,
Figure 4, the benchmark entries, conditional SNGAN (issue 18, beside StudioGAN's numbers as a
yardstick of another protocol and budget), the device runs. Hand-written sections are Markdown fragments in
``paper/sections/*.md``, included verbatim in name order after the generated ones, so a section
that ``--report`` does not produce survives every regeneration: edit the fragment, not the report.

Verdicts come only from device results of the plan at their stated budget (no CPU smoke runs),
and FID verdicts only from the Inception network: 'holds' / 'does not hold' at that budget, or
'not measured' with what is missing.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paper.campaign.plan import STUDIOGAN, Entry

__all__ = ["PAPER_FID", "claims", "render_report"]

#: Table 4 top of the paper (SNGAN, CIFAR-10, Inception FID, mean over runs); C2 did not converge.
PAPER_FID = {"C3": "24.12 ± 0.47", "C2sp": "23.35 ± 0.26", "C4sp": "24.86 ± 0.41", "C2": "does not converge"}
#: The network whose FID the verdicts use (the paper's).
VERDICT_NETWORK = "inception"

Records = Sequence[Mapping[str, Any]]


def _latest_results(records: Records) -> dict[str, Mapping[str, Any]]:
    """The last result of each entry, a 'done' one preferred."""
    latest: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r.get("record") != "result":
            continue
        if r["id"] not in latest or r.get("status") == "done" or latest[r["id"]].get("status") != "done":
            latest[r["id"]] = r
    return latest


def _evaluations(records: Records, result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("record") == "evaluation" and r.get("id") == result["id"]
            and r.get("of_run") == result.get("run")]


def _fid(records: Records, result: Mapping[str, Any], network: str = VERDICT_NETWORK) -> float | None:
    for ev in reversed(_evaluations(records, result)):
        if ev.get("feature_network", {}).get("name") == network and f"fid_{network}" in ev.get("metrics", {}):
            return float(ev["metrics"][f"fid_{network}"])
    return None


def _crosscheck(records: Records, ev: Mapping[str, Any]) -> str:
    """This CPU's check of a device evaluation's features, as text ('-' when none)."""
    checks = [r for r in records if r.get("record") == "crosscheck" and r.get("id") == ev.get("id")
              and r.get("of_run") == ev.get("of_run") and r.get("of_network") == ev.get("network")]
    return "; ".join(f"{c['num']} images, max rel. diff {c['max_rel_diff']:.1e} ({c.get('form', '?')} weights)"
                     for c in checks) or "-"


def _trained(result: Mapping[str, Any], entry: Entry) -> str:
    """The budget an entry actually trained: its steps (D steps for a GAN) as a share of the paper's."""
    steps = result.get("steps")
    if not steps or entry.suite != "gan":
        return entry.budget.split(";")[0]
    d = int(steps) * 5
    packed = f", {result['packing']} packed" if result.get("packing", 1) > 1 else ""
    return f"{steps:,} G = {d:,} D steps ({d / 200_000:.1%} of the paper's 200k{packed})"


def _diverged(result: Mapping[str, Any]) -> bool:
    tail = result.get("log_tail", "")
    return result.get("status") == "failed" and any(s in tail for s in ("DivergenceError", "finite", "nan", "NaN"))


def _budget_of(entries: Sequence[Entry], experiment: str, **match: Any) -> str:
    """The budget the entries of one claim share (the plan's budget text up to its ';')."""
    for e in entries:
        if e.experiment == experiment and all(e.args.get(k) == v for k, v in match.items()):
            return e.budget.split(";")[0]
    return "?"


def claims(entries: Sequence[Entry], records: Records) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) of each claim the plan measures."""
    results = _latest_results(records)
    by_entry = {e.id: e for e in entries}
    rows = []

    # Table 4: FID per generator kind, mean over the seeds measured at the plan's budget.
    fids: dict[str, list[float]] = {}
    diverged: dict[str, bool] = {}
    for rid, r in results.items():
        e = by_entry.get(rid)
        if e is None or e.experiment != "table4":
            continue
        kind = e.args["kernel"]
        if r.get("status") == "done":
            fid = _fid(records, r)
            if fid is not None:
                fids.setdefault(kind, []).append(fid)
        diverged[kind] = diverged.get(kind, False) or _diverged(r)
    budget = _budget_of(entries, "table4")
    trained = sorted({_trained(r, by_entry[rid]) for rid, r in results.items()
                      if rid in by_entry and by_entry[rid].experiment == "table4" and r.get("status") == "done"})
    if trained:
        budget = " / ".join(trained)

    def mean(kind: str) -> str:
        v = fids[kind]
        return f"{statistics.fmean(v):.2f} ({len(v)} seed{'s' if len(v) > 1 else ''})"

    def fid_claim(name: str, a: str, b: str) -> tuple[str, str, str]:
        if a in fids and b in fids:
            ok = statistics.fmean(fids[a]) < statistics.fmean(fids[b])
            return (name, f"{'holds' if ok else 'does not hold'} at {budget}",
                    f"Inception FID {a} {mean(a)} vs {b} {mean(b)}")
        missing = [k for k in (a, b) if k not in fids]
        return name, f"not measured at {budget}", f"no Inception FID for {', '.join(missing)} yet"

    rows.append(fid_claim("Table 4: C2sp reaches a lower FID than C3 (paper 23.35 vs 24.12)", "C2sp", "C3"))
    name = "Table 4: C2 does not converge (here: training diverges, or FID at least 1.5x C3's)"
    if diverged.get("C2"):
        rows.append((name, f"holds at {budget}", "C2 training stopped on a non-finite loss"))
    elif "C2" in fids and "C3" in fids:
        ratio = statistics.fmean(fids["C2"]) / statistics.fmean(fids["C3"])
        rows.append((name, f"{'holds' if ratio >= 1.5 else 'does not hold'} at {budget}",
                     f"Inception FID C2 {mean('C2')} = {ratio:.2f}x C3's {mean('C3')}"))
    else:
        rows.append((name, f"not measured at {budget}", "no Inception FID for C2 and C3 yet"))

    # Figure 4: test error and parameters per depth.
    for depth in sorted({e.args["depth"] for e in entries if e.experiment == "figure4"}):
        got = {}
        for e in entries:
            r = results.get(e.id)
            if e.experiment == "figure4" and e.args["depth"] == depth and r and r.get("status") == "done":
                m = r.get("metrics", {})
                if m.get("test_error") is not None and m.get("num_params"):
                    got[e.args["kernel"]] = (float(m["test_error"]), int(m["num_params"]))
        budget = _budget_of(entries, "figure4", depth=depth)
        name = f"Figure 4: ResNet-{depth} C2sp reaches C3's test error (within 0.5 pt) with fewer parameters"
        if {"C2sp", "C3"} <= set(got):
            (e_sp, p_sp), (e_3, p_3) = got["C2sp"], got["C3"]
            ok = e_sp <= e_3 + 0.005 and p_sp < p_3
            rows.append((name, f"{'holds' if ok else 'does not hold'} at {budget}",
                         f"C2sp {e_sp:.2%} with {p_sp:,} params vs C3 {e_3:.2%} with {p_3:,}"))
        else:
            rows.append((name, f"not measured at {budget}", "C2sp and C3 not both trained yet"))
        name = f"Figure 4: ResNet-{depth} C2 has a higher test error than C2sp"
        if {"C2sp", "C2"} <= set(got):
            ok = got["C2"][0] > got["C2sp"][0]
            rows.append((name, f"{'holds' if ok else 'does not hold'} at {budget}",
                         f"C2 {got['C2'][0]:.2%} vs C2sp {got['C2sp'][0]:.2%}"))
        else:
            rows.append((name, f"not measured at {budget}", "C2 and C2sp not both trained yet"))
    return rows


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _status(entry: Entry, records: Records) -> str:
    tries = [r for r in records if r.get("record") == "result" and r.get("id") == entry.id]
    if not tries:
        started = sum(1 for r in records if r.get("record") == "started" and r.get("id") == entry.id)
        return f"interrupted ({started}x)" if started else "pending"
    latest = _latest_results(records)[entry.id]
    return latest["status"] + (f" ({len(tries)} tries)" if len(tries) > 1 else "")


def _commands(r: Mapping[str, Any]) -> str:
    return "<br>".join(f"`{c}`" for c in r.get("commands", []))


def _provenance(r: Mapping[str, Any]) -> str:
    return f"{r.get('device', '?')}, {r.get('date', '?')}, commit {str(r.get('commit', '?'))[:12]}"


def _conditional_section(entries: Sequence[Entry], records: Records,
                         results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Conditional SNGAN rows (overall and intra-class FID) and StudioGAN's numbers as a yardstick."""
    cond = [e for e in entries if e.experiment == "conditional"]
    if not cond:
        return []
    about = ("Not in the paper: class-conditional SNGAN (conditional BN in G, projection D, hinge loss), G C3 vs "
             "C2sp, without and with DiffAugment, at one D-step budget. FID: 10k samples (class `i % 10`) vs the "
             "10k test images; intra-FID: the mean over classes of each class's FID against that class's 1k test "
             "images (biased upward by the small per-class counts: compare it only with intra-FIDs at the same "
             "counts).")
    yardstick = (f"Yardstick, a different protocol and budget: PyTorch-StudioGAN reports Inception FID on "
                 f"{STUDIOGAN['num_reference'] // 1000}k CIFAR-10 test images of conditional SNGAN "
                 f"{STUDIOGAN['fid_sngan']} and BigGAN {STUDIOGAN['fid_biggan']}, after "
                 f"{STUDIOGAN['sngan_d_steps'] // 1000}k D steps (SNGAN) with its own code, random flips and "
                 "its best checkpoint; the rows below are at the fraction of that budget shown.")
    header = ("| entry | G kind | DiffAugment | budget | G params | FID | intra-FID | KID | feature network | "
              "samples | labels | step ms | compile s | status | device, date, commit | commands |")
    lines = ["", "## Conditional SNGAN on CIFAR-10 (issue 18)", "", about, "", yardstick, "", header, "|" + "---|" * 16]
    for e in cond:
        r = results.get(e.id)
        if r is None:
            continue
        params = (r.get("params") or {}).get("generator")
        for ev in _evaluations(records, r) or [{}]:
            m = ev.get("metrics", {})
            net = ev.get("feature_network", {}).get("name")
            lines.append(
                f"| {e.id} | {e.args['kernel']} | {e.set.get('diffaugment') or 'off'} | {_trained(r, e)} | "
                f"{f'{params:,}' if params else '-'} | {_fmt(m.get(f'fid_{net}') if net else None, '.2f')} | "
                f"{_fmt(m.get(f'fid_intra_{net}') if net else None, '.2f')} | "
                f"{_fmt(m.get(f'kid_{net}') if net else None, '.4f')} | {ev.get('network', 'not evaluated')} | "
                f"{ev.get('num_samples', r.get('num_samples', '-'))} | {ev.get('labels', '-')} | "
                f"{_fmt(r['step_time_s'] * 1e3 if r.get('step_time_s') else None, '.1f')} | "
                f"{_fmt(r.get('compile_s'), '.0f')} | {r['status']} | {_provenance(r)} | {_commands(r)} |")
    lines += ["", "| yardstick (StudioGAN, another protocol and budget) | FID |", "|---|---|",
              f"| conditional SNGAN, {STUDIOGAN['sngan_d_steps'] // 1000}k D steps | {STUDIOGAN['fid_sngan']} |",
              f"| conditional BigGAN | {STUDIOGAN['fid_biggan']} |"]
    return lines


def render_report(entries: Sequence[Entry], records: Records, *, sections: Sequence[Path] = (),
                  plan_path: str = "paper/plan.json", results_path: str = "paper/results.jsonl") -> str:
    """The text of REPRODUCTION.md."""
    results = _latest_results(records)
    lines = [
        "# Reproduction report", "",
        f"Generated by `python -m paper.reproduce --report` from the plan `{plan_path}` and the results "
        f"`{results_path}`; do not edit by hand (hand-written sections live in `paper/sections/*.md`). "
        "Every number was measured by the command beside it, on the device named there; budgets are "
        "fractions of the paper's. CPU smoke runs never enter this report.", "",
        "The campaign, one device run at a time (each continues where the results stop; README: "
        "'Reproducing the paper on a GPU'):", "",
        "```",
        "bash paper/device/prepare.sh                       # here: data, wheels, FID weights, commit (git-ignored)",
        "bash paper/device/run.sh OUT                       # GPU machine: the next entries, Inception FID there",
        "python -m paper.reproduce --evaluate --out=OUT    # CPU: merge, check the device's features on this CPU",
        "python -m paper.reproduce --report                # CPU: this file",
        "```", "",
        "## Claims", "",
        "| claim | verdict | evidence |", "|---|---|---|",
    ]
    lines += [f"| {c} | {v} | {ev} |" for c, v, ev in claims(entries, records)]
    lines += ["", "## Plan and status", "",
              "| # | entry | budget | estimate | status | device, date, commit |", "|---|---|---|---|---|---|"]
    for i, e in enumerate(entries, 1):
        r = results.get(e.id)
        lines.append(f"| {i} | {e.id} | {e.budget} | {e.estimate_s:.0f} s | {_status(e, records)} | "
                     f"{_provenance(r) if r else '-'} |")

    lines += ["", "## Table 4: SNGAN on CIFAR-10", "",
              "Paper: Inception FID, 10k samples vs the test split, 200k D steps, mean ± std over runs. Here: "
              "the same protocol at the steps shown (the kinds of a seed trained at once on one device, "
              "for one step count); FID/KID computed where the samples were made (`scored on`), "
              "`feature network` names the network and its weights digest (only `inception` is comparable "
              "with the paper), `weights` their form (float16-rounded weights moved FID by 5e-4 relative "
              "in a CPU test), `CPU check` this CPU's pool3 features of returned samples against the device's.",
              "",
              "| entry | G kind | seed | trained | G params | paper FID | FID | KID | feature network | weights | "
              "samples | scored on | CPU check | step ms | compile s | status | device, date, commit | commands |",
              "|" + "---|" * 18]
    for e in (e for e in entries if e.experiment == "table4"):
        r = results.get(e.id)
        if r is None:
            continue
        evs = _evaluations(records, r) or [{}]
        for ev in evs:
            m = ev.get("metrics", {})
            net = ev.get("feature_network", {}).get("name")
            fid = m.get(f"fid_{net}") if net else None
            kid = m.get(f"kid_{net}") if net else None
            params = (r.get("params") or {}).get("generator")
            lines.append(
                f"| {e.id} | {e.args['kernel']} | {e.args.get('seed')} | {_trained(r, e)} | "
                f"{f'{params:,}' if params else '-'} | {PAPER_FID.get(e.args['kernel'], '-')} | "
                f"{_fmt(fid, '.2f')} | {_fmt(kid, '.4f')} | {ev.get('network', 'not evaluated')} | "
                f"{ev.get('feature_network', {}).get('form', '-')} | "
                f"{ev.get('num_samples', r.get('num_samples', '-'))} | {ev.get('device', '-')} | "
                f"{_crosscheck(records, ev)} | "
                f"{_fmt(r['step_time_s'] * 1e3 if r.get('step_time_s') else None, '.1f')} | "
                f"{_fmt(r.get('compile_s'), '.0f')} | {r['status']} | {_provenance(r)} | {_commands(r)} |")

    lines += ["", "## Figure 4: CIFAR-10 ResNet, test error against parameters", "",
              "Paper: C2sp reaches C3's error with 60-70% of the parameters; C2 is worse (figure only; "
              "300 epochs, batch 64).", "",
              "| entry | depth | kind | budget | params | test error | step ms | compile s | status | "
              "device, date, commit | command |", "|" + "---|" * 11]
    for e in (e for e in entries if e.experiment == "figure4"):
        r = results.get(e.id)
        if r is None:
            continue
        m = r.get("metrics", {})
        params = f"{int(m['num_params']):,}" if m.get("num_params") else "-"
        lines.append(
            f"| {e.id} | {e.args['depth']} | {e.args['kernel']} | {e.budget} | {params} | "
            f"{_fmt(m.get('test_error'), '.2%')} | "
            f"{_fmt(r['step_time_s'] * 1e3 if r.get('step_time_s') else None, '.1f')} | "
            f"{_fmt(r.get('compile_s'), '.0f')} | {r['status']} | {_provenance(r)} | {_commands(r)} |")

    lines += ["", "## GPU benchmarks (BENCHMARKS.md's open targets, through benchmarks.all)", "",
              "| entry | what | status | records | device, date, commit | command |", "|---|---|---|---|---|---|"]
    for e in (e for e in entries if e.experiment == "bench"):
        r = results.get(e.id)
        if r is None:
            continue
        measured = sum(1 for b in r.get("bench_records", []) if b.get("record") in ("conv", "model"))
        lines.append(f"| {e.id} | {e.budget} | {r['status']} | {measured} measurements | {_provenance(r)} | "
                     f"{_commands(r)} |")

    lines += _conditional_section(entries, records, results)

    runs = [r for r in records if r.get("record") == "run"]
    lines += ["", "## Device runs", ""]
    if not runs:
        lines.append("No device run yet: every claim above is 'not measured'.")
    for r in runs:
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        lines.append(f"- {r.get('run')}: {r.get('device')}, commit {str(r.get('commit'))[:12]}, deadline "
                     f"{r.get('deadline_s')} s, {versions}; `{r.get('command', '')}`")
    lines.append("")
    text = "\n".join(lines)
    for path in sorted(sections):
        text += "\n" + path.read_text(encoding="utf-8").rstrip() + "\n"
    return text

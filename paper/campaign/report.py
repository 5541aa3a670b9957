"""REPRODUCTION.md from the plan and the results file (``python -m paper.reproduce report``).

Generated sections: how to run the campaign, the claims with verdicts, the plan's status, Table 4
(per kind: mean ± std over the seeds beside the paper's; per entry), Figure 4, the benchmark
entries, conditional SNGAN (issue 18, beside StudioGAN's numbers as a yardstick of another
protocol and budget), the device runs. Hand-written sections are Markdown fragments in
``paper/sections/*.md``, included verbatim in name order after the generated ones, so a section
that ``--report`` does not produce survives every regeneration: edit the fragment, not the report.

Verdicts come only from device results of the plan at their stated budget (no CPU smoke runs),
and FID verdicts only from the Inception network: 'holds' / 'does not hold' at that budget, or
'not measured' with what is missing.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from paper.campaign.plan import STUDIOGAN, Entry
from paper.campaign.results import Crosscheck, Evaluation, Records, Result

__all__ = ["PAPER_FID", "KindFID", "claims", "render_report", "table4_fids"]

#: Table 4 top of the paper (SNGAN, CIFAR-10, Inception FID, mean over runs); C2 did not converge.
PAPER_FID = {"C3": "24.12 ± 0.47", "C2sp": "23.35 ± 0.26", "C4sp": "24.86 ± 0.41", "C2": "does not converge"}
#: The network whose FID the verdicts use (the paper's).
VERDICT_NETWORK = "inception"
#: D updates per G update of the plan's SNGAN entries that do not set ``n_critic`` (gan.fields' default).
N_CRITIC = 5

#: What the report reads: typed records, or the results file's dicts (validated on the way in).
RecordsLike = Records | Iterable[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class KindFID:
    """Table 4's Inception FID of one generator kind over the seeds measured.

    Attributes:
      kind: the G kernel kind.
      seeds: the seeds with an FID, in plan order.
      fids: their FIDs.
      d_steps: the D steps each trained (None where unknown).
      diverged: seeds whose training stopped on a non-finite loss.
    """

    kind: str
    seeds: tuple[int | None, ...] = ()
    fids: tuple[float, ...] = ()
    d_steps: tuple[int | None, ...] = ()
    diverged: tuple[int | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.fids)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.fids)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None for fewer than two seeds."""
        return statistics.stdev(self.fids) if self.n > 1 else None

    def text(self) -> str:
        """'23.10 ± 0.20 (n=2)', or '20.00 (n=1, one seed: no std)'."""
        if self.std is None:
            return f"{self.mean:.2f} (n=1, one seed: no std)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def _fid(records: Records, result: Result, network: str = VERDICT_NETWORK) -> float | None:
    """The result's latest FID by ``network``."""
    for ev in reversed(records.evaluations(result)):
        if ev.network_name == network and ev.metric("fid") is not None:
            return ev.metric("fid")
    return None


def _d_steps(result: Result, entry: Entry) -> int | None:
    """The D steps a GAN result trained (its G steps times the entry's n_critic)."""
    if not result.steps or entry.suite != "gan":
        return None
    return result.steps * int(entry.set.get("n_critic", N_CRITIC))


def _diverged(result: Result) -> bool:
    return result.status == "failed" and any(s in result.log_tail for s in ("DivergenceError", "finite", "nan", "NaN"))


def table4_fids(entries: Sequence[Entry], records: RecordsLike) -> dict[str, KindFID]:
    """Per Table 4 kind (plan order), the Inception FIDs of its seeds' latest 'done' results."""
    records = Records.of(records)
    results = records.latest_results()
    measured: dict[str, list[tuple[int | None, float, int | None]]] = {}
    diverged: dict[str, list[int | None]] = {}
    for e in (e for e in entries if e.experiment == "table4"):
        kind, seed, r = e.args["kernel"], e.args.get("seed"), results.get(e.id)
        measured.setdefault(kind, [])
        diverged.setdefault(kind, [])
        fid = _fid(records, r) if r is not None and r.status == "done" else None
        if fid is not None:
            measured[kind].append((seed, fid, _d_steps(r, e)))
        if r is not None and _diverged(r):
            diverged[kind].append(seed)
    return {kind: KindFID(kind, seeds=tuple(s for s, _, _ in rows), fids=tuple(f for _, f, _ in rows),
                          d_steps=tuple(d for _, _, d in rows), diverged=tuple(diverged[kind]))
            for kind, rows in measured.items()}


def _trained(result: Result, entry: Entry) -> str:
    """The budget an entry actually trained: its steps (D steps for a GAN) as a share of the paper's."""
    d = _d_steps(result, entry)
    if d is None:
        return entry.budget.split(";")[0]
    packed = f", {result.packing} packed" if result.packing > 1 else ""
    seeds = f", seeds {', '.join(map(str, result.seeds))} in one process" if len(result.seeds) > 1 else ""
    return f"{result.steps:,} G = {d:,} D steps ({d / 200_000:.1%} of the paper's 200k{packed}{seeds})"


def _budget_of(entries: Sequence[Entry], experiment: str, **match: Any) -> str:
    """The budget the entries of one claim share (the plan's budget text up to its ';')."""
    for e in entries:
        if e.experiment == experiment and all(e.args.get(k) == v for k, v in match.items()):
            return e.budget.split(";")[0]
    return "?"


def _table4_claims(entries: Sequence[Entry], records: Records) -> list[tuple[str, str, str]]:
    """Table 4's claims from the kinds' mean FIDs over their seeds, with n."""
    results = records.latest_results()
    by_entry = {e.id: e for e in entries}
    kinds = table4_fids(entries, records)
    fids = {k: f for k, f in kinds.items() if f.n}
    budget = _budget_of(entries, "table4")
    trained = sorted({_trained(r, by_entry[rid]) for rid, r in results.items()
                      if rid in by_entry and by_entry[rid].experiment == "table4" and r.status == "done"})
    if trained:
        budget = " / ".join(trained)

    def fid_claim(name: str, a: str, b: str) -> tuple[str, str, str]:
        if a in fids and b in fids:
            ok = fids[a].mean < fids[b].mean
            return (name, f"{'holds' if ok else 'does not hold'} at {budget}",
                    f"Inception FID {a} {fids[a].text()} vs {b} {fids[b].text()}")
        missing = [k for k in (a, b) if k not in fids]
        return name, f"not measured at {budget}", f"no Inception FID for {', '.join(missing)} yet"

    rows = [fid_claim("Table 4: C2sp reaches a lower FID than C3 (paper 23.35 vs 24.12)", "C2sp", "C3")]
    name = "Table 4: C2 does not converge (here: training diverges, or FID at least 1.5x C3's)"
    if "C2" in kinds and kinds["C2"].diverged:
        rows.append((name, f"holds at {budget}", "C2 training stopped on a non-finite loss"))
    elif "C2" in fids and "C3" in fids:
        ratio = fids["C2"].mean / fids["C3"].mean
        rows.append((name, f"{'holds' if ratio >= 1.5 else 'does not hold'} at {budget}",
                     f"Inception FID C2 {fids['C2'].text()} = {ratio:.2f}x C3's {fids['C3'].text()}"))
    else:
        rows.append((name, f"not measured at {budget}", "no Inception FID for C2 and C3 yet"))
    return rows


def _figure4_claims(entries: Sequence[Entry], records: Records) -> list[tuple[str, str, str]]:
    """Figure 4's claims per depth: test error and parameters of C2sp, C3 and C2."""
    results = records.latest_results()
    rows = []
    for depth in sorted({e.args["depth"] for e in entries if e.experiment == "figure4"}):
        got = {}
        for e in entries:
            r = results.get(e.id)
            if e.experiment == "figure4" and e.args["depth"] == depth and r and r.status == "done":
                if r.metrics.get("test_error") is not None and r.metrics.get("num_params"):
                    got[e.args["kernel"]] = (float(r.metrics["test_error"]), int(r.metrics["num_params"]))
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


def claims(entries: Sequence[Entry], records: RecordsLike) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) of each claim the plan measures."""
    records = Records.of(records)
    return [*_table4_claims(entries, records), *_figure4_claims(entries, records)]


# ----------------------------------------------------------------------------------------------
# Cells.


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _status(entry: Entry, records: Records) -> str:
    tries = records.results(entry.id)
    if not tries:
        started = len(records.started(entry.id))
        return f"interrupted ({started}x)" if started else "pending"
    latest = records.latest_results()[entry.id]
    return latest.status + (f" ({len(tries)} tries)" if len(tries) > 1 else "")


def _commands(r: Result) -> str:
    return "<br>".join(f"`{c}`" for c in r.commands)


def _provenance(r: Result) -> str:
    return f"{r.device or '?'}, {r.date or '?'}, commit {(r.commit or '?')[:12]}"


def _step_ms(r: Result) -> str:
    return _fmt(r.step_time_s * 1e3 if r.step_time_s else None, ".1f")


def _crosscheck(checks: Sequence[Crosscheck]) -> str:
    """This CPU's check of a device evaluation's features, as text ('-' when none)."""
    return "; ".join(f"{c.num} images, max rel. diff {c.max_rel_diff:.1e} ({c.form or '?'} weights)"
                     for c in checks) or "-"


def _samples(ev: Evaluation | None, r: Result) -> Any:
    if ev is not None and ev.num_samples is not None:
        return ev.num_samples
    return r.num_samples if r.num_samples is not None else "-"


def _g_params(r: Result) -> str:
    params = (r.params or {}).get("generator")
    return f"{params:,}" if params else "-"


# ----------------------------------------------------------------------------------------------
# Sections.


def _intro(plan_path: str, results_path: str) -> list[str]:
    return [
        "# Reproduction report", "",
        f"Generated by `python -m paper.reproduce report` from the plan `{plan_path}` and the results "
        f"`{results_path}`; do not edit by hand (hand-written sections live in `paper/sections/*.md`). "
        "Every number was measured by the command beside it, on the device named there; budgets are "
        "fractions of the paper's. CPU smoke runs never enter this report.", "",
        "The campaign, one device run at a time (each continues where the results stop; README: "
        "'Reproducing the paper on a GPU'):", "",
        "```",
        "bash paper/device/prepare.sh                       # here: data, wheels, FID weights, commit (git-ignored)",
        "bash paper/device/run.sh OUT                       # GPU machine: the next entries, Inception FID there",
        "python -m paper.reproduce evaluate --out=OUT    # CPU: merge, check the device's features on this CPU",
        "python -m paper.reproduce report                # CPU: this file",
        "```", "",
    ]


def _claims_section(entries: Sequence[Entry], records: Records) -> list[str]:
    lines = ["## Claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    return lines + [f"| {c} | {v} | {ev} |" for c, v, ev in claims(entries, records)]


def _plan_section(entries: Sequence[Entry], records: Records) -> list[str]:
    results = records.latest_results()
    lines = ["", "## Plan and status", "",
             "| # | entry | budget | estimate | status | device, date, commit |", "|---|---|---|---|---|---|"]
    for i, e in enumerate(entries, 1):
        r = results.get(e.id)
        lines.append(f"| {i} | {e.id} | {e.budget} | {e.estimate_s:.0f} s | {_status(e, records)} | "
                     f"{_provenance(r) if r else '-'} |")
    return lines


def _d_steps_cell(f: KindFID) -> str:
    """The D steps a kind's seeds trained: one count, or each seed's where they differ."""
    if not f.n or all(d is None for d in f.d_steps):
        return "-"
    if len(set(f.d_steps)) == 1:
        return f"{f.d_steps[0]:,}"
    return "differ: " + ", ".join(f"{_fmt(d, ',')} (seed {s})" for s, d in zip(f.seeds, f.d_steps, strict=True))


def _table4_summary(entries: Sequence[Entry], records: Records) -> list[str]:
    """Per kind: the paper's FID and this project's mean ± std over its seeds, their count and D steps."""
    lines = ["Per kind, mean ± std over the seeds measured (sample std, n - 1 in the denominator; a single "
             "seed has none), beside the paper's mean ± std over its runs:", "",
             "| G kind | paper FID (mean ± std) | FID here (mean ± std) | seeds | D steps |", "|---|---|---|---|---|"]
    for kind, f in table4_fids(entries, records).items():
        if f.n:
            here = f"{f.mean:.2f} ± {f.std:.2f}" if f.std is not None else f"{f.mean:.2f} (one seed: no std)"
        else:
            here = "not measured"
        if f.diverged:
            here += f"; training diverged (seed {', '.join(map(str, f.diverged))})"
        seeds = f"{f.n} ({', '.join(map(str, f.seeds))})" if f.n else "0"
        lines.append(f"| {kind} | {PAPER_FID.get(kind, '-')} | {here} | {seeds} | {_d_steps_cell(f)} |")
    return lines


def _evaluated(entries: Sequence[Entry], records: Records) -> Iterator[tuple[Entry, Result, Evaluation | None]]:
    """Each entry with a result: (entry, its latest result, each of its evaluations), or one row
    with None when it has none."""
    results = records.latest_results()
    for e in entries:
        r = results.get(e.id)
        if r is not None:
            for ev in records.evaluations(r) or [None]:
                yield e, r, ev


def _table4_entries(entries: Sequence[Entry], records: Records) -> list[str]:
    """One row per Table 4 entry (a kind and a seed) and evaluation."""
    lines = ["| entry | G kind | seed | trained | G params | paper FID | FID | KID | feature network | weights | "
             "samples | scored on | CPU check | step ms | compile s | status | device, date, commit | commands |",
             "|" + "---|" * 18]
    for e, r, ev in _evaluated([e for e in entries if e.experiment == "table4"], records):
        lines.append(
            f"| {e.id} | {e.args['kernel']} | {e.args.get('seed')} | {_trained(r, e)} | {_g_params(r)} | "
            f"{PAPER_FID.get(e.args['kernel'], '-')} | {_fmt(ev and ev.metric('fid'), '.2f')} | "
            f"{_fmt(ev and ev.metric('kid'), '.4f')} | {ev.network if ev else 'not evaluated'} | "
            f"{ev.feature_network.get('form', '-') if ev else '-'} | {_samples(ev, r)} | "
            f"{(ev.device or '-') if ev else '-'} | {_crosscheck(records.crosschecks(ev)) if ev else '-'} | "
            f"{_step_ms(r)} | {_fmt(r.compile_s, '.0f')} | {r.status} | {_provenance(r)} | {_commands(r)} |")
    return lines


def _table4_section(entries: Sequence[Entry], records: Records) -> list[str]:
    intro = ("Paper: Inception FID, 10k samples vs the test split, 200k D steps, mean ± std over runs. Here: "
             "the same protocol at the steps shown (every kind and seed trained at once on one device, "
             "for one step count); FID/KID computed where the samples were made (`scored on`), "
             "`feature network` names the network and its weights digest (only `inception` is comparable "
             "with the paper), `weights` their form (float16-rounded weights moved FID by 5e-4 relative "
             "in a CPU test), `CPU check` this CPU's pool3 features of returned samples against the device's.")
    return ["", "## Table 4: SNGAN on CIFAR-10", "", intro, "", *_table4_summary(entries, records), "",
            "Per entry (a kind and a seed; a row per feature network):", "", *_table4_entries(entries, records)]


def _figure4_section(entries: Sequence[Entry], records: Records) -> list[str]:
    results = records.latest_results()
    lines = ["", "## Figure 4: CIFAR-10 ResNet, test error against parameters", "",
             "Paper: C2sp reaches C3's error with 60-70% of the parameters; C2 is worse (figure only; "
             "300 epochs, batch 64).", "",
             "| entry | depth | kind | budget | params | test error | step ms | compile s | status | "
             "device, date, commit | command |", "|" + "---|" * 11]
    for e in (e for e in entries if e.experiment == "figure4"):
        r = results.get(e.id)
        if r is None:
            continue
        m = r.metrics
        params = f"{int(m['num_params']):,}" if m.get("num_params") else "-"
        lines.append(
            f"| {e.id} | {e.args['depth']} | {e.args['kernel']} | {e.budget} | {params} | "
            f"{_fmt(m.get('test_error'), '.2%')} | {_step_ms(r)} | {_fmt(r.compile_s, '.0f')} | {r.status} | "
            f"{_provenance(r)} | {_commands(r)} |")
    return lines


def _bench_section(entries: Sequence[Entry], records: Records) -> list[str]:
    results = records.latest_results()
    lines = ["", "## GPU benchmarks (BENCHMARKS.md's open targets, through benchmarks.all)", "",
             "| entry | what | status | records | device, date, commit | command |", "|---|---|---|---|---|---|"]
    for e in (e for e in entries if e.experiment == "bench"):
        r = results.get(e.id)
        if r is None:
            continue
        measured = sum(1 for b in r.bench_records if b.get("record") in ("conv", "model"))
        lines.append(f"| {e.id} | {e.budget} | {r.status} | {measured} measurements | {_provenance(r)} | "
                     f"{_commands(r)} |")
    return lines


def _conditional_rows(cond: Sequence[Entry], records: Records) -> list[str]:
    lines = []
    for e, r, ev in _evaluated(cond, records):
        lines.append(
            f"| {e.id} | {e.args['kernel']} | {e.set.get('diffaugment') or 'off'} | {_trained(r, e)} | "
            f"{_g_params(r)} | {_fmt(ev and ev.metric('fid'), '.2f')} | "
            f"{_fmt(ev and ev.metric('fid_intra'), '.2f')} | {_fmt(ev and ev.metric('kid'), '.4f')} | "
            f"{ev.network if ev else 'not evaluated'} | {_samples(ev, r)} | {(ev.labels or '-') if ev else '-'} | "
            f"{_step_ms(r)} | {_fmt(r.compile_s, '.0f')} | {r.status} | {_provenance(r)} | {_commands(r)} |")
    return lines


def _conditional_section(entries: Sequence[Entry], records: Records) -> list[str]:
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
    return ["", "## Conditional SNGAN on CIFAR-10 (issue 18)", "", about, "", yardstick, "", header, "|" + "---|" * 16,
            *_conditional_rows(cond, records),
            "", "| yardstick (StudioGAN, another protocol and budget) | FID |", "|---|---|",
            f"| conditional SNGAN, {STUDIOGAN['sngan_d_steps'] // 1000}k D steps | {STUDIOGAN['fid_sngan']} |",
            f"| conditional BigGAN | {STUDIOGAN['fid_biggan']} |"]


def _runs_section(records: Records) -> list[str]:
    runs = records.runs()
    lines = ["", "## Device runs", ""]
    if not runs:
        lines.append("No device run yet: every claim above is 'not measured'.")
    for r in runs:
        versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
        deadline = "None" if r.deadline_s is None else format(r.deadline_s, "g")
        lines.append(f"- {r.run}: {r.device}, commit {str(r.commit)[:12]}, deadline {deadline} s, {versions}; "
                     f"`{r.command}`")
    return lines


def render_report(entries: Sequence[Entry], records: RecordsLike, *, sections: Sequence[Path] = (),
                  plan_path: str = "paper/plan.json", results_path: str = "paper/results.jsonl") -> str:
    """The text of REPRODUCTION.md: the generated sections, then the hand-written ``sections``."""
    records = Records.of(records, source=results_path)
    lines = [*_intro(plan_path, results_path), *_claims_section(entries, records), *_plan_section(entries, records),
             *_table4_section(entries, records), *_figure4_section(entries, records),
             *_bench_section(entries, records), *_conditional_section(entries, records), *_runs_section(records), ""]
    text = "\n".join(lines)
    for path in sorted(sections):
        text += "\n" + path.read_text(encoding="utf-8").rstrip() + "\n"
    return text

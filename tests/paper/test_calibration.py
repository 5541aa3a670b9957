"""Seeds per process measured on a device (paper.campaign.calibration), and how a run picks them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from paper import reproduce
from paper.campaign import calibration, plan, results

REPO = Path(__file__).resolve().parents[2]


def _measured(n, rate):
    return {"record": "seeds", "num_seeds": n, "images_per_s": rate, "step_ms": 1.0, "compile_s": 2.0,
            "temp_bytes": 10, "argument_bytes": 5, "device_peak_bytes": None}


def test_choose_keeps_the_highest_total_rate_else_the_default():
    assert calibration.choose([_measured(1, 900.0), _measured(2, 1500.0), _measured(4, 1400.0)], default=1) == 2
    assert calibration.choose([_measured(1, 900.0), _measured(2, 800.0)], default=2) == 1
    assert calibration.choose([], default=2) == 2


def test_the_plan_holds_two_seeds_of_each_table4_kind():
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    assert calibration.max_seeds_per_kind(entries) == 2
    assert calibration.max_seeds_per_kind([e for e in entries if e.args.get("seed") == 0]) == 1


# A stand-in benchmark: writes benchmarks.seeds' records for the counts it is given, or fails, or hangs.
STANDIN = textwrap.dedent("""
    import json, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    if args["--kind"] == "hang":
        time.sleep(60)
    if args["--kind"] == "oom":
        raise SystemExit("RESOURCE_EXHAUSTED: out of memory allocating 80 GiB")
    with open(args["--out"], "a") as f:
        for n in map(int, args["--seeds"].split(",")):
            f.write(json.dumps({"record": "seeds", "num_seeds": n, "images_per_s": 1000.0 * n ** 0.5,
                                "step_ms": 10.0 * n, "compile_s": 3.0}) + "\\n")
""")


def _entries(kind):
    return [plan.Entry(id=f"t-{kind}-seed{s}", experiment="table4", suite="gan", estimate_s=1, budget="b", group="t",
                       args={"kernel": kind, "seed": s}, config="configs/gan/sngan_cifar10.py") for s in (0, 1)]


@pytest.mark.integration  # the benchmark's process
@pytest.mark.parametrize("kind,status,chosen", [("C2sp", "done", 2), ("oom", "failed", 1), ("hang", "killed", 1)])
def test_calibrate_records_what_it_measured_and_falls_back_to_the_plan(tmp_path, kind, status, chosen):
    entries = _entries(kind)
    counts = [1, 2]
    lines = tmp_path / "work" / "calibration" / "seeds.jsonl"
    argv = [*calibration.calibration_command(kind=kind, seeds=counts, out=lines, deadline_s=3)]
    argv[:3] = [sys.executable, "-c", STANDIN]  # the stand-in takes the real command's flags
    record = calibration.calibrate(entries, out=tmp_path / "out", workroot=tmp_path / "work", device="1 x GPU (h)",
                                   default=1, limit_s=3, argv=argv)
    assert record["status"] == status and record["seeds_per_process"] == chosen and record["counts"] == counts
    assert [m["num_seeds"] for m in record["measured"]] == (counts if status == "done" else [])
    if status == "failed":
        assert "out of memory" in record["log_tail"]
    (read,) = results.load(tmp_path / "out" / "results.jsonl")
    assert isinstance(read, results.Calibration) and read.seeds_per_process == chosen and read.device == "1 x GPU (h)"


def test_calibration_command_is_the_benchmarks_flags():
    argv = calibration.calibration_command(kind="C3", seeds=[1, 2], out=Path("o.jsonl"), deadline_s=59.5)
    assert argv == ["python", "-m", "benchmarks.seeds", "--gpu", "--forms=vmap", "--kind=C3", "--seeds=1,2",
                    "--warmup=1", "--repeats=3", "--out=o.jsonl", "--deadline=59"]


@pytest.mark.slow  # the real benchmark at its tiny size, in this process
def test_the_real_benchmark_writes_what_calibrate_reads(tmp_path):
    from benchmarks import seeds as bench

    out = tmp_path / "seeds.jsonl"
    argv = calibration.calibration_command(kind="C2sp", seeds=[1, 2], out=out, deadline_s=600)
    bench.main([a if a != "--gpu" else "--tiny" for a in argv[3:]])
    measured = [r for r in results.read(out) if r.get("record") == "seeds"]
    assert [r["num_seeds"] for r in measured] == [1, 2] and all(r["images_per_s"] > 0 for r in measured)
    assert calibration.choose(measured, default=0) in (1, 2)


def test_a_run_uses_the_flag_else_the_devices_record_else_the_plan(tmp_path, monkeypatch):
    from paper.campaign import runner

    monkeypatch.setattr(runner, "environment", lambda commit="": {"device": "1 x GPU (h)"})
    monkeypatch.setattr(runner, "gpus", lambda: [])  # no GPU: nothing is calibrated here
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    args = reproduce._parser().parse_args(["--budget=device", f"--out={tmp_path}"])
    mine = {"record": "calibration", "device": "1 x GPU (h)", "seeds_per_process": 1}
    other = {"record": "calibration", "device": "1 x GPU (other)", "seeds_per_process": 4}

    def pick(records, flag=0):
        args.seeds_per_process = flag
        return reproduce._seeds_per_process(args, entries, records, smoke=False, calibrate=True)

    assert pick([]) == plan.load_seeds_per_process(REPO / "paper" / "plan.json") == 2
    assert pick([other]) == 2 and pick([other, mine]) == 1 and pick([mine], flag=3) == 3
    # A calibration that ran out of time settles nothing; a failed one keeps the plan's count it recorded.
    assert pick([mine, {**other, "device": "1 x GPU (h)", "status": "killed"}]) == 1
    assert calibration.recorded([{**mine, "status": "killed"}], "1 x GPU (h)") is None
    assert pick([{**mine, "status": "failed", "seeds_per_process": 2}]) == 2


def test_a_gpu_never_calibrated_measures_with_the_time_the_run_can_spare(tmp_path, monkeypatch, capsys):
    from paper.campaign import runner

    monkeypatch.setattr(runner, "environment", lambda commit="": {"device": "1 x GPU (h)"})
    monkeypatch.setattr(runner, "gpus", lambda: [runner.Gpu("h", 80_000, 81_000)])
    calls = []

    def measured(entries, **kwargs):
        calls.append(kwargs)
        return {"status": "done", "seconds": 40.0, "measured": [_measured(1, 900.0), _measured(2, 1500.0)],
                "seeds_per_process": 1}

    monkeypatch.setattr(calibration, "calibrate", measured)
    entries = plan.load_plan(REPO / "paper" / "plan.json")
    args = reproduce._parser().parse_args(["--budget=device", f"--out={tmp_path}", "--calibrate_s=60"])

    def pick(spare_s):
        return reproduce._seeds_per_process(args, entries, [], smoke=False, calibrate=True, spare_s=spare_s)

    # Before the plan, the spare time is what the first group leaves; at the end, what is left.
    assert pick(20.0) == 2 and not calls  # below calibration.MIN_S: the plan's, nothing measured
    assert "[calibration] not now: 20 s to spare; 2 seeds per process (the plan's)" in capsys.readouterr().out
    assert pick(45.0) == 1 and calls[-1]["limit_s"] == 45.0 and calls[-1]["default"] == 2
    assert "[calibration] done in 40 s: images/s by seeds per process 1: 900, 2: 1500" in capsys.readouterr().out
    assert pick(1000.0) == 1 and calls[-1]["limit_s"] == 60.0 and calls[-1]["device"] == "1 x GPU (h)"
    args.no_calibrate = True
    assert pick(1000.0) == 2 and len(calls) == 2

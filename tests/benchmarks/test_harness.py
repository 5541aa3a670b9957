"""Smoke tests of the benchmark harness: it runs a tiny size set and emits
well-formed JSON lines and markdown tables. No assertion here is about speed."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import sympad
import sympad.linen
from benchmarks import all as bench_all
from benchmarks import common, conv, models
from sympad.train import errors

ENV_KEYS = {"date", "backend", "device", "cpu", "jax", "jaxlib", "flax", "XLA_FLAGS"}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _table_rows(markdown: str, header_cell: str) -> list[list[str]]:
    """Rows (cells) of the first table whose header contains ``header_cell``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and header_cell in line)
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_round_robin_interleaves_and_counts():
    order = []
    calls = {name: (lambda name=name: order.append(name) or jnp.zeros(())) for name in ("a", "b", "c")}
    timings = common.time_round_robin(calls, warmup=1, repeats=3)
    assert order[:3] == ["a", "b", "c"]  # warm-up, one each
    assert order[3:] == ["a", "b", "c"] * 3  # then interleaved rounds
    for t in timings.values():
        assert len(t.times) == len(t.cpu_times) == 3
        assert t.min <= t.median
    with pytest.raises(ValueError, match="repeats"):
        common.time_round_robin(calls, repeats=0)


def test_round_robin_inner_calls_per_sample():
    order = []
    calls = {name: (lambda name=name: order.append(name) or jnp.zeros(())) for name in ("a", "b")}
    timings = common.time_round_robin(calls, warmup=0, repeats=2, inner=3)
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert all(len(t.times) == 2 for t in timings.values())
    with pytest.raises(ValueError, match="inner"):
        common.time_round_robin(calls, inner=0)


def test_ratio_is_median_of_per_round_ratios():
    base = common.Timing((1.0, 2.0, 9.0), (1.0, 1.0, 1.0))
    other = common.Timing((2.0, 1.0, 3.0), (4.0, 2.0, 1.0))
    # per round: 0.5, 2.0, 3.0 -> median 2.0 (wall); 0.25, 0.5, 1.0 -> 0.5 (cpu)
    assert common.ratio(base, other) == 2.0
    assert common.ratio(base, other, cpu=True) == 0.5


def test_markdown_table_shape():
    text = common.markdown_table(["a", "b"], [[1.234, None], ["x", 2]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | - |", "| x | 2 |"]


def test_models_force_a_case_formulation_while_lowering_it():
    # benchmarks.models forces each case's formulation (sympad.use_implementation) around its
    # own lower(), where tracing happens; a case without one keeps the automatic choice.
    x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((2, 2, 16, 16))
    measured = sympad.choose_implementation(x, w)

    def lowered(implementation):
        step = jax.jit(lambda a, b: sympad.sym_pad_conv(a, b))  # a new function: a new trace
        return models._with_implementation(step, implementation).lower(x, w).as_text()

    assert "3x3x16x16" in lowered("embed")  # embed: the 2x2 taps inside a 3x3 kernel
    assert "3x3x16x16" not in lowered("pad_select") and "3x3x16x16" not in lowered(None)
    assert sympad.choose_implementation(x, w) == measured
    with pytest.raises(ValueError, match="implementation"):
        lowered("fast")


@pytest.mark.slow
def test_conv_bench_tiny_emits_jsonl_and_tables(tmp_path):
    out, md = tmp_path / "conv.jsonl", tmp_path / "conv.md"
    conv.main(
        ["--tiny", "--kinds", "C3,C2sp", "--dtypes", "float32", "--repeats", "1", "--warmup", "0",
         "--out", str(out), "--markdown", str(md)]
    )
    records = _read_jsonl(out)
    assert records[0]["record"] == "environment" and ENV_KEYS <= set(records[0])
    rows = [r for r in records if r["record"] == "conv"]
    assert [r["label"] for r in rows] == ["C3", "C2sp"]
    for r in rows:
        assert (r["N"], r["HW"], r["C"], r["F"], r["dtype"]) == (2, 8, 8, 8, "float32")
        for field in ("fwd_ms", "fwdbwd_ms", "fwdbwd_cpu_ms", "group_compile_s"):
            assert np.isfinite(r[field]) and r[field] > 0
        assert r["fwdbwd_temp_bytes"] is None or r["fwdbwd_temp_bytes"] >= 0
    assert rows[0]["fwdbwd_vs_C3"] == 1.0 and rows[0]["auto_choice"] is None
    assert rows[1]["implementation"] == "auto" and rows[1]["auto_choice"] in sympad.IMPLEMENTATIONS
    table = _table_rows(md.read_text(), "C3 fwd+bwd ms")
    assert table[0] == ["shape", "dtype", "C3 fwd+bwd ms", "C3", "C2sp"]
    assert len(table) == 3 and table[2][0].startswith("tiny (2,8,8,8->8)")
    assert all(len(row) == 5 for row in table)


def test_conv_compare_lists_every_formulation():
    labels = [c.label for c in conv.candidates(sympad.KINDS, implementation=None, compare=True)]
    assert labels[:2] == ["C3", "C2"]
    assert labels[2:] == [f"C2sp:{f}" for f in sympad.IMPLEMENTATIONS]
    forced = conv.candidates(["C2", "C2sp"], implementation="pad_concat", compare=False)
    assert [(c.label, c.implementation) for c in forced] == [
        ("C3", None), ("C2", None), ("C2sp:pad_concat", "pad_concat")
    ]


class _TinyNet(nn.Module):
    """One spatial conv (any kind), batch norm, mean, linear: compiles in a second."""

    kind: str

    @nn.compact
    def __call__(self, x, train=True):
        x = sympad.linen.conv(self.kind, 4, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


@pytest.mark.slow
def test_models_run_emits_records_and_table(tmp_path):
    def maker(kind):
        return lambda: models.classifier_step(_TinyNet(kind), batch=2, image_size=8, num_classes=3)

    cases = [
        models.Case("toy/b2", kind, 2, maker(kind), {"model": "toy", "kind": kind}) for kind in ("C3", "C2sp")
    ]
    report = common.Report(tmp_path / "models.jsonl")
    records = models.run(cases, warmup=0, repeats=2, report=report)
    report.close()
    written = _read_jsonl(tmp_path / "models.jsonl")
    assert written == [{"record": "started", "bench": "models", "group": "toy/b2"}] + json.loads(json.dumps(records))
    assert [(r["group"], r["label"], r["first"]) for r in records] == [("toy/b2", "C3", "C3"), ("toy/b2", "C2sp", "C3")]
    for r in records:
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["batch"] == 2 and r["repeats"] == 2
        assert r["group_compile_s"] > 0
    assert records[0]["speed_vs_first"] == 1.0
    table = _table_rows(models.markdown(records), "images/s")
    assert table[0] == ["model", "images/s", "speed vs C3 (x)", "temp MB", "temp vs C3 (x)"]
    assert [row[0] for row in table[2:]] == ["C3", "C2sp"]


def test_models_cases_cover_every_suite():
    cases = models.build_cases(models.TINY, kinds=["C3", "C2sp"], formulations=["pad_concat"])
    groups = {c.group: [x.label for x in cases if x.group == c.group] for c in cases}
    assert groups["resnet8/b2/float32"] == ["C3", "C2sp", "C2sp:pad_concat"]
    assert groups["table1-depth8/b2/float32"] == ["c2sp", "shift", "invert", "sep"]
    assert groups["sngan/b2/float32"] == groups["resnet19/b1/float32"] == ["C3", "C2sp", "C2sp:pad_concat"]


def test_all_gpu_defaults_are_lean():
    by_title = dict(bench_all.steps("gpu"))
    # The intended plans, written out: comparing with the module's own constants could not fail.
    every_formulation = tuple(i for i in sympad.IMPLEMENTATIONS if i != "auto")
    layer = by_title["Layer, float32, formulations of C2sp"]
    assert layer["formulations"] == ("pad_select", "pad_concat", "embed", "im2col") and not layer["forward"]
    assert by_title["Layer, float32, every kind"]["kinds"] == ("C3", "C2", "C2sp")
    late = by_title["Layer, the other kinds (GPU: C4, C4sp)"]
    assert late["kinds"] == ("C3", "C4", "C4sp") and late["dtypes"] == ("float32", "bfloat16") and late["shapes"]
    assert not dict(bench_all.steps("cpu"))["Layer, the other kinds (GPU: C4, C4sp)"]["shapes"]
    assert dict(bench_all.steps("cpu"))["Layer, float32, every kind"]["kinds"] == tuple(sympad.KINDS)
    net = by_title["ResNet-56 CIFAR train step"]
    assert net["kinds"] == ("C3", "C2", "C2sp") and net["formulations"] == ()
    b512 = by_title["ResNet-56 CIFAR train step, larger batch / bfloat16"]
    assert [r[1] for r in b512["resnet"]] == [512, 512] and b512["formulations"] == ("pad_select", "pad_concat")
    cpu = dict(bench_all.steps("cpu"))["ResNet-56 CIFAR train step"]
    # On the CPU every formulation is compared but the depthwise-only one.
    compared = cpu["formulations"]
    assert len(set(compared)) == len(compared) and set(compared) <= set(every_formulation)
    assert set(every_formulation) - set(compared) == {"depthwise_taps"} and cpu["kinds"] == tuple(sympad.KINDS)
    custom = dict(bench_all.steps("gpu", kinds=["C3", "C4sp"], formulations=["embed"]))
    assert custom["ResNet-56 CIFAR train step"]["kinds"] == ("C3", "C4sp")
    assert custom["ResNet-56 CIFAR train step"]["formulations"] == ("embed",)
    assert custom["Layer, float32, every kind"]["kinds"] == ("C3", "C4sp")
    assert not custom["Layer, the other kinds (GPU: C4, C4sp)"]["shapes"]


def test_conv_without_forward_programs(tmp_path):
    records = conv.run(conv.TINY_SHAPES, dtypes=("float32",), kinds=("C3", "C2sp"), repeats=1, warmup=0, forward=False)
    assert [r["label"] for r in records] == ["C3", "C2sp"]
    assert all(r["fwd_ms"] is None and r["fwdbwd_ms"] > 0 for r in records)
    assert "forward speed" not in conv.markdown(records)


@pytest.mark.slow
def test_all_tiny_first_step_and_deadline(tmp_path):
    bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "6", "--repeats", "1"])
    records = _read_jsonl(tmp_path / "results.jsonl")
    assert records[0]["record"] == "environment" and records[0]["size"] == "tiny"
    assert {r["label"] for r in records if r["record"] == "conv"} == set(sympad.KINDS)
    assert "## 6. Layer, float32, every kind" in (tmp_path / "results.md").read_text()
    # An expired budget skips everything and says so.
    skipped = tmp_path / "skipped"
    bench_all.main(["--tiny", "--out", str(skipped), "--deadline", "0", "--steps", "1,3"])
    records = _read_jsonl(skipped / "results.jsonl")
    assert [r["record"] for r in records] == ["environment", "skipped", "skipped"]


@pytest.mark.slow
def test_all_resume_measures_only_what_is_missing(tmp_path, capsys):
    bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "6", "--repeats", "1"])
    first = _read_jsonl(tmp_path / "results.jsonl")
    assert capsys.readouterr().out.rstrip().endswith("complete")
    bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "3,6", "--repeats", "1", "--resume"])
    records = _read_jsonl(tmp_path / "results.jsonl")
    assert records[: len(first)] == first  # appended, nothing rewritten
    new = records[len(first):]
    # Step 6 was complete: not started again. Step 3 (bfloat16) was measured.
    assert {r.get("step") for r in new if r["record"] in ("started", "conv")} == {3}
    assert {r["label"] for r in new if r["record"] == "conv"} == set(sympad.KINDS)
    text = (tmp_path / "results.md").read_text()
    assert "## 3. Layer, bfloat16, every kind" in text and "## 6. Layer, float32, every kind" in text
    assert text.count("- run of ") == 2
    assert capsys.readouterr().out.rstrip().endswith("complete")


def test_all_resume_gives_up_on_a_group_killed_twice(tmp_path, capsys):
    group = conv.group_key(conv.TINY_SHAPES[0].name, "float32")
    lines = [{"record": "environment", "bench": "all", "size": "tiny", **common.environment()}]
    lines += [{"record": "started", "bench": "conv", "group": group, "step": 6}] * 2
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"record": "con')
    bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "6", "--resume"])
    # The cut-off line stays as it was; the new run's records start on a line of their own.
    records = bench_all.read_records(tmp_path / "results.jsonl")[len(lines):]
    assert [r["record"] for r in records] == ["environment"]
    assert capsys.readouterr().out.rstrip().endswith(f"complete but for 1 groups given up (step 6: {group} (given up))")
    assert f"given up (started 2 times, never finished): {group}" in (tmp_path / "results.md").read_text()
    # One kill only: the group is tried again; --summary measures nothing and reports it left.
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "6", "--summary"])
    assert capsys.readouterr().out.rstrip().endswith(f"1 groups left (step 6: {group})")
    assert len(_read_jsonl(tmp_path / "results.jsonl")) == 2


def test_all_resume_refuses_another_device(tmp_path):
    record = {"record": "environment", "bench": "all", "size": "tiny", **common.environment(), "device": "NVIDIA H200"}
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SystemExit, match="measured on 'NVIDIA H200'.*use another --out"):
        bench_all.main(["--tiny", "--out", str(tmp_path), "--steps", "6", "--resume"])


@pytest.mark.slow  # compiles the GAN step three times
def test_seeds_bench_tiny_emits_one_record_per_seed_count(tmp_path, capsys):
    from benchmarks import seeds

    # benchmarks.all runs it as its last step, with both forms on a GPU.
    (title, spec), *_ = reversed(bench_all.steps("gpu"))
    assert title == "Several GAN seeds in one program" and spec["forms"] == ("vmap", "loop")
    assert bench_all.groups(spec) == ["sngan-C2sp/gpu/vmap", "sngan-C2sp/gpu/loop"]
    records = seeds.main(["--tiny", "--seeds=2", "--forms=loop", "--repeats=2", "--warmup=0",
                          f"--out={tmp_path / 'seeds.jsonl'}"])
    written = _read_jsonl(tmp_path / "seeds.jsonl")
    assert written[0]["record"] == "environment" and ENV_KEYS <= set(written[0])
    assert [(r["num_seeds"], r["form"]) for r in records] == [(1, "loop"), (2, "loop")]  # one seed: the baseline
    one, two = records
    assert one["speed_vs_sequential"] == 1.0 and two["speed_vs_sequential"] > 0
    # Images/s counts every seed's D images: 2 seeds x batch 4 x n_critic 1 per step.
    assert two["images_per_s"] == pytest.approx(2 * 4 / (two["step_ms"] / 1e3))
    assert two["argument_bytes"] > one["argument_bytes"] and two["compile_s"] > 0
    table = _table_rows(capsys.readouterr().out, "vs sequential")
    assert [row[0] for row in table[2:]] == ["1", "2"]
    with pytest.raises(errors.ConfigError, match="--forms: unknown 'auto'"):
        seeds.main(["--tiny", "--forms=auto"])
    with pytest.raises(errors.ConfigError, match="--seeds="):
        seeds.main(["--tiny", "--seeds=0"])

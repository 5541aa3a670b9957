"""The device campaign's plan: an ordered queue of experiments, each sized to fit one GPU run.

A plan is a JSON file (``paper/plan.json``, committed) written by :func:`build_plan`; the runner
(:mod:`paper.campaign.runner`) executes its entries in order. Entries say what to run in the
suites' own vocabulary, through two small tables kept here so that a renamed config field is a
one-line fix: :data:`CONFIG_KEYS` (the plan's neutral names -> each suite's config field) and
:data:`CONFIG_FILES`.

Sizing: every entry's ``estimate_s`` is its fixed cost (process start, data decode, compile,
sampling) plus its steps times a step time. Step times come from :data:`STEP_TIMES` (the issue's
H200 measurements) unless results measured on a device replace them (``build_plan(step_times=...)``;
``python -m paper.reproduce write-plan`` does it from the results file).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_FILES", "CONFIG_KEYS", "DIFFAUGMENT", "Entry", "PACKING", "PAPER", "RUN_SECONDS", "SEEDS_PER_PROCESS",
    "STEP_TIMES", "STUDIOGAN",
    "build_plan", "build_smoke_plan",
    "config_overrides",
    "load_packing", "load_plan", "load_seeds_per_process", "plan_json", "score_s", "sizing",
]

#: The plan's neutral names for config fields -> each suite's field (dotted for nested ones).
#: Both suites share the loop's keys (sympad.train.config.LOOP_FIELDS); renames change here only.
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "gan": {
        "steps": "num_train_steps",  # G updates (n_critic D updates each)
        "log_every": "log_every",
        "checkpoint_every": "checkpoint_every",
        "sample_every": "sample_every",
        "max_checkpoints": "max_checkpoints",
        "learning_rate": "optimizer.learning_rate",
        "n_critic": "n_critic",
        "batch_size": "batch_size",
        # Class-conditional runs (issue 18): labels from the data, projection D, conditional BN in G.
        "loss": "loss",
        "norm": "norm",
        "conditional": "conditional",
        "class_embedding": "class_embedding",
        "diffaugment": "diffaugment",
        "max_examples": "max_examples",  # tests and dry runs: a few training images
        # How a process holds its seeds ('auto': vmap on a GPU, loop on a CPU); the device-like test
        # sets the GPU's form on the CPU so that it compiles the program the GPU compiles.
        "seed_batching": "seed_batching",
    },
    "classify": {
        "epochs": "num_epochs",
        "steps": "num_train_steps",
        "batch_size": "batch_size",
        "log_every": "log_every",
        "eval_every": "eval_every",
        "checkpoint_every": "checkpoint_every",
        "max_checkpoints": "max_checkpoints",
        "learning_rate": "optimizer.learning_rate",
    },
}

#: Config file of each experiment family (the ``--config=`` of the suite's main).
CONFIG_FILES: dict[str, str] = {
    "sngan": "configs/gan/sngan_cifar10.py",
    "resnet_cifar": "configs/classify/resnet_cifar.py",
}

#: Seconds one device run may take from the runner's start: the default ``--deadline``. A device
#: call lasts at most 10 min, about 9 of them usable (``run`` with timeout_s 560 leaves 50 s for
#: the carried wheels, the last SIGTERM grace and the copy back).
RUN_SECONDS = 510

#: Processes of one group that run at once on the one GPU (issue 23): a batch-64 SNGAN leaves an
#: H200 mostly idle, and the four Table 4 kinds then fit one run.
PACKING = 4

#: The most seeds of one kind (entries of a group that differ only in their seed) one process
#: trains at once, in one compiled step (``gan.main`` with ``seeds=N``, issue 30). A device with no
#: calibration yet measures 1 to this many seeds per process first (``benchmarks.seeds``) and the
#: runner gives each process the count with the highest images/s; this is the count before that.
SEEDS_PER_PROCESS = 2

#: The paper's budgets: Table 4's SNGAN D updates, Figure 4's epochs (and batch).
PAPER = {"sngan_d_steps": 200_000, "classify_epochs": 300, "classify_batch": 64}

#: The conditional entries' yardstick, PyTorch-StudioGAN's CIFAR-10 SNGAN (cBN G, projection D,
#: hinge): its config defaults give 100k steps of 5 D updates at batch 64 (500k D updates;
#: SNGAN-DiffAug.yaml sets 200k steps), and its table reports Inception FID on 10k test images
#: (SNGAN 13.16, BigGAN 8.13). Another code base and budget: a yardstick, not a target.
STUDIOGAN = {"sngan_d_steps": 500_000, "fid_sngan": 13.16, "fid_biggan": 8.13, "num_reference": 10_000}

#: The conditional entries' augmentations (gan.diffaugment.POLICIES, all three).
DIFFAUGMENT = "color,translation,cutout"

#: Seconds per step on one H200 (issue 15): an SNGAN G step = n_critic 5 D steps + 1 G step at
#: batch 64 (C3@256 25 ms, C2sp@384 28 ms; C2@384 and C4sp@192 unmeasured, taken as the slower
#: 28 ms); a ResNet train step at batch 128 (ResNet-56 C3 ~11k img/s; C2sp at 0.83x of C3 from
#: DESIGN.md's baseline; ResNet-110 ~2x ResNet-56).
STEP_TIMES: dict[str, float] = {
    "sngan:C3": 0.025, "sngan:C2sp": 0.028, "sngan:C2": 0.028, "sngan:C4sp": 0.028,
    "resnet56:C3": 128 / 11_000, "resnet56:C2sp": 128 / (11_000 * 0.83), "resnet56:C2": 128 / 11_000,
    "resnet110:C3": 2 * 128 / 11_000, "resnet110:C2sp": 2 * 128 / (11_000 * 0.83), "resnet110:C2": 2 * 128 / 11_000,
    # Conditional SNGAN (unmeasured until a device run replaces them): allowances over the
    # unconditional step, +10% for conditional BN and the projection, +20% with DiffAugment
    # (real and fake batches augmented at each of the 5 D updates).
    "sngan-cond:C3": 1.1 * 0.025, "sngan-cond:C2sp": 1.1 * 0.028,
    "sngan-cond-da:C3": 1.2 * 0.025, "sngan-cond-da:C2sp": 1.2 * 0.028,
}

#: Fixed costs per entry (seconds, allowances, not measurements): process start + CIFAR-10 decode,
#: compile (XLA autotuning on a GPU: 30 s and more for a ResNet-56 step, BENCHMARKS.md), and for a
#: GAN the second process that samples 10k images and the scoring of a group's samples on the
#: device (Inception on 10k reference + 4 x 10k samples, then FID's matrix square roots on the
#: host), plus a margin for the unmeasured.
OVERHEAD_S: dict[str, float] = {"start": 45.0, "compile": 60.0, "sample": 35.0, "score": 120.0, "margin": 30.0}

#: Seconds a packed group needs beyond its fixed costs to be worth starting: its trainers log
#: their calibration intervals and train for a while.
GROUP_MIN_TRAIN_S = 90.0

CIFAR_TRAIN = 50_000


@dataclasses.dataclass(frozen=True)
class Entry:
    """One experiment of the plan.

    Attributes:
      id: unique name (results refer to it).
      experiment: the paper item it measures ('table4', 'figure4', 'bench'), or 'conditional'
        (issue 18's class-conditional SNGAN; samples carry labels, evaluated per class too).
      suite: 'gan' | 'classify' | 'bench' | 'command' (tests: a literal argv).
      config: config file (gan/classify), relative to the repository root.
      args: config-file arguments (after the colon); the value '{cifar10}' becomes the data folder.
      set: overrides by the plan's neutral names (:data:`CONFIG_KEYS`).
      samples: GAN samples to return (uint8), 0 for none.
      estimate_s: seconds the entry needs on the device, fixed costs included.
      budget: its budget in words, as a fraction of the paper's.
      fraction: that fraction as a number (None where the paper states no budget).
      sizing: the :data:`STEP_TIMES` key it was sized with ('' for none).
      argv: for suite 'bench' and 'command': the command (a 'bench' entry's deadline is added).
      group: GAN entries with the same group run at once (up to the plan's packing processes) and
        train for one step count, sized while they run; their ``steps`` is the most they may take.
        Entries of a group that differ only in their ``seed`` arg train in one process, up to the
        plan's ``seeds_per_process`` consecutive seeds each.
    """

    id: str
    experiment: str
    suite: str
    estimate_s: float
    budget: str
    config: str = ""
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    set: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    samples: int = 0
    fraction: float | None = None
    sizing: str = ""
    argv: Sequence[str] = ()
    group: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"plan entry {d.get('id')!r}: unknown fields {unknown}; allowed {sorted(names)}")
        entry = cls(**{**d, "argv": tuple(d.get("argv", ()))})
        if entry.suite not in ("gan", "classify", "bench", "command"):
            raise ValueError(f"plan entry {entry.id!r}: suite must be gan | classify | bench | command, "
                             f"got {entry.suite!r}")
        if entry.group and entry.suite != "gan":
            raise ValueError(f"plan entry {entry.id!r}: only gan entries are grouped (their step count is sized "
                             f"while they train), got suite {entry.suite!r}")
        unknown_keys = sorted(set(entry.set) - set(CONFIG_KEYS.get(entry.suite, {})))
        if unknown_keys:
            raise ValueError(f"plan entry {entry.id!r}: set has unknown keys {unknown_keys}; "
                             f"allowed {sorted(CONFIG_KEYS.get(entry.suite, {}))}")
        return entry

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["argv"] = list(self.argv)
        d["args"], d["set"] = dict(self.args), dict(self.set)
        return {k: v for k, v in d.items() if v not in ("", (), [], {}, None) or k in ("id", "fraction")}


def config_overrides(entry: Entry) -> list[str]:
    """``--config.<field>=<value>`` flags of an entry's ``set`` (through :data:`CONFIG_KEYS`)."""
    keys = CONFIG_KEYS[entry.suite]
    return [f"--config.{keys[name]}={value}" for name, value in entry.set.items()]


def load_packing(path: str | Path) -> int:
    """The plan file's ``packing`` (1 for a plan written before packing)."""
    return int(json.loads(Path(path).read_text(encoding="utf-8")).get("packing", 1))


def load_seeds_per_process(path: str | Path) -> int:
    """The plan file's ``seeds_per_process`` (1 for a plan written before several seeds per process)."""
    return int(json.loads(Path(path).read_text(encoding="utf-8")).get("seeds_per_process", 1))


def load_plan(path: str | Path) -> list[Entry]:
    """The entries of a plan file, validated (unique ids, known fields)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = [Entry.from_dict(d) for d in data["entries"]]
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"plan {path}: duplicate entry ids {duplicates}")
    return entries


def plan_json(entries: Sequence[Entry], *, step_times: Mapping[str, float]) -> str:
    """The plan file's text: the entries and the step times they were sized with."""
    used = {e.sizing: step_times[e.sizing] for e in entries if e.sizing}
    return json.dumps({"run_seconds": RUN_SECONDS, "packing": PACKING, "seeds_per_process": SEEDS_PER_PROCESS,
                       "overhead_s": OVERHEAD_S, "step_times_s": used,
                       "entries": [e.to_dict() for e in entries]}, indent=1) + "\n"


#: Seconds of a run the plan leaves unplanned: the runner's own start and probes.
RUNNER_S = 10.0


def sizing(*, step_s: float, fixed_s: float, run_s: float = RUN_SECONDS - RUNNER_S, quantum: int = 1000) -> int:
    """The most steps (a multiple of ``quantum``) with ``fixed_s + steps * step_s <= run_s``."""
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    return max(quantum, int((run_s - fixed_s) / step_s) // quantum * quantum)


#: The share of the ``'score'`` overhead that a group pays once whatever its size: the scorer's start,
#: the Inception compile and the reference statistics; the rest is per entry (its samples'
#: features and FID). An estimate, not yet measured on a GPU.
SCORE_FIXED_SHARE = 2 / 3


def score_s(entries: int, *, overhead: Mapping[str, float] = OVERHEAD_S) -> float:
    """Seconds a group keeps for scoring its ``entries``' samples where they were made: the
    ``'score'`` overhead covers :data:`PACKING` entries; beyond, its per-entry share grows with
    them (8 entries: 4/3 of it)."""
    score = float(overhead.get("score", 0.0))
    per_entry = score * (1 - SCORE_FIXED_SHARE) / PACKING
    return score + per_entry * max(0, entries - PACKING)


def _group_estimate(entries: int = PACKING) -> float:
    """Seconds a packed group needs at least: start, compile, calibration and some training, then
    sampling, scoring (:data:`OVERHEAD_S`'s for four entries, more with more) and the margin (its
    step count is sized to what is left)."""
    return round(sum(OVERHEAD_S.values()) - OVERHEAD_S["score"] + score_s(entries) + GROUP_MIN_TRAIN_S)


def _gan_entries(step_times: Mapping[str, float], seeds: Sequence[int]) -> list[Entry]:
    """Table 4's four kinds for every seed in one group: one step count for all of them, sized on
    the device to what the run leaves (at most the paper's 200k D steps); a kind's seeds train in
    one process (``seeds_per_process``), the kinds in processes of their own."""
    kinds = ("C3", "C2sp", "C2", "C4sp")
    g_steps = PAPER["sngan_d_steps"] // 5
    entries = []
    for kind in kinds:
        for seed in seeds:
            width = {"C3": 256, "C2sp": 384, "C2": 384, "C4sp": 192}[kind]
            entries.append(Entry(
                id=f"table4-sngan-{kind}-seed{seed}", experiment="table4", suite="gan", config=CONFIG_FILES["sngan"],
                args={"kernel": kind, "seed": seed, "data": "{cifar10}"},
                set={"steps": g_steps, "log_every": 100, "sample_every": 0, "checkpoint_every": 0,
                     "max_checkpoints": 1},
                samples=10_000, fraction=None, sizing=f"sngan:{kind}", group="table4",
                estimate_s=_group_estimate(len(kinds) * len(seeds)),
                budget=f"D steps sized on the device (the same for the {len(kinds)} kinds x {len(seeds)} seeds, "
                       f"a kind's seeds in one process, {PACKING} processes at once), at most the paper's 200k; "
                       f"G {kind}@{width}, n_critic 5, batch 64, 10k samples",
            ))
    return entries


def _conditional_entries(step_times: Mapping[str, float]) -> list[Entry]:
    """Conditional SNGAN, G C3@256 vs C2sp@384, each without and with DiffAugment (issue 18)."""
    variants = [(kind, da) for da in (False, True) for kind in ("C3", "C2sp")]
    keys = {(kind, da): f"sngan-cond{'-da' if da else ''}:{kind}" for kind, da in variants}
    # One D-step count for all four (C3 vs C2sp and DiffAugment's effect at equal updates), sized
    # on the device while the four train at once; at most the paper's 200k D steps.
    g_steps = PAPER["sngan_d_steps"] // 5
    entries = []
    for kind, da in variants:
        width = {"C3": 256, "C2sp": 384}[kind]
        entries.append(Entry(
            id=f"cond-sngan-{kind}{'-diffaug' if da else ''}-seed0", experiment="conditional", suite="gan",
            config=CONFIG_FILES["sngan"], args={"kernel": kind, "seed": 0, "data": "{cifar10}"},
            set={"steps": g_steps, "log_every": 100, "sample_every": 0, "checkpoint_every": 0,
                 "max_checkpoints": 1, "loss": "hinge", "norm": "batch", "conditional": True,
                 "class_embedding": "per_class", **({"diffaugment": DIFFAUGMENT} if da else {})},
            samples=10_000, fraction=None, sizing=keys[(kind, da)], group="conditional-seed0",
            estimate_s=_group_estimate(),
            budget=f"D steps sized on the device (the same for the 4 variants, run {PACKING} at once), at most "
                   f"the paper's 200k (StudioGAN: 500k); conditional G {kind}@{width}, "
                   f"hinge, cBN per class, projection D, {'DiffAugment ' + DIFFAUGMENT if da else 'no DiffAugment'}, "
                   "n_critic 5, batch 64, 10k samples (labels i % 10)",
        ))
    return entries


def _classify_entries(step_times: Mapping[str, float]) -> list[Entry]:
    fixed = OVERHEAD_S["start"] + OVERHEAD_S["compile"] + OVERHEAD_S["margin"]
    batch = 128
    per_epoch = math.ceil(CIFAR_TRAIN / batch)
    entries = []
    for depth in (56, 110):
        kinds = ("C3", "C2sp", "C2")
        # One schedule per depth for every kind; eval once per epoch (10k images) adds ~10%.
        epochs = min(sizing(step_s=1.1 * per_epoch * step_times[f"resnet{depth}:{k}"], fixed_s=fixed, quantum=5)
                     for k in kinds)
        share = epochs / PAPER["classify_epochs"]
        for kind in kinds:
            entries.append(Entry(
                id=f"figure4-resnet{depth}-{kind}", experiment="figure4", suite="classify",
                config=CONFIG_FILES["resnet_cifar"], args={"depth": depth, "kernel": kind, "data": "{cifar10}"},
                set={"epochs": epochs, "batch_size": batch, "log_every": 200, "max_checkpoints": 1},
                fraction=share, sizing=f"resnet{depth}:{kind}",
                estimate_s=round(fixed + 1.1 * epochs * per_epoch * step_times[f"resnet{depth}:{kind}"]),
                budget=f"{epochs} epochs = {share:.1%} of the paper's 300; batch {batch} (the paper's: 64), "
                       "cosine from 0.1",
            ))
    return entries


def _bench_entries() -> list[Entry]:
    # benchmarks.all's GPU steps: 1 SNGAN step C2sp@384 vs C3@256, 2 ResNet-56 batch 512 (f32 and
    # bf16), 3 bf16 layers, 4 Table 1 blocks at depths 20/56/110. --resume (the runner keeps the
    # records of earlier runs) measures only what earlier runs did not.
    titles = {1: "SNGAN step C2sp@384 vs C3@256", 2: "ResNet-56 train step, batch 512, fp32 + bf16",
              3: "layers in bfloat16", 4: "Table 1 blocks at depths 20/56/110"}
    return [
        Entry(id=f"bench-step{n}", experiment="bench", suite="bench", estimate_s=240, budget=title,
              argv=("python", "-m", "benchmarks.all", "--gpu", f"--steps={n}", "--resume"))
        for n, title in titles.items()
    ]


def build_plan(step_times: Mapping[str, float] | None = None) -> list[Entry]:
    """The campaign in issue 23's order: Table 4 seeds 0 and 1 (four kinds, two seeds per process,
    in one run: issue 30), Figure 4's ResNet-56, conditional SNGAN, the benchmarks, then Figure 4's
    ResNet-110."""
    times = {**STEP_TIMES, **(step_times or {})}
    figure4 = _classify_entries(times)
    resnet56 = [e for e in figure4 if e.args["depth"] == 56]
    return [*_gan_entries(times, seeds=(0, 1)), *resnet56,
            *_conditional_entries(times), *_bench_entries(), *[e for e in figure4 if e not in resnet56]]


def build_smoke_plan() -> list[Entry]:
    """A CPU smoke plan through the same runner and commands: tiny SNGAN and ResNet on the bundled
    digits for a few steps (``--budget=smoke``; checks the pipeline, never the claims)."""
    return [
        *[Entry(id=f"smoke-sngan-{kind}", experiment="table4", suite="gan", config=CONFIG_FILES["sngan"],
                args={"kernel": kind, "data": "digits", "runlocal": True},
                set={"steps": 4, "log_every": 1, "sample_every": 4, "checkpoint_every": 4}, samples=64,
                group="smoke", estimate_s=300, budget="smoke: at most 4 G steps of the runlocal model on digits, "
                                                      "two kinds at once")
          for kind in ("C2sp", "C3")],
        Entry(id="smoke-resnet8-C2sp", experiment="figure4", suite="classify", config=CONFIG_FILES["resnet_cifar"],
              args={"depth": 8, "kernel": "C2sp", "data": "digits", "runlocal": True},
              set={"steps": 4, "eval_every": 4, "checkpoint_every": 4, "log_every": 2},
              estimate_s=150, budget="smoke: 4 steps of ResNet-8 (width 8) on digits"),
    ]

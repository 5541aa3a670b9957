"""Command line of :mod:`paper.measures`: the paper's Figures 2 and 3 as commands.

Usage::

  python -m paper.analysis q-curves --out=runs/q --num_images=1000 --inits=10
  python -m paper.analysis shift --out=runs/shift --kinds=C2,C2sp
  python -m paper.analysis shift --out=runs/shift_trained --model=classify --checkpoint=WORKDIR
  python -m paper.analysis receptive-field --out=runs/rf --data=synthetic --image_size=96

Commands:

* ``q-curves`` (Fig. 3): layerwise Q = mean |F| of every conv output of the
  untrained plain ResNet-56 (:func:`paper.measures.plain_resnet`: shortcuts
  and batch norm removed, He init), averaged over ``--inits`` random
  initializations. Writes ``q_curves.{png,csv,json}`` and
  ``q_last_layer_maps.png`` (mean |F| of the last conv, Fig. 3's colormaps).
* ``shift`` (Fig. 2, made quantitative): per layer and per stage, the centroid
  offset in input pixels of the mean post-ReLU map over the images. Untrained
  plain stacks (default) or ``--model=classify`` (the classification suite's
  pre-activation CIFAR ResNet, whose post-ReLU maps are ``relu(BN(.))``),
  optionally restored from a training run with ``--checkpoint=WORKDIR``.
  Writes ``shift.{json,csv}``, ``shift_maps.png`` (rows: kinds, columns:
  stages, like Fig. 2) and ``shift_per_layer.png``.
* ``receptive-field``: per layer, the centroid offset and RMS extent of the
  gradient receptive field of the centre unit, and the centroid offset of the
  linearized impulse response. Writes ``receptive_field.{json,csv,png}`` and
  ``receptive_field_maps.png``.

Data (``--data``): ``auto`` (default) is the CIFAR-10 test folder, extracted
from the shared ``cifar10-test.tar.gz`` (``$SYMPAD_SHARED_DATA`` or
``../shared/data``) into ``--cache_dir``; a ``.tar.gz`` path is extracted the same way; anything else is
a dataset name of :func:`sympad.train.data.load` (``cifar10``, ``folder:PATH``,
``digits``, ``synthetic``, ...). ``--num_images`` images are drawn at random
(seeded) from the split and scaled to [-1, 1].
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paper import measures, shared_data
from sympad.kinds import KINDS, parse_kind
from sympad.train.errors import ArgumentParser, ConfigError

__all__ = ["Network", "build_network", "load_images", "main", "parse_args"]

COMMANDS = ("q-curves", "shift", "receptive-field")
#: TFDS datasets too big to decode whole just to draw a few images.
_LARGE_DATASETS = ("imagenet2012", "lsun/bedroom", "celeb_a_hq")


# ----------------------------------------------------------------------------
# Arguments.
# ----------------------------------------------------------------------------


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    if not kinds:
        raise argparse.ArgumentTypeError("--kinds must name at least one kind, e.g. C2,C2sp")
    for k in kinds:
        try:
            parse_kind(k)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return kinds


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {value!r}") from None


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    # Usage mistakes as one error line, like every other user error (sympad.train.errors).
    parser = ArgumentParser(prog="python -m paper.analysis", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    def common(p: argparse.ArgumentParser, *, inits: int, num_images: int) -> None:
        p.add_argument("--out", type=Path, required=True, help="output directory (created)")
        p.add_argument("--kinds", type=_kinds, default=KINDS, help="comma-separated kernel kinds")
        p.add_argument("--inits", type=_positive, default=inits, help="random initializations per kind")
        p.add_argument("--seed", type=int, default=0, help="seed of the initializations and the image draw")
        p.add_argument("--data", default="auto", help="'auto' (CIFAR-10 test folder), a .tar.gz, or a sympad.train.data name")
        p.add_argument("--split", default="test", choices=("train", "test"))
        p.add_argument("--num_images", type=_positive, default=num_images, help="images drawn from the split")
        p.add_argument("--image_size", type=_positive, default=None, help="resize images (default: native)")
        p.add_argument(
            "--cache_dir", type=Path, default=None,
            help="where archives are extracted and decoded (default: sympad.train.data.default_cache_dir())",
        )
        p.add_argument("--batch_size", type=_positive, default=250)
        p.add_argument("--depth", type=int, default=56, help="6n + 2")
        p.add_argument("--widths", type=_ints, default=(16, 32, 64), help="plain stack: channels per stage")
        p.add_argument(
            "--downsample",
            choices=measures.DOWNSAMPLE_MODES,
            default=None,
            help="plain stack default 'stride'; classify model default its own ('auto')",
        )

    q = sub.add_parser("q-curves", help="Fig. 3: layerwise Q in untrained plain ResNets")
    common(q, inits=10, num_images=1000)

    s = sub.add_parser("shift", help="Fig. 2: centroid drift of mean post-ReLU maps")
    common(s, inits=3, num_images=1000)

    r = sub.add_parser("receptive-field", help="per-layer gradient receptive field and impulse response")
    common(r, inits=2, num_images=4)
    r.add_argument("--linear", action="store_true", help="plain stack without ReLUs (pure geometry)")
    r.add_argument("--layers", default="all", help="'all', 'stages' (last layer of each stage) or comma-separated indices")

    for p in (s, r):
        p.add_argument("--model", choices=("plain", "classify"), default="plain")
        p.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="classify training workdir: restore its latest checkpoint (implies --model=classify; kind from its config)",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and checks a command line (without the program name)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.depth < 8 or (args.depth - 2) % 6:
        parser.error(f"--depth must be 6n + 2 with n >= 1, got {args.depth}")
    if len(args.widths) != 3 and getattr(args, "model", "plain") == "plain":
        # plain_resnet takes any number of stages, but depth 6n + 2 means three.
        parser.error(f"--widths needs three stages for a depth 6n + 2 network, got {args.widths}")
    if getattr(args, "checkpoint", None) is not None:
        args.model = "classify"
    if args.command == "receptive-field" and args.linear and args.model != "plain":
        parser.error("--linear applies to the plain stack only")
    return args


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def _split_folder(root: Path, split: str) -> Path:
    """The folder whose subfolders are the classes of ``split`` inside an extracted archive."""
    for candidate in [root / split, *sorted(root.glob(f"*/{split}"))]:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"--split={split!r}: no '{split}' folder inside {root}")


def _folder_spec(folder: Path, split: str) -> str:
    # sympad.train.data.load('folder:PATH', split) looks for PATH/<split>.
    return f"folder:{folder.parent}" if folder.name == split else f"folder:{folder}"


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, dict[str, Any]]:
    """Draws ``args.num_images`` images from ``args.data``.

    Returns:
      ``(images, info)``: float32 ``(N, H, W, 3)`` in [-1, 1] and a dict that
      says where they came from.
    """
    from sympad.train import data  # Deferred: only the commands need the data pipeline.

    spec = args.data
    source = spec
    cache_dir = args.cache_dir if args.cache_dir is not None else data.default_cache_dir()
    if spec == "auto":
        try:  # the archive of $SYMPAD_SHARED_DATA, else of ../shared/data beside the checkout
            spec = f"folder:{shared_data.cifar10_folder(args.split, cache_dir=cache_dir)}"
        except FileNotFoundError as e:
            raise ConfigError(f"--data=auto: {e}; or pass --data=cifar10, --data=folder:PATH or --data=synthetic") from None
        source = f"shared cifar10-{args.split}.tar.gz"
    elif spec.endswith((".tar.gz", ".tgz")):
        archive = Path(spec)
        if not archive.exists():
            raise ConfigError(f"--data: archive {archive} does not exist")
        root = shared_data.extract_archive(archive, cache_dir=cache_dir / "archives")
        spec = _folder_spec(_split_folder(root, args.split), args.split)
    # synthetic makes exactly max_examples images; big TFDS sets are not decoded whole.
    max_examples = args.num_images if spec in _LARGE_DATASETS + ("synthetic",) else None
    ds = data.load(spec, args.split, image_size=args.image_size, max_examples=max_examples, cache_dir=cache_dir)
    n = len(ds.images)
    if n < args.num_images:
        raise ConfigError(f"--num_images={args.num_images} but {source} ({args.split}) has {n} images")
    # A seeded draw across the split: folder datasets are sorted by class.
    rng = np.random.default_rng(args.seed)
    index = np.sort(rng.choice(n, size=args.num_images, replace=False))
    images = np.asarray(data.to_float(ds.images[index]), np.float32)
    info = {"data": args.data, "source": source, "dataset": ds.name, "split": args.split,
            "num_images": int(args.num_images), "image_shape": list(images.shape[1:])}
    return images, info


# ----------------------------------------------------------------------------
# Networks.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Network:
    """One network as the commands see it.

    Attributes:
      kind: kernel kind.
      init: ``(key, x) -> variables``.
      conv_outputs: ``(variables, x) -> maps``: every conv output.
      activations: ``(variables, x) -> maps`` whose ReLU are the network's
        post-ReLU activations.
      description: what it is, for the JSON.
      variables: restored variables (checkpoints); then ``init`` is unused.
    """

    kind: str
    init: Callable[[jax.Array, jax.Array], Any]
    conv_outputs: measures.ApplyFn
    activations: measures.ApplyFn
    description: str
    variables: Any = None


def build_network(kind: str, args: argparse.Namespace) -> Network:
    """The untrained network of ``kind`` that ``args`` asks for (plain stack or classify ResNet)."""
    model_name = getattr(args, "model", "plain")
    if model_name == "plain":
        model = measures.plain_resnet(
            kind,
            depth=args.depth,
            widths=args.widths,
            downsample=args.downsample or "stride",
            activation=not getattr(args, "linear", False),
        )
        return Network(
            kind, jax.jit(model.init), model.apply, model.apply,
            f"plain ResNet-{args.depth} (no shortcuts, no BN, He init), widths {list(args.widths)}, "
            f"downsample {model.downsample}" + (", linear" if getattr(args, "linear", False) else ""),
        )
    return _classify_network(kind, args)


def _classify_network(kind: str, args: argparse.Namespace) -> Network:
    from classify.models import resnet_cifar  # Deferred: only --model=classify needs the suite (optax).
    # As configs/classify/resnet_cifar.py builds it: 3x3 stem, the suite's downsampling unless given.
    kwargs = {"stem_kernel": "C3"} | ({} if args.downsample is None else {"downsample": args.downsample})
    model = resnet_cifar(depth=args.depth, kernel=kind, **kwargs)
    return _wrap_classify(model, kind, f"untrained classify.models.resnet_cifar(depth={args.depth}, kernel={kind!r}, {kwargs})")


def _wrap_classify(model, kind: str, description: str, variables: Any = None) -> Network:
    from flax import linen as nn

    return Network(
        kind,
        jax.jit(lambda key, x: model.init(key, x, train=False)),
        measures.module_outputs(model, train=False),
        # Pre-activation ResNet: every ReLU follows a BatchNorm.
        measures.module_outputs(model, select=lambda m, out: isinstance(m, nn.BatchNorm), train=False),
        description,
        variables,
    )


def load_checkpoint_network(workdir: Path, image_shape: Sequence[int]) -> Network:
    """The classify model of a training run, with its latest checkpointed variables.

    Rebuilds the run from ``workdir`` (``python -m classify.main``'s config.json and checkpoints/,
    the latest step) with :func:`classify.state.restore_state`.

    Raises:
      ConfigError: if ``workdir`` has no config or no checkpoint.
    """
    from classify.state import restore_state  # Deferred: only --checkpoint needs the suite (optax).

    try:
        config, model, step, state = restore_state(workdir, image_size=int(image_shape[0]))
    except FileNotFoundError as e:
        raise ConfigError(f"--checkpoint={workdir}: {e}") from None
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    description = f"classify checkpoint {workdir} (step {step}, {config.model.name}, kernel {config.kernel})"
    return _wrap_classify(model, str(config.kernel), description, variables)


def _networks(args: argparse.Namespace, image_shape: Sequence[int]) -> list[Network]:
    if getattr(args, "checkpoint", None) is not None:
        return [load_checkpoint_network(args.checkpoint, image_shape)]
    return [build_network(kind, args) for kind in args.kinds]


def _variables(net: Network, key: jax.Array, x: np.ndarray) -> Any:
    return net.variables if net.variables is not None else net.init(key, jnp.asarray(x[:1]))


def _keys(args: argparse.Namespace, net: Network) -> list[jax.Array]:
    # Restored variables: one "initialization".
    count = 1 if net.variables is not None else args.inits
    return [measures.init_key(args.seed, r) for r in range(count)]


# ----------------------------------------------------------------------------
# Output helpers.
# ----------------------------------------------------------------------------


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer, np.bool_)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serializable: {type(o)}")

    path.write_text(json.dumps(payload, indent=2, default=default, allow_nan=True) + "\n")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_COLORS = {"C3": "tab:green", "C2": "tab:red", "C2sp": "tab:blue", "C4": "tab:orange", "C4sp": "tab:purple"}


def _color(kind: str) -> str | None:
    return _COLORS.get(kind)


def _header(args: argparse.Namespace, argv: Sequence[str] | None, info: dict[str, Any]) -> dict[str, Any]:
    from sympad.train.environment import environment  # Deferred like the data pipeline.

    cmd = ["python", "-m", "paper.analysis", *(sys.argv[1:] if argv is None else argv)]
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    return {"command": " ".join(str(c) for c in cmd), "config": config, "data": info, "environment": environment()}


def _stage_boundaries(ends: Sequence[int]) -> list[float]:
    return [e + 0.5 for e in ends[:-1]]


# ----------------------------------------------------------------------------
# q-curves.
# ----------------------------------------------------------------------------


def _q_claims(q_mean: dict[str, np.ndarray]) -> dict[str, Any]:
    """The paper's Fig. 3 claims, evaluated on the measured means (None where a kind is missing)."""
    final = {k: float(v[-1]) for k, v in q_mean.items()}
    claims: dict[str, Any] = {"final_q_ascending": sorted(final, key=final.get)}
    have = set(final)
    if {"C2", "C4"} <= have and len(have) > 2:
        claims["c2_c4_lose_q_fastest"] = set(claims["final_q_ascending"][:2]) == {"C2", "C4"}
    if {"C2", "C2sp"} <= have:
        claims["c2sp_above_c2_at_end"] = final["C2sp"] > final["C2"]
    if {"C4", "C4sp"} <= have:
        claims["c4sp_above_c4_at_end"] = final["C4sp"] > final["C4"]
    if {"C2sp", "C3"} <= have:
        claims["c2sp_above_c3_at_end"] = final["C2sp"] > final["C3"]
        claims["c2sp_above_c3_fraction_of_layers"] = float(np.mean(q_mean["C2sp"] > q_mean["C3"]))
    return claims


def _attenuation(q: np.ndarray, ends: Sequence[int]) -> list[float]:
    """Mean per-layer log-attenuation ``-d log Q / d layer`` within each stage (higher: faster loss)."""
    rates, start = [], 0
    for end in ends:
        if end > start:
            rates.append(float(-(np.log(q[end]) - np.log(q[start])) / (end - start)))
        else:
            rates.append(float("nan"))
        start = end + 1
    return rates


def run_q_curves(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``q-curves`` command; returns what it writes to ``q_curves.json``."""
    start = time.time()
    images, info = load_images(args)
    results = measures.q_curves(
        images,
        kinds=args.kinds,
        num_inits=args.inits,
        seed=args.seed,
        model_fn=lambda kind: measures.plain_resnet(
            kind, depth=args.depth, widths=args.widths, downsample=args.downsample or "stride"
        ),
        batch_size=args.batch_size,
        with_maps=True,
    )
    any_kind = args.kinds[0]
    sizes = [m.shape for m in results[any_kind]["maps"]]
    ends = measures.stage_ends(sizes)
    q_mean = {k: r["q"].mean(axis=0) for k, r in results.items()}
    q_std = {k: r["q"].std(axis=0) for k, r in results.items()}
    payload = _header(args, argv, info)
    payload.update(
        {
            "model": build_network(any_kind, args).description,
            "num_layers": len(sizes),
            "map_sizes": [list(s) for s in sizes],
            "stage_ends": ends,
            "kinds": {
                k: {
                    "q_mean": q_mean[k],
                    "q_std": q_std[k],
                    "q_geometric_mean": np.exp(np.log(results[k]["q"]).mean(axis=0)),
                    "q_runs": results[k]["q"],
                    "q_final_over_q0": float(q_mean[k][-1] / q_mean[k][0]),
                    "attenuation_per_layer_by_stage": _attenuation(q_mean[k], ends),
                }
                for k in results
            },
            "claims": _q_claims(q_mean),
            # Q of a deep ReLU net without BN is close to log-normal over inits: the same claims on
            # geometric means say whether a few lucky inits decide the arithmetic ones.
            "claims_geometric_mean": _q_claims(
                {k: np.exp(np.log(r["q"]).mean(axis=0)) for k, r in results.items()}
            ),
            "seconds": time.time() - start,
        }
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "q_curves.json", payload)
    header = ["layer", "height", "width"] + [f"{k}_{s}" for k in results for s in ("mean", "std")]
    rows = [
        [l, sizes[l][0], sizes[l][1]] + [v for k in results for v in (q_mean[k][l], q_std[k][l])]
        for l in range(len(sizes))
    ]
    _write_csv(out / "q_curves.csv", header, rows)
    _plot_q_curves(out / "q_curves.png", {k: r["q"] for k, r in results.items()}, ends, title=f"{payload['model']}\n{info['source']}, "
                   f"{info['num_images']} images, {args.inits} inits")
    # One row, a column per kind, as Fig. 3's colormaps.
    _plot_maps(out / "q_last_layer_maps.png", {f"last conv {sizes[-1][0]}x{sizes[-1][1]}\nmean |F|":
               [r["maps"][-1] for r in results.values()]}, list(results))
    return payload


def _plot_q_curves(path: Path, q_runs: dict[str, np.ndarray], ends, *, title: str) -> None:
    """Left: mean Q +- std over inits; right: mean Q / mean Q(layer 0), log scale, min-max band."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, runs in q_runs.items():
        mean, std = runs.mean(axis=0), runs.std(axis=0)
        layers = np.arange(len(mean))
        axes[0].plot(layers, mean, label=kind, color=_color(kind))
        axes[0].fill_between(layers, mean - std, mean + std, color=_color(kind), alpha=0.2)
        scale = 1.0 / mean[0]
        axes[1].plot(layers, mean * scale, label=kind, color=_color(kind))
        axes[1].fill_between(layers, runs.min(axis=0) * scale, runs.max(axis=0) * scale, color=_color(kind), alpha=0.15)
    for ax in axes:
        for b in _stage_boundaries(ends):
            ax.axvline(b, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Q = mean |F|")
    axes[1].set_ylabel("Q / Q(layer 0) (band: min-max over inits)")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_maps(path: Path, maps: dict[str, list[np.ndarray]], column_titles: Sequence[str], *,
               markers: dict[str, np.ndarray] | None = None) -> None:
    """A grid of heat maps: one row per key of ``maps`` (a kind), one column per entry, each map scaled on its own."""
    plt = _pyplot()
    rows = list(maps)
    cols = len(column_titles)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols + 0.6, 2.5 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, m in enumerate(maps[row]):
            ax = axes[i][j]
            ax.imshow(m, cmap="viridis", interpolation="nearest")
            h, w = m.shape
            ax.axhline((h - 1) / 2, color="white", lw=0.6, ls=":")
            ax.axvline((w - 1) / 2, color="white", lw=0.6, ls=":")
            if markers is not None:
                cy, cx = markers[row][j]
                ax.plot([cx], [cy], marker="+", color="red", ms=10, mew=2)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column_titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------
# shift.
# ----------------------------------------------------------------------------


def _drift_rate(offsets: np.ndarray, first: int, last: int) -> list[float]:
    """Least-squares slope (input px per layer) of the offsets over layers ``first..last``."""
    if last - first < 1:
        return [float("nan"), float("nan")]
    layers = np.arange(first, last + 1, dtype=np.float64)
    return [float(np.polyfit(layers, offsets[first : last + 1, a], 1)[0]) for a in range(2)]


def run_shift(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``shift`` command; returns what it writes to ``shift.json``."""
    start = time.time()
    images, info = load_images(args)
    input_size = images.shape[1:3]
    per_kind: dict[str, Any] = {}
    stage_maps: dict[str, list[np.ndarray]] = {}
    stage_marks: dict[str, np.ndarray] = {}
    ends: list[int] = []
    description = ""
    for net in _networks(args, images.shape[1:]):
        description = net.description
        offsets, map_sum = [], None
        for key in _keys(args, net):
            variables = _variables(net, key, images)
            maps = measures.mean_maps(net.activations, variables, images, transform="relu", batch_size=args.batch_size)
            offsets.append(measures.feature_map_shift(maps, input_size=input_size))
            map_sum = maps if map_sum is None else [a + b for a, b in zip(map_sum, maps)]
        offsets = np.stack(offsets)  # (R, L, 2)
        mean_maps = [m / len(offsets) for m in map_sum]
        ends = measures.stage_ends([m.shape for m in mean_maps])
        mean_offsets = offsets.mean(axis=0)
        per_kind[net.kind] = {
            "description": net.description,
            "offsets_mean": mean_offsets,
            "offsets_std": offsets.std(axis=0),
            "stage_offsets_mean": mean_offsets[ends],
            "stage_offsets_std": offsets.std(axis=0)[ends],
            "stage_sizes": [list(mean_maps[e].shape) for e in ends],
            "drift_per_layer_first_stage": _drift_rate(mean_offsets, 0, ends[0]),
        }
        stage_maps[net.kind] = [mean_maps[e] for e in ends]
        stage_marks[net.kind] = np.stack(
            [measures.center_of_mass(mean_maps[e]) for e in ends]
        )
    payload = _header(args, argv, info)
    payload.update(
        {
            "model": description,
            "stage_ends": ends,
            "convention": "offset (dy, dx) of the centre of mass of the mean post-ReLU map from the map centre, "
            "in input pixels; negative = up/left",
            "kinds": per_kind,
            "seconds": time.time() - start,
        }
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "shift.json", payload)
    rows = []
    for kind, r in per_kind.items():
        for l, (m, s) in enumerate(zip(r["offsets_mean"], r["offsets_std"])):
            rows.append([kind, l, int(l in ends), m[0], m[1], s[0], s[1]])
    _write_csv(out / "shift.csv", ["kind", "layer", "stage_end", "dy_mean", "dx_mean", "dy_std", "dx_std"], rows)
    titles = [f"layer {e} ({'x'.join(map(str, stage_maps[next(iter(stage_maps))][i].shape))})" for i, e in enumerate(ends)]
    _plot_maps(out / "shift_maps.png", stage_maps, titles, markers=stage_marks)
    _plot_offsets(out / "shift_per_layer.png", {k: r["offsets_mean"] for k, r in per_kind.items()}, ends,
                  ylabel="centroid offset (input px)", title=f"{description}\n{info['source']}, {info['num_images']} images")
    return payload


def _plot_offsets(path: Path, offsets: dict[str, np.ndarray], ends, *, ylabel: str, title: str,
                  extents: dict[str, np.ndarray] | None = None) -> None:
    plt = _pyplot()
    panels = 3 if extents is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for kind, off in offsets.items():
        layers = np.arange(len(off))
        for a, name in enumerate(("dy (rows)", "dx (cols)")):
            axes[a].plot(layers, off[:, a], label=kind, color=_color(kind), marker=".")
            axes[a].set_title(name)
        if extents is not None:
            axes[2].plot(layers, extents[kind].mean(axis=1), label=kind, color=_color(kind), marker=".")
            axes[2].set_title("RMS radius (input px)")
    for ax in axes:
        for b in _stage_boundaries(ends):
            ax.axvline(b, color="gray", ls="--", lw=0.8)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------
# receptive-field.
# ----------------------------------------------------------------------------


def _layer_selection(spec: str, shapes: Sequence[Sequence[int]]) -> list[int]:
    if spec == "all":
        return list(range(len(shapes)))
    if spec == "stages":
        return measures.stage_ends(shapes)
    try:
        layers = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be 'all', 'stages' or comma-separated ints, got {spec!r}") from None
    for l in layers:
        if not 0 <= l < len(shapes):
            raise ConfigError(f"--layers: {l} is not one of the {len(shapes)} layers")
    return layers


def run_receptive_field(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``receptive-field`` command; returns what it writes to ``receptive_field.json``."""
    start = time.time()
    images, info = load_images(args)
    per_kind: dict[str, Any] = {}
    stage_maps: dict[str, list[np.ndarray]] = {}
    ends: list[int] = []
    layers: list[int] = []
    description = ""
    x = jnp.asarray(images)
    for net in _networks(args, images.shape[1:]):
        description = net.description
        grads, extents, impulses, map_sums = [], [], [], None
        for key in _keys(args, net):
            variables = _variables(net, key, images)
            shapes = [s.shape for s in jax.eval_shape(lambda v, x: net.conv_outputs(v, x), variables, x)]
            ends = measures.stage_ends(shapes)
            layers = _layer_selection(args.layers, shapes)
            maps, offsets, ext = measures.receptive_field(net.conv_outputs, variables, x, layers=layers)
            _, impulse = measures.impulse_response(net.conv_outputs, variables, x)
            grads.append(offsets)
            extents.append(ext)
            impulses.append(impulse[layers])
            map_sums = maps if map_sums is None else [a + b for a, b in zip(map_sums, maps)]
        grads, extents, impulses = np.stack(grads), np.stack(extents), np.stack(impulses)
        per_kind[net.kind] = {
            "description": net.description,
            "layers": layers,
            "gradient_offset_mean": grads.mean(axis=0),
            "gradient_offset_std": grads.std(axis=0),
            "gradient_rms_radius_mean": extents.mean(axis=0),
            "impulse_offset_mean": impulses.mean(axis=0),
            "impulse_offset_std": impulses.std(axis=0),
        }
        shown = [layers.index(e) for e in ends if e in layers]
        stage_maps[net.kind] = [map_sums[i] / len(grads) for i in shown]
    payload = _header(args, argv, info)
    payload.update(
        {
            "model": description,
            "stage_ends": ends,
            "convention": "gradient_offset: centre of mass of |d F_l[centre unit] / d x| minus the unit's input "
            "position (positive: the unit looks down/right); impulse_offset: centre of mass of the linearized "
            "response to an impulse at the input centre minus that centre (negative: content moves up/left); "
            "input pixels, (dy, dx)",
            "kinds": per_kind,
            "seconds": time.time() - start,
        }
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "receptive_field.json", payload)
    rows = []
    for kind, r in per_kind.items():
        for i, l in enumerate(r["layers"]):
            rows.append([kind, l, *r["gradient_offset_mean"][i], *r["gradient_rms_radius_mean"][i],
                         *r["impulse_offset_mean"][i]])
    _write_csv(out / "receptive_field.csv",
               ["kind", "layer", "grad_dy", "grad_dx", "grad_rms_y", "grad_rms_x", "impulse_dy", "impulse_dx"], rows)
    _plot_rf(out / "receptive_field.png", per_kind, ends, title=f"{description}\n{info['source']}")
    shown_layers = [e for e in ends if e in layers]
    if shown_layers:
        _plot_maps(out / "receptive_field_maps.png", stage_maps, [f"layer {l}: |dF/dx|" for l in shown_layers])
    return payload


def _plot_rf(path: Path, per_kind: dict[str, Any], ends, *, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for kind, r in per_kind.items():
        layers = r["layers"]
        g, imp, ext = r["gradient_offset_mean"], r["impulse_offset_mean"], r["gradient_rms_radius_mean"]
        axes[0].plot(layers, g.mean(axis=1), label=kind, color=_color(kind), marker=".")
        axes[1].plot(layers, imp.mean(axis=1), label=kind, color=_color(kind), marker=".")
        axes[2].plot(layers, ext.mean(axis=1), label=kind, color=_color(kind), marker=".")
    axes[0].set_title("receptive-field offset, mean of (dy, dx) (input px)")
    axes[1].set_title("impulse-response offset, mean of (dy, dx) (input px)")
    axes[2].set_title("receptive-field RMS radius (input px)")
    for ax in axes:
        for b in _stage_boundaries(ends):
            ax.axvline(b, color="gray", ls="--", lw=0.8)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------

_RUNNERS = {"q-curves": run_q_curves, "shift": run_shift, "receptive-field": run_receptive_field}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs one command; ``argv`` excludes the program name (default ``sys.argv[1:]``).

    Returns:
      The payload written to the command's JSON file.
    """
    args = parse_args(argv)
    payload = _RUNNERS[args.command](args, argv)
    print(f"wrote {args.out} ({payload['seconds']:.1f} s)")
    return payload


if __name__ == "__main__":
    from sympad.train.errors import run_cli

    run_cli(main)  # a user error (bad value, missing file): one error line, status 2

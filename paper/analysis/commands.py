"""The analyses behind ``python -m paper.analysis``: each measures its networks on the drawn
images and writes its JSON, CSV and figures (:mod:`paper.analysis.plots`) to ``settings.out``.

* :func:`run_q_curves` (Fig. 3): layerwise Q = mean |F| of every conv output of untrained plain
  ResNets, over several initializations.
* :func:`run_shift` (Fig. 2, made quantitative): per layer and per stage, the centroid offset in
  input pixels of the mean post-ReLU map over the images.
* :func:`run_receptive_field`: per layer, the centroid offset and RMS extent of the gradient
  receptive field of the centre unit, and the centroid offset of the linearized impulse response.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paper import measures
from paper.analysis import plots
from paper.analysis.data import load_images
from paper.analysis.networks import Network, build_network, init_keys, load_checkpoint_network, variables_of
from sympad.kinds import KINDS
from sympad.train.errors import ConfigError

__all__ = ["RUNNERS", "Settings", "run_q_curves", "run_receptive_field", "run_shift"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What one analysis measures and where it writes (the command line's flags of the same names).

    Attributes:
      out: output directory (created).
      kinds: kernel kinds measured (a checkpoint's own kind instead, with ``checkpoint``).
      inits: random initializations per kind (one for restored variables).
      seed: seed of the initializations and the image draw.
      data, split, num_images, image_size, cache_dir: the images (:func:`paper.analysis.data.load_images`).
      batch_size: images per forward pass.
      depth, widths, downsample, model, linear: the networks (:func:`paper.analysis.networks.build_network`).
      checkpoint: a classify training run to restore (its latest checkpoint) instead of building.
      layers: ``receptive-field``'s layers: 'all', 'stages' (each stage's last) or comma-separated indices.
    """

    out: Path
    inits: int
    num_images: int
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    data: str = "auto"
    split: str = "test"
    image_size: int | None = None
    cache_dir: Path | None = None
    batch_size: int = 250
    depth: int = 56
    widths: tuple[int, ...] = (16, 32, 64)
    downsample: str | None = None
    model: str = "plain"
    checkpoint: Path | None = None
    linear: bool = False
    layers: str = "all"


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


def _header(invocation: Mapping[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    from sympad.train.environment import environment  # Deferred like the data pipeline.

    return {**invocation, "data": info, "environment": environment()}


def _images(settings: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    return load_images(data=settings.data, split=settings.split, num_images=settings.num_images, seed=settings.seed,
                       image_size=settings.image_size, cache_dir=settings.cache_dir)


def _networks(settings: Settings, image_shape: Sequence[int]) -> list[Network]:
    if settings.checkpoint is not None:
        return [load_checkpoint_network(settings.checkpoint, image_shape)]
    return [build_network(kind, model=settings.model, depth=settings.depth, widths=settings.widths,
                          downsample=settings.downsample, linear=settings.linear) for kind in settings.kinds]


def _keys(settings: Settings, net: Network) -> list[jax.Array]:
    return init_keys(net, inits=settings.inits, seed=settings.seed)


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


def run_q_curves(settings: Settings, *, invocation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``q-curves`` command; returns what it writes to ``q_curves.json``."""
    start = time.time()
    images, info = _images(settings)
    results = measures.q_curves(
        images,
        kinds=settings.kinds,
        num_inits=settings.inits,
        seed=settings.seed,
        model_fn=lambda kind: measures.plain_resnet(
            kind, depth=settings.depth, widths=settings.widths, downsample=settings.downsample or "stride"
        ),
        batch_size=settings.batch_size,
        with_maps=True,
    )
    any_kind = settings.kinds[0]
    sizes = [m.shape for m in results[any_kind]["maps"]]
    ends = measures.stage_ends(sizes)
    q_mean = {k: r["q"].mean(axis=0) for k, r in results.items()}
    q_std = {k: r["q"].std(axis=0) for k, r in results.items()}
    payload = _header(invocation, info)
    payload.update(
        {
            "model": build_network(any_kind, depth=settings.depth, widths=settings.widths,
                                   downsample=settings.downsample).description,
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
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "q_curves.json", payload)
    header = ["layer", "height", "width"] + [f"{k}_{s}" for k in results for s in ("mean", "std")]
    rows = [
        [layer, sizes[layer][0], sizes[layer][1]]
        + [v for k in results for v in (q_mean[k][layer], q_std[k][layer])]
        for layer in range(len(sizes))
    ]
    _write_csv(out / "q_curves.csv", header, rows)
    plots.plot_q_curves(out / "q_curves.png", {k: r["q"] for k, r in results.items()}, ends,
                        title=f"{payload['model']}\n{info['source']}, {info['num_images']} images, "
                              f"{settings.inits} inits")
    # One row, a column per kind, as Fig. 3's colormaps.
    plots.plot_maps(out / "q_last_layer_maps.png", {f"last conv {sizes[-1][0]}x{sizes[-1][1]}\nmean |F|":
               [r["maps"][-1] for r in results.values()]}, list(results))
    return payload


def _drift_rate(offsets: np.ndarray, first: int, last: int) -> list[float]:
    """Least-squares slope (input px per layer) of the offsets over layers ``first..last``."""
    if last - first < 1:
        return [float("nan"), float("nan")]
    layers = np.arange(first, last + 1, dtype=np.float64)
    return [float(np.polyfit(layers, offsets[first : last + 1, a], 1)[0]) for a in range(2)]


def run_shift(settings: Settings, *, invocation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``shift`` command; returns what it writes to ``shift.json``."""
    start = time.time()
    images, info = _images(settings)
    input_size = images.shape[1:3]
    per_kind: dict[str, Any] = {}
    stage_maps: dict[str, list[np.ndarray]] = {}
    stage_marks: dict[str, np.ndarray] = {}
    ends: list[int] = []
    description = ""
    for net in _networks(settings, images.shape[1:]):
        description = net.description
        offsets, map_sum = [], None
        for key in _keys(settings, net):
            variables = variables_of(net, key, images)
            maps = measures.mean_maps(net.activations, variables, images, transform="relu",
                                      batch_size=settings.batch_size)
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
    payload = _header(invocation, info)
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
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "shift.json", payload)
    rows = []
    for kind, r in per_kind.items():
        for layer, (m, s) in enumerate(zip(r["offsets_mean"], r["offsets_std"])):
            rows.append([kind, layer, int(layer in ends), m[0], m[1], s[0], s[1]])
    _write_csv(out / "shift.csv", ["kind", "layer", "stage_end", "dy_mean", "dx_mean", "dy_std", "dx_std"], rows)
    first_kind_maps = stage_maps[next(iter(stage_maps))]
    titles = [f"layer {e} ({'x'.join(map(str, first_kind_maps[i].shape))})" for i, e in enumerate(ends)]
    plots.plot_maps(out / "shift_maps.png", stage_maps, titles, markers=stage_marks)
    plots.plot_offsets(out / "shift_per_layer.png", {k: r["offsets_mean"] for k, r in per_kind.items()}, ends,
                       ylabel="centroid offset (input px)",
                       title=f"{description}\n{info['source']}, {info['num_images']} images")
    return payload


def _layer_selection(spec: str, shapes: Sequence[Sequence[int]]) -> list[int]:
    if spec == "all":
        return list(range(len(shapes)))
    if spec == "stages":
        return measures.stage_ends(shapes)
    try:
        layers = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be 'all', 'stages' or comma-separated ints, got {spec!r}") from None
    for layer in layers:
        if not 0 <= layer < len(shapes):
            raise ConfigError(f"--layers: {layer} is not one of the {len(shapes)} layers")
    return layers


def run_receptive_field(settings: Settings, *, invocation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``receptive-field`` command; returns what it writes to ``receptive_field.json``."""
    start = time.time()
    images, info = _images(settings)
    per_kind: dict[str, Any] = {}
    stage_maps: dict[str, list[np.ndarray]] = {}
    ends: list[int] = []
    layers: list[int] = []
    description = ""
    x = jnp.asarray(images)
    for net in _networks(settings, images.shape[1:]):
        description = net.description
        grads, extents, impulses, map_sums = [], [], [], None
        for key in _keys(settings, net):
            variables = variables_of(net, key, images)
            shapes = [s.shape for s in jax.eval_shape(net.conv_outputs, variables, x)]
            ends = measures.stage_ends(shapes)
            layers = _layer_selection(settings.layers, shapes)
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
    payload = _header(invocation, info)
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
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "receptive_field.json", payload)
    rows = []
    for kind, r in per_kind.items():
        for i, layer in enumerate(r["layers"]):
            rows.append([kind, layer, *r["gradient_offset_mean"][i], *r["gradient_rms_radius_mean"][i],
                         *r["impulse_offset_mean"][i]])
    _write_csv(out / "receptive_field.csv",
               ["kind", "layer", "grad_dy", "grad_dx", "grad_rms_y", "grad_rms_x", "impulse_dy", "impulse_dx"], rows)
    plots.plot_rf(out / "receptive_field.png", per_kind, ends, title=f"{description}\n{info['source']}")
    shown_layers = [e for e in ends if e in layers]
    if shown_layers:
        titles = [f"layer {layer}: |dF/dx|" for layer in shown_layers]
        plots.plot_maps(out / "receptive_field_maps.png", stage_maps, titles)
    return payload


#: Each command's analysis: ``(settings, invocation=...) -> payload`` (what its JSON file holds;
#: ``invocation``, the command line and its flags, opens it).
RUNNERS = {"q-curves": run_q_curves, "shift": run_shift, "receptive-field": run_receptive_field}

"""The analyses' figures (matplotlib, Agg): Q curves, offsets per layer, receptive fields, map grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_maps", "plot_offsets", "plot_q_curves", "plot_rf"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_COLORS = {"C3": "tab:green", "C2": "tab:red", "C2sp": "tab:blue", "C4": "tab:orange", "C4sp": "tab:purple"}


def _color(kind: str) -> str | None:
    return _COLORS.get(kind)


def _layer_axes(axes: Sequence, ends: Sequence[int], *, zero_line: bool) -> None:
    """Per-layer axes: dashed lines between stages (``ends``: each stage's last layer), optionally
    a line at 0, the x label and a light grid."""
    for ax in axes:
        for e in ends[:-1]:
            ax.axvline(e + 0.5, color="gray", ls="--", lw=0.8)
        if zero_line:
            ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)


def plot_q_curves(path: Path, q_runs: dict[str, np.ndarray], ends: Sequence[int], *, title: str) -> None:
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
    _layer_axes(axes, ends, zero_line=False)
    axes[0].set_ylabel("Q = mean |F|")
    axes[1].set_ylabel("Q / Q(layer 0) (band: min-max over inits)")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_maps(path: Path, maps: dict[str, list[np.ndarray]], column_titles: Sequence[str], *,
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


def plot_offsets(path: Path, offsets: dict[str, np.ndarray], ends: Sequence[int], *, ylabel: str, title: str,
                 extents: dict[str, np.ndarray] | None = None) -> None:
    """Per kind, the (L, 2) offsets' dy and dx over layers; a third panel with the (L, 2) ``extents``' mean."""
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
    _layer_axes(axes, ends, zero_line=True)
    axes[0].set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rf(path: Path, per_kind: dict[str, Any], ends: Sequence[int], *, title: str) -> None:
    """Per kind (``receptive-field``'s results): gradient and impulse offsets and the RMS radius over layers."""
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
    _layer_axes(axes, ends, zero_line=True)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

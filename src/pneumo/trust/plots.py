"""Figures of the trust audits, as PNG files (matplotlib ``Figure`` + Agg: no pyplot state, no display)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumo.utils.atomic import atomic_open

DPI = 100
PathLike = str | os.PathLike[str]


def _save(fig: Figure, path: PathLike, tight: bool = True) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return Path(path)


def cue_histograms(
    values: Mapping[str, np.ndarray], y: np.ndarray, class_names: Sequence[str], path: PathLike, title: str
) -> Path:
    """One panel per cue: density histograms by class (range clipped to the pooled 1st-99th percentiles)."""
    names = list(values)
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = np.asarray(values[name], dtype=np.float64)
        ok = np.isfinite(v)
        if ok.sum() < 2:
            ax.set_axis_off()
            continue
        lo, hi = np.percentile(v[ok], [1, 99])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
        for c, cname in enumerate(class_names):
            sel = ok & (y == c)
            if sel.any():
                # stepfilled: one polygon per class instead of one patch per bin (many panels render 10x faster)
                ax.hist(
                    np.clip(v[sel], lo, hi),
                    bins=bins,
                    density=True,
                    alpha=0.5,
                    histtype="stepfilled",
                    label=f"{cname} ({sel.sum()})",
                )
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])  # densities: only the shapes matter, and fewer labels render much faster
        ax.locator_params(axis="x", nbins=3)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.06, top=0.9, hspace=0.45, wspace=0.15)
    return _save(fig, path, tight=False)


def delta_bars(
    rows: Sequence[Mapping[str, float]], path: PathLike, title: str, xlabel: str = "change in ROC AUC"
) -> Path:
    """Horizontal bars of ``point`` with ``low``/``high`` error bars, labelled by ``name``."""
    fig = Figure(figsize=(6.5, 0.35 * len(rows) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(len(rows))[::-1]
    point = np.array([r["point"] for r in rows], dtype=np.float64)
    err = np.array([[r["point"] - r["low"], r["high"] - r["point"]] for r in rows], dtype=np.float64).T
    ax.barh(pos, point, xerr=np.nan_to_num(err), color=np.where(point < 0, "#c0392b", "#2e86c1"), capsize=3)
    ax.set_yticks(pos, [str(r["name"]) for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def mean_heatmap(heat: np.ndarray, boxes: Mapping[str, np.ndarray], path: PathLike, title: str) -> Path:
    """The mean Grad-CAM map with the outlines of the region masks."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(heat, cmap="jet", vmin=0)
    for (name, mask), colour in zip(boxes.items(), ("white", "black", "magenta"), strict=False):
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        ax.plot([], [], color=colour, label=name)
    ax.legend(fontsize=7, loc="lower center", ncol=3, framealpha=0.6)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def score_histograms(
    groups: Mapping[str, np.ndarray], threshold: float, path: PathLike, title: str, xlabel: str = "OOD score"
) -> Path:
    """Histograms of scores per group on a log axis, with the threshold line."""
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for v in groups.values()]
    pooled = np.concatenate([v for v in finite if v.size] or [np.array([threshold])])
    lo, hi = max(pooled.min(), 1e-3), max(pooled.max(), threshold) * 1.05
    bins = np.geomspace(lo, hi, 40) if hi > lo else 20
    for (name, _), v in zip(groups.items(), finite, strict=True):
        if v.size:
            ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.5, histtype="stepfilled", label=f"{name} ({v.size})")
    ax.axvline(threshold, color="black", ls="--", label="threshold")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

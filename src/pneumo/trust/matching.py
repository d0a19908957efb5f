"""A metadata-matched subset: classes resampled so that their acquisition cues have the same binned distribution.

Stratified matching by bin (coarsened exact matching): each cue is cut into quantile bins of the pooled values; in
every cell of the bin grid, each class keeps ``min(count per class)`` images, drawn at random with a seed. Within the
subset every class then has exactly the same count per cell, so a cue can no longer separate the classes beyond what
is left inside a bin; :func:`balance_tests` checks that (Kolmogorov-Smirnov on the raw values). Cues that were not
matched are not balanced by it: ``pneumo audit model`` measures what they still do on the subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges at the pooled quantiles of the finite ``values`` (duplicates dropped: ties share a bin)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or n_bins < 2:
        return np.empty(0)
    return np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1]))


def bin_codes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, values, side="right")


@dataclass(frozen=True)
class MatchResult:
    index: np.ndarray  # matched rows of the input, sorted
    usable: np.ndarray  # rows with every cue known (only these can be matched)
    edges: list[np.ndarray]  # per cue
    cells_used: int


def matched_subset(
    values: np.ndarray,
    targets: np.ndarray,
    *,
    n_bins: int | Sequence[int] = 10,
    num_classes: int | None = None,
    seed: int = 0,
) -> MatchResult:
    """Rows whose classes have identical per-cell counts over the bin grid of the cue columns of ``values``.

    ``values``: ``N`` or ``N x m`` cue values (rows with a NaN cue are left out); ``targets``: class indices;
    ``n_bins``: quantile bins per cue (one number for all, or one per cue). Deterministic for a ``seed``.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(targets, dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} value rows for {len(y)} targets")
    bins = [n_bins] * x.shape[1] if isinstance(n_bins, int) else list(n_bins)
    if len(bins) != x.shape[1]:
        raise ValueError(f"{len(bins)} bin counts for {x.shape[1]} cues")
    k = num_classes or int(y.max(initial=0)) + 1
    usable = np.flatnonzero(np.isfinite(x).all(axis=1))
    edges = [quantile_edges(x[usable, j], b) for j, b in enumerate(bins)]
    codes = np.column_stack([bin_codes(x[usable, j], e) for j, e in enumerate(edges)]) if usable.size else None
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    cells_used = 0
    if codes is not None:
        cells, cell_of = np.unique(codes, axis=0, return_inverse=True)
        cell_of = cell_of.reshape(-1)
        for cell in range(len(cells)):  # cells in sorted order, so the draws are reproducible
            members = usable[cell_of == cell]
            per_class = [members[y[members] == c] for c in range(k)]
            n_keep = min(len(m) for m in per_class)
            if n_keep == 0:
                continue
            cells_used += 1
            keep += [rng.choice(m, size=n_keep, replace=False) for m in per_class]
    index = np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)
    return MatchResult(index, usable, edges, cells_used)


def balance_tests(values: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """How alike the classes' distributions of one cue are: the smallest pairwise two-sample Kolmogorov-Smirnov
    statistic's p-value on the raw values (NaN where a class has no value).

    No chi-square on the matching's own bins: matching keeps equal class counts in every cell, so it would pass by
    construction on the matched subset."""
    v, y = np.asarray(values, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    ok = np.isfinite(v)
    v, y = v[ok], y[ok]
    classes = np.unique(y)
    out = {"ks": math.nan, "ks_p": math.nan}
    if len(classes) < 2:
        return out
    pairs = [(a, b) for i, a in enumerate(classes) for b in classes[i + 1 :]]
    ks = [stats.ks_2samp(v[y == a], v[y == b]) for a, b in pairs]
    worst = min(ks, key=lambda r: r.pvalue)
    out["ks"], out["ks_p"] = float(worst.statistic), float(worst.pvalue)
    return out

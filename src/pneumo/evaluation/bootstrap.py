"""Patient-level (cluster) bootstrap confidence intervals.

Images of one patient are correlated, so resampling images would understate the uncertainty: each replicate
draws *patients* (groups) with replacement, as many as there are, and takes all of their images. The caller
passes ``groups``; an image with a missing patient id (``None``, NaN or ``""``) is treated as its own group,
i.e. as a patient with a single image. ``groups=None`` gives the ordinary image-level bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.evaluation.metrics import scalar_metrics

MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]
# Replicates per chunk: bounds the B x N weight matrix; fixed so results never depend on N.
_CHUNK = 100


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile bootstrap interval; ``n_valid`` replicates defined the interval."""

    point: float
    low: float
    high: float
    n_valid: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return {"point": self.point, "low": self.low, "high": self.high, "n_valid": self.n_valid}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def group_indices(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Map each image to a group index ``0..G-1``; missing ids and ``groups=None`` give singleton groups."""
    if groups is None:
        return np.arange(n)
    values = list(groups)
    if len(values) != n:
        raise ValueError(f"{len(values)} group ids for {n} images")
    codes: dict[Any, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, value in enumerate(values):
        key = ("<missing patient id>", i) if _is_missing(value) else value  # unique key: own group
        out[i] = codes.setdefault(key, len(codes))
    return out


def replicate_weights(group_of: np.ndarray, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield ``B x N`` matrices (chunks of replicates) of how often each image is drawn in each replicate.

    Each replicate draws G groups with replacement (G = number of groups); an image is drawn as often as its
    group. Weighting by these counts is the same as materialising the resampled set.
    """
    n_groups = int(group_of.max()) + 1
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        draws = rng.integers(0, n_groups, size=(size, n_groups))
        times = np.zeros((size, n_groups), dtype=np.int64)
        np.add.at(times, (np.arange(size)[:, None], draws), 1)
        yield times[:, group_of]


def _replicate_values(
    y: np.ndarray, p: np.ndarray, metric_fn: MetricFn, weights: np.ndarray, names: Sequence[str]
) -> np.ndarray:
    """``len(names) x B`` metric values of the replicates in ``weights``; NaN where a metric is missing."""
    batch = getattr(metric_fn, "batch", None)
    if callable(batch):
        columns = batch(y, p, weights)
        nan_row = np.full(weights.shape[0], math.nan)
        return np.stack([np.asarray(columns.get(name, nan_row), dtype=np.float64) for name in names])
    all_images = np.arange(y.size)
    rows = [scalar_metrics(metric_fn(y[idx], p[idx])) for idx in (np.repeat(all_images, w) for w in weights)]
    return np.array([[row.get(name, math.nan) for row in rows] for name in names], dtype=np.float64)


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    groups: Sequence[Any] | np.ndarray | None,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, CI]:
    """Percentile bootstrap CIs for every scalar metric returned by ``metric_fn(y_true, probs)``.

    ``metric_fn`` returns a dict of metrics; nested dicts are flattened (``"recall/NORMAL"``) and lists are
    ignored. A replicate in which a metric is undefined (NaN, e.g. AUC when one class only was drawn) is skipped
    for that metric only; a metric with no defined replicate gets NaN bounds. If ``metric_fn`` also has a
    ``batch(y, probs, weights)`` method (as :class:`~pneumo.evaluation.metrics.MetricSuite` does), all
    replicates are computed at once from their image multiplicities; otherwise ``metric_fn`` is called on each
    resampled set. Resampling uses ``numpy.random.default_rng(seed)``, so a seed gives identical intervals.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    if n_boot < 1:
        raise ValueError("n_boot must be positive")
    y, p = np.asarray(y_true), np.asarray(probs)
    if len(p) != len(y) or y.size == 0:
        raise ValueError(f"need matching, non-empty labels and predictions ({len(y)} vs {len(p)})")
    point = scalar_metrics(metric_fn(y, p))
    names = list(point)
    rng = np.random.default_rng(seed)
    weights = replicate_weights(group_indices(groups, y.size), n_boot, rng)
    values = np.concatenate([_replicate_values(y, p, metric_fn, w, names) for w in weights], axis=1)

    result: dict[str, CI] = {}
    for name, row in zip(names, values, strict=True):
        valid = row[~np.isnan(row)]
        if valid.size:
            low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        else:
            low = high = math.nan
        result[name] = CI(point=point[name], low=float(low), high=float(high), n_valid=int(valid.size))
    return result

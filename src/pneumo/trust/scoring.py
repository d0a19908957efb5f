"""ROC AUC of raw cue values and of paired model outputs, with patient-level bootstrap CIs.

Both metric functions follow :func:`pneumo.evaluation.bootstrap.bootstrap_ci`'s protocol (``__call__`` for one set,
``batch`` for many weighted replicates) and delegate the arithmetic to :class:`~pneumo.evaluation.MetricSuite`, so
the AUC is the evaluation package's, computed for 1000 replicates at once. A raw cue is turned into a probability-like
column by its rank scaled to [0, 1]: a monotone map, so its AUC is the cue's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from pneumo.evaluation import CI, MetricSuite, bootstrap_ci

_BINARY = MetricSuite(("rest", "class"))


def _as_probs(score: np.ndarray) -> np.ndarray:
    if not np.isfinite(score).all():  # rankdata would spread one NaN to every rank: an AUC of 0.5, silently
        raise ValueError(f"{int((~np.isfinite(score)).sum())} score(s) are NaN or infinite; leave them out first")
    r = rankdata(score)
    r = (r - r.min()) / (r.max() - r.min()) if r.max() > r.min() else np.full_like(r, 0.5)
    return np.column_stack([1.0 - r, r])


def _ovr_columns(scores: np.ndarray, k: int) -> list[tuple[int, np.ndarray]]:
    """(class, score) pairs: the positive class's score for binary tasks, every class's column otherwise."""
    s = np.asarray(scores, dtype=np.float64)
    if k == 2:
        return [(1, s if s.ndim == 1 else s[:, 1])]
    return [(c, s if s.ndim == 1 else s[:, c]) for c in range(k)]


class ScoreAUC:
    """ROC AUC of a raw score (binary: ``N`` values; K classes: ``N x K`` per-class scores, macro one-vs-rest)."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes

    def __call__(self, y: Any, scores: Any) -> dict[str, float]:
        return {"roc_auc": float(self.batch(y, scores, np.ones((1, len(np.asarray(y)))))["roc_auc"][0])}

    def batch(self, y: Any, scores: Any, weights: np.ndarray) -> dict[str, np.ndarray]:
        y = np.asarray(y, dtype=np.int64)
        aucs = [
            _BINARY.batch((y == c).astype(np.int64), _as_probs(s), weights)["roc_auc"]
            for c, s in _ovr_columns(scores, self.k)
        ]
        return {"roc_auc": np.mean(aucs, axis=0)}  # NaN when a class is absent from a replicate


def orient(y_train: np.ndarray, scores_train: np.ndarray, k: int) -> np.ndarray:
    """Signs (+1/-1 per one-vs-rest column) that make each cue's train AUC >= 0.5: chosen on train only."""
    signs = []
    for c, s in _ovr_columns(scores_train, k):
        auc = ScoreAUC(2)((y_train == c).astype(np.int64), s)["roc_auc"]
        signs.append(-1.0 if auc < 0.5 else 1.0)
    return np.array(signs)


def oriented_scores(values: np.ndarray, signs: np.ndarray, k: int) -> np.ndarray:
    """A cue as the score :class:`ScoreAUC` expects, each one-vs-rest column with its train orientation."""
    v = np.asarray(values, dtype=np.float64)
    return v * signs[0] if k == 2 else np.column_stack([v * s for s in signs])


def auc_ci(
    y: np.ndarray, scores: np.ndarray, groups: Sequence[Any] | None, num_classes: int, *, n_boot: int, seed: int
) -> CI:
    """ROC AUC of ``scores`` (raw values or probabilities) with a patient-bootstrap CI."""
    return bootstrap_ci(y, scores, groups, ScoreAUC(num_classes), n_boot=n_boot, seed=seed)["roc_auc"]


class PairedAUC:
    """AUCs of two outputs for the same images (``N x 2K``: reference probabilities, then new ones) and their
    difference; the bootstrap resamples patients once for both, so the CI of the difference is paired."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.suite = MetricSuite(tuple(class_names))
        self.k = len(class_names)

    def __call__(self, y: Any, probs: Any) -> dict[str, float]:
        p = np.asarray(probs, dtype=np.float64)
        ref, new = (float(self.suite(y, half)["roc_auc"]) for half in (p[:, : self.k], p[:, self.k :]))
        return {"roc_auc_reference": ref, "roc_auc": new, "delta_roc_auc": new - ref}

    def batch(self, y: Any, probs: Any, weights: np.ndarray) -> dict[str, np.ndarray]:
        p = np.asarray(probs, dtype=np.float64)
        ref = self.suite.batch(y, p[:, : self.k], weights)["roc_auc"]
        new = self.suite.batch(y, p[:, self.k :], weights)["roc_auc"]
        return {"roc_auc_reference": ref, "roc_auc": new, "delta_roc_auc": new - ref}


def paired_auc(
    y: np.ndarray,
    probs_reference: np.ndarray,
    probs_new: np.ndarray,
    groups: Sequence[Any] | None,
    class_names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, CI]:
    """``roc_auc_reference``, ``roc_auc`` and ``delta_roc_auc`` (new - reference) with paired patient-bootstrap CIs."""
    both = np.hstack([probs_reference, probs_new])
    return bootstrap_ci(y, both, groups, PairedAUC(class_names), n_boot=n_boot, seed=seed)


def ci_dict(ci: CI | None) -> dict[str, float] | None:
    return None if ci is None else {"point": ci.point, "low": ci.low, "high": ci.high}

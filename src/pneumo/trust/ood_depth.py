"""Fitting the multi-depth outlier-exposure check (``multidepth-oe``); the scorer it fits, its method and its
parameters are :mod:`pneumo.runs.ood_depth`'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumo.runs.ood_depth import EXTRA_SHARE, METHOD, PASS_RATE, C, DepthScorer, _round, quantile_threshold

__all__ = ["EXTRA_SHARE", "METHOD", "PASS_RATE", "C", "DepthScorer", "fit_depth_scorer", "quantile_threshold"]


def fit_depth_scorer(
    positives: np.ndarray,
    negatives: np.ndarray,
    val: np.ndarray,
    *,
    stages: Sequence[str],
    depth_dims: Sequence[int],
    pass_rate: float = PASS_RATE,
    c: float = C,
    extra_negatives: np.ndarray | None = None,
    extra_share: float = EXTRA_SHARE,
    extra: Mapping[str, Any] | None = None,
) -> DepthScorer:
    """Fit the head on ``positives`` (train images, possibly augmented) vs ``negatives`` (generated) and
    ``extra_negatives`` (real images of another population, e.g. adults), and threshold it on ``val`` (multi-depth
    features, ``N x d`` each). The positives and all negatives weigh the same in total; within the negatives, the
    real ones weigh ``extra_share`` (measured: 0.5 with ``C = 0.01`` generalised best from one adult source to
    another, docs/TRUST.md), however few they are."""
    from sklearn.linear_model import LogisticRegression  # fitting only: scoring needs NumPy alone

    pos, generated = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    real = np.empty((0, pos.shape[1])) if extra_negatives is None else np.asarray(extra_negatives, np.float64)
    neg = np.concatenate([generated, real])
    if not 0 < pass_rate < 1:
        raise ValueError(f"pass_rate must lie in (0, 1), got {pass_rate}")
    if len(pos) < 3 or len(neg) < 3 or len(val) == 0:
        raise ValueError(f"need >= 3 positives, >= 3 negatives and 1 validation image; got {len(pos)}, {len(neg)}, "
                         f"{len(val)}")  # fmt: skip
    mean = np.asarray(_round(pos.mean(axis=0)))
    scale = np.asarray(_round(np.maximum(pos.std(axis=0), 1e-6)))
    x = (np.concatenate([pos, neg]) - mean) / scale
    t = np.r_[np.zeros(len(pos)), np.ones(len(neg))]
    w = np.r_[np.ones(len(pos)), np.ones(len(generated)), np.ones(len(real))]
    if len(real):
        w[len(pos) : len(pos) + len(generated)] = (1 - extra_share) * len(neg) / len(generated)
        w[len(pos) + len(generated) :] = extra_share * len(neg) / len(real)
    head = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x, t, sample_weight=w)
    stub = DepthScorer(mean, scale, head.coef_[0], float(head.intercept_[0]), 0.0, tuple(stages), tuple(depth_dims), {})
    scorer = DepthScorer.from_params(stub.to_params())  # the stored numbers: fitted and loaded scorers agree exactly
    val_scores = scorer.score(val)
    threshold = quantile_threshold(val_scores, pass_rate)
    info = {
        **(extra or {}),
        "pass_rate_target": pass_rate,
        "val_pass_rate": float(np.mean(val_scores <= threshold)),
        "n_positives": len(pos),
        "n_negatives": len(neg),
        "n_val": len(val_scores),
        "c": c,
        "negatives_flagged_rate": float(np.mean(scorer.score(neg) > threshold)),
        **({"real_negatives_flagged_rate": float(np.mean(scorer.score(real) > threshold))} if len(real) else {}),
    }
    return DepthScorer(
        scorer.feature_mean, scorer.feature_scale, scorer.coef, scorer.intercept, threshold, scorer.stages,
        scorer.depth_dims, info,
    )  # fmt: skip

"""Metrics for many bootstrap replicates at once, as integer weights on the original images.

Why hand-written: a replicate that draws image i ``w[i]`` times has exactly the metrics of the full set with
sample weights ``w``, so a ``B x N`` weight matrix turns 1000 replicates into a few matrix-vector products and
cumulative sums. Calling scikit-learn per replicate costs ~10 ms of input validation each (10+ s for 1000).
The formulas follow scikit-learn's definitions (trapezoidal ROC AUC with ties, step-wise average precision,
eps-clipped log loss) and tests check them against scikit-learn replicate by replicate. Undefined values are
NaN, as in :mod:`pneumo.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = np.finfo(np.float64).eps


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _roc_counts(y_bin: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative weighted (true, false) positives per weight row at each distinct threshold, highest first,
    with the (0, 0) start of the ROC curve prepended."""
    order = np.argsort(-score, kind="stable")
    sorted_score = score[order]
    w = weights[:, order].astype(np.float64)
    positive = y_bin[order].astype(np.float64)
    # Cumulative weighted true/false positives at each distinct threshold (last index of each tie run).
    ends = np.r_[np.flatnonzero(np.diff(sorted_score)), sorted_score.size - 1]
    tps = np.cumsum(w * positive, axis=1)[:, ends]
    fps = np.cumsum(w * (1.0 - positive), axis=1)[:, ends]
    zero = np.zeros((w.shape[0], 1))
    return np.hstack([zero, tps]), np.hstack([zero, fps])


def ranking_scores(y_bin: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ROC AUC, average precision) per weight row, for binary labels ``y_bin`` and scores ``score``."""
    return _ranking_from_counts(*_roc_counts(y_bin, score, weights))


def _ranking_from_counts(tps0: np.ndarray, fps0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tps, fps = tps0[:, 1:], fps0[:, 1:]
    total_pos, total_neg = tps[:, -1], fps[:, -1]
    area = np.sum(np.diff(fps0, axis=1) * (tps0[:, 1:] + tps0[:, :-1]) / 2.0, axis=1)
    auc = _ratio(area, total_pos * total_neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tps / (tps + fps))  # 0/0 only where the recall step is 0 too
    recall_steps = np.diff(tps0, axis=1)
    ap = _ratio(np.sum(recall_steps * precision, axis=1), total_pos)
    return auc, ap


def _roc_points_from_counts(
    tps0: np.ndarray, fps0: np.ndarray, level: float, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pneumo.evaluation.metrics.roc_points` per weight row (same arithmetic: rates as count / total)."""
    total_pos, total_neg = tps0[:, -1:], fps0[:, -1:]
    defined = (total_pos[:, 0] > 0) & (total_neg[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, specificity = tps0 / total_pos, 1.0 - fps0 / total_neg
    sensitivity_at = np.where(specificity >= level - tolerance, tpr, -np.inf).max(axis=1)
    specificity_at = np.where(tpr >= level - tolerance, specificity, -np.inf).max(axis=1)
    return np.where(defined, sensitivity_at, np.nan), np.where(defined, specificity_at, np.nan)


def _counts(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return weights @ mask.astype(np.float64)


def binary(
    y: np.ndarray, p_pos: np.ndarray, threshold: float, weights: np.ndarray, *, roc_level: float, roc_tolerance: float
) -> dict[str, np.ndarray]:
    """Scalar metrics of :func:`~pneumo.evaluation.metrics.binary_metrics` for each weight row."""
    pos, pred = y == 1, p_pos >= threshold
    tp, fn = _counts(weights, pos & pred), _counts(weights, pos & ~pred)
    fp, tn = _counts(weights, ~pos & pred), _counts(weights, ~pos & ~pred)
    total = tp + fn + fp + tn
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    counts = _roc_counts(pos, p_pos, weights)  # one sort and cumulative sum for the AUC, AP and ROC points
    auc, ap = _ranking_from_counts(*counts)
    sensitivity_at, specificity_at = _roc_points_from_counts(*counts, roc_level, roc_tolerance)
    clipped = np.clip(p_pos, _EPS, 1 - _EPS)
    nll = -np.where(pos, np.log(clipped), np.log1p(-clipped))
    return {
        "accuracy": _ratio(tp + tn, total),
        "balanced_accuracy": (sensitivity + specificity) / 2,  # NaN unless both classes are drawn
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": auc,
        "pr_auc": ap,
        "sensitivity_at_specificity_90": sensitivity_at,
        "specificity_at_sensitivity_90": specificity_at,
        "brier": _ratio(weights @ (p_pos - pos) ** 2, total),
        "log_loss": _ratio(weights @ nll, total),
        "threshold": np.full(weights.shape[0], float(threshold)),
    }


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=1)
    return _ratio(total, defined.sum(axis=1).astype(np.float64))


def multiclass(
    y: np.ndarray, probs: np.ndarray, class_names: Sequence[str], weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Scalar metrics of :func:`~pneumo.evaluation.metrics.multiclass_metrics` (flattened names)."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    # cm[b, i, j]: weighted images of true class i predicted as j.
    pairs = (y[:, None] * k + pred[:, None]) == np.arange(k * k)[None, :]
    cm = _counts(weights, pairs).reshape(-1, k, k)
    correct = np.trace(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    diag = np.diagonal(cm, axis1=1, axis2=2)
    precision, recall = _ratio(diag, predicted), _ratio(diag, support)
    f1 = _ratio(2 * diag, support + predicted)
    aucs = np.stack([ranking_scores(y == c, probs[:, c], weights)[0] for c in range(k)], axis=1)
    nll = -np.log(np.clip(probs[np.arange(y.size), y], _EPS, 1 - _EPS))
    out = {
        "accuracy": _ratio(correct, support.sum(axis=1)),
        "balanced_accuracy": _nanmean_rows(recall),
        "macro_f1": _nanmean_rows(f1),
        "roc_auc": np.where((support > 0).all(axis=1), aucs.mean(axis=1), np.nan),
        "log_loss": _ratio(weights @ nll, support.sum(axis=1)),
    }
    for c, name in enumerate(class_names):
        out[f"precision/{name}"] = precision[:, c]
        out[f"recall/{name}"] = recall[:, c]
        out[f"f1/{name}"] = f1[:, c]
        out[f"roc_auc_per_class/{name}"] = aucs[:, c]
    return out

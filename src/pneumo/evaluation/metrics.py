"""Classification metrics on plain arrays (scikit-learn does the arithmetic).

Conventions:
- ``y_true`` holds integer class indices ``0..K-1``; ``probs`` is an ``N x K`` matrix of class probabilities.
- For K = 2 the positive class is index 1 (e.g. PNEUMONIA) and is predicted when ``p_pos >= threshold``.
- A metric whose denominator is empty (PPV with no positive predictions, NPV with no negative predictions,
  sensitivity without positives, AUC with a single class present, ...) is ``NaN``, never 0: an undefined value
  must not masquerade as a bad one. ``bootstrap_ci`` skips NaN replicates per metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from pneumo.evaluation import _weighted

NAN = float("nan")
_ROW_SUM_TOLERANCE = 1e-3
ROC_POINT_LEVEL = 0.90
ROC_POINT_TOLERANCE = 1e-9  # so that a rate of exactly 0.9 (e.g. 9/10) counts as reaching 0.90


def _as_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    return y


def _as_probs(probs: Any, n: int, *, renormalise: bool = True) -> np.ndarray:
    """Validated ``N x K`` probabilities, rows renormalised to remove float32 rounding (not to fix logits).

    ``renormalise=False`` for a binary decision ``p >= threshold``: the threshold was chosen on the very values
    that :func:`~pneumo.evaluation.threshold.choose_threshold`, ``predictions.csv`` and the Predictor use, and
    dividing by a row sum of 1 +- 1 ulp moves the image that set the threshold to the other side of it. (Argmax,
    the multi-class decision, is unchanged by the division.)
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
        raise ValueError(f"probs must be N x K with K >= 2 and N = {n}, got shape {p.shape}")
    row_sums = p.sum(axis=1, keepdims=True)
    if (p < 0).any() or not np.allclose(row_sums, 1.0, rtol=0, atol=_ROW_SUM_TOLERANCE):
        raise ValueError("probs must be non-negative with rows summing to 1 (pass probabilities, not logits)")
    return p / row_sums if renormalise else p


def _safe_auc(y_binary: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (sklearn raises or warns there, depending on version)."""
    if y_binary.min(initial=1) == y_binary.max(initial=0):
        return NAN
    return float(roc_auc_score(y_binary, score))


def roc_points(y_binary: np.ndarray, score: np.ndarray, level: float = ROC_POINT_LEVEL) -> tuple[float, float]:
    """``(sensitivity at specificity >= level, specificity at sensitivity >= level)`` read off the ROC curve.

    Threshold-free summaries of the curve, like its AUC: the implicit threshold is set by the labels of the set
    being scored, so they compare models at a clinically relevant point but are not a deployable operating
    point (that one is chosen on validation). NaN unless both classes are present.
    """
    if y_binary.min(initial=1) == y_binary.max(initial=0):
        return NAN, NAN
    fpr, tpr, _ = roc_curve(y_binary, score, drop_intermediate=False)
    specificity = 1.0 - fpr
    # Both sets are non-empty: the curve starts at (0, 0) and ends at (1, 1).
    sensitivity_at = tpr[specificity >= level - ROC_POINT_TOLERANCE].max()
    specificity_at = specificity[tpr >= level - ROC_POINT_TOLERANCE].max()
    return float(sensitivity_at), float(specificity_at)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fn(*args, **kwargs)


def binary_metrics(y_true: Any, p_pos: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a binary classifier whose positive class (label 1) is predicted when ``p_pos >= threshold``.

    Returns floats for accuracy, balanced_accuracy, sensitivity, specificity, ppv, npv, f1, roc_auc,
    pr_auc (average precision), the ROC points ``sensitivity_at_specificity_90`` and
    ``specificity_at_sensitivity_90`` (:func:`roc_points`; they ignore ``threshold``), brier and log_loss, plus
    ``confusion_matrix`` (``[[TN, FP], [FN, TP]]``, rows = true class) and ``threshold``. Undefined values are NaN
    (see module docstring); balanced accuracy is NaN unless both classes are present, since it is the mean of
    sensitivity and specificity.
    """
    y = _as_labels(y_true)
    p = np.asarray(p_pos, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"p_pos shape {p.shape} does not match y_true shape {y.shape}")
    if y.size == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary y_true must contain only 0 and 1")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p_pos must be probabilities in [0, 1]")
    y_pred = (p >= threshold).astype(np.int64)

    cm = confusion_matrix(y, y_pred, labels=[0, 1])
    # One call gives per-class precision (NPV, PPV), recall (specificity, sensitivity) and F1.
    precision, recall, f1, _ = _quiet(
        precision_recall_fscore_support, y, y_pred, labels=[0, 1], average=None, zero_division=np.nan
    )
    specificity, sensitivity = float(recall[0]), float(recall[1])
    both_present = bool(cm[0].sum() and cm[1].sum())
    has_positive = bool(cm[1].sum())
    sensitivity_at_90, specificity_at_90 = roc_points(y, p)
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both_present else NAN,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": float(precision[1]),
        "npv": float(precision[0]),
        "f1": float(f1[1]),
        "roc_auc": _safe_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if has_positive else NAN,
        "sensitivity_at_specificity_90": sensitivity_at_90,
        "specificity_at_sensitivity_90": specificity_at_90,
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "confusion_matrix": cm.astype(int).tolist(),
        "threshold": float(threshold),
    }


def multiclass_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of a K-class classifier predicting ``argmax(probs)``.

    Returns accuracy, balanced_accuracy, per-class ``precision``/``recall``/``f1``/``roc_auc_per_class``
    (dicts keyed by class name; one-vs-rest AUC), macro_f1, macro OvR ``roc_auc``, log_loss and
    ``confusion_matrix`` (rows = true).
    A class absent from ``y_true`` gets NaN recall and NaN AUC; the macro AUC is then NaN too (a macro over a
    subset of classes would not be comparable with other runs), and macro F1 / balanced accuracy average the
    defined per-class values (scikit-learn's convention with ``zero_division=nan``).
    """
    y = _as_labels(y_true)
    p = _as_probs(probs, y.size)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} probability columns")
    if y.size == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}")
    labels = list(range(k))
    y_pred = p.argmax(axis=1)

    precision, recall, f1, _ = _quiet(
        precision_recall_fscore_support, y, y_pred, labels=labels, average=None, zero_division=np.nan
    )
    per_class_auc = [_safe_auc((y == c).astype(np.int64), p[:, c]) for c in labels]
    present = np.bincount(y, minlength=k) > 0
    macro_auc = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)) if present.all() else NAN
    names = [str(n) for n in class_names]

    def by_name(values: Sequence[float]) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, values, strict=True)}

    defined_recall = recall[~np.isnan(recall)]
    defined_f1 = f1[~np.isnan(f1)]
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": float(defined_recall.mean()) if defined_recall.size else NAN,
        "macro_f1": float(defined_f1.mean()) if defined_f1.size else NAN,
        "roc_auc": macro_auc,
        "log_loss": float(log_loss(y, p, labels=labels)),
        "precision": by_name(precision),
        "recall": by_name(recall),
        "f1": by_name(f1),
        "roc_auc_per_class": by_name(per_class_auc),
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).astype(int).tolist(),
    }


def compute_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str], threshold: float | None = None
) -> dict[str, Any]:
    """Dispatch on the number of columns of ``probs``: K = 2 uses ``probs[:, 1]`` and ``threshold``
    (0.5 when None) with :func:`binary_metrics`; K > 2 uses :func:`multiclass_metrics` (argmax; a threshold
    is rejected there because it has no meaning)."""
    y = _as_labels(y_true)
    p = _as_probs(probs, y.size, renormalise=False)
    if p.shape[1] == 2:
        if len(class_names) != 2:
            raise ValueError(f"{len(class_names)} class names for 2 probability columns")
        return binary_metrics(y, p[:, 1], 0.5 if threshold is None else threshold)
    if threshold is not None:
        raise ValueError("a decision threshold only applies to binary tasks")
    return multiclass_metrics(y, p, class_names)


def scalar_metrics(metrics: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """Flatten a metrics dict to ``{name: float}``: nested dicts become ``"recall/NORMAL"``; lists (confusion
    matrices) and non-numeric values are dropped. Used by the bootstrap and by tables."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in scalar_metrics(value, sep).items():
                flat[f"{key}{sep}{sub_key}"] = sub_value
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[str(key)] = float(value)
    return flat


@dataclass(frozen=True)
class MetricSuite:
    """:func:`compute_metrics` as a ``metric_fn`` for :func:`~pneumo.evaluation.bootstrap.bootstrap_ci`.

    Calling it computes the metrics of one set; :meth:`batch` computes the same scalar metrics (flattened
    names, see :func:`scalar_metrics`) for many weighted replicates at once, which the bootstrap uses to run
    1000 replicates in well under a second instead of calling scikit-learn 10 000 times.
    """

    class_names: tuple[str, ...]
    threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))

    def __call__(self, y_true: Any, probs: Any) -> dict[str, Any]:
        return compute_metrics(y_true, probs, self.class_names, self.threshold)

    def batch(self, y_true: Any, probs: Any, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Scalar metrics for each row of ``weights`` (``B x N`` image multiplicities)."""
        y = _as_labels(y_true)
        p = _as_probs(probs, y.size, renormalise=False)
        w = np.asarray(weights, dtype=np.float64)
        if p.shape[1] == 2:
            threshold = 0.5 if self.threshold is None else self.threshold
            return _weighted.binary(
                y, p[:, 1], threshold, w, roc_level=ROC_POINT_LEVEL, roc_tolerance=ROC_POINT_TOLERANCE
            )
        return _weighted.multiclass(y, p / p.sum(axis=1, keepdims=True), self.class_names, w)

"""Choosing the binary operating point on the validation split.

The function only receives validation labels and scores: the test split must never influence the threshold,
otherwise test metrics are optimistically biased. The returned ``t`` is used as ``p_pos >= t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_curve

from pneumo.evaluation.metrics import binary_metrics

ThresholdMethod = Literal["youden", "gap_midpoint", "prior_balanced", "target_sensitivity", "target_specificity"]
TARGETS = ("target_sensitivity", "target_specificity")  # the keys of an operating point that hold a target
METHODS: tuple[str, ...] = ("youden", "gap_midpoint", "prior_balanced", *TARGETS)


def choose_threshold(
    y_val: Any,
    p_val: Any,
    method: ThresholdMethod = "youden",
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> float:
    """Pick a decision threshold from the validation ROC curve.

    - ``"youden"``: maximises Youden's J = sensitivity + specificity - 1; ties go to the largest threshold.
    - ``"gap_midpoint"``: the same decisions on validation as Youden's J, but the threshold sits in the middle (in
      logit space) of the interval of scores that give them, not at its top edge. When validation separates the
      classes perfectly, Youden's J is 1 anywhere between the highest negative and the lowest positive score, and
      its edge is an accident of one image; the middle keeps the largest margin to both classes.
    - ``"prior_balanced"``: the Bayes decision for equal class priors on calibrated probabilities: positive when the
      posterior odds exceed the validation prior odds, i.e. ``t`` = the validation share of positives. It uses no
      ranking of validation images at all, so a saturated validation split cannot push it to either side.
    - ``"target_sensitivity"``: the largest threshold whose validation sensitivity is ``>= target_sensitivity``
      (the most specific operating point meeting the target: screening, where a missed case costs most).
    - ``"target_specificity"``: the smallest threshold whose validation specificity is ``>= target_specificity``
      (the most sensitive operating point meeting the target: confirmation, where false alarms cost most). When
      even the largest validation score is a negative that breaks the target, only a model that never calls an image
      positive reaches it: a ValueError says so.
    """
    y = np.asarray(y_val)
    p = np.asarray(p_val, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y_val {y.shape} and p_val {p.shape} must be 1-D of equal length")
    if not np.isin(y, (0, 1)).all() or np.unique(y).size != 2:
        raise ValueError("validation labels must contain both classes 0 and 1 (and nothing else)")
    # Keep every threshold: with intermediate points dropped, the first one reaching a target sensitivity
    # could be skipped. sklearn's curve predicts positive for score >= threshold, matching our convention.
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # thresholds[0] is +inf (nothing predicted positive)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    # Decide on integer counts: ``tpr - fpr`` or ``1 - fpr`` in floating point can put an exact tie or an exactly
    # reached target on the wrong side (J = 1/5 twice came out as 0.19999999999999996 and 0.20000000000000007).
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    tp, fp = np.rint(tpr * n_pos).astype(np.int64), np.rint(fpr * n_neg).astype(np.int64)

    if method == "prior_balanced":
        return n_pos / (n_pos + n_neg)
    if method in ("youden", "gap_midpoint"):
        best = int(np.argmax(tp * n_neg - fp * n_pos))  # J * P * N; thresholds decrease, argmax takes the largest
        if method == "youden" or best + 1 == len(thresholds):
            return float(thresholds[best])
        # every t in (thresholds[best + 1], thresholds[best]] makes the same validation decisions
        return _logit_midpoint(float(thresholds[best + 1]), float(thresholds[best]))
    if method == "target_sensitivity":
        if not 0 < target_sensitivity <= 1:
            raise ValueError("target_sensitivity must lie in (0, 1]")
        reached = np.flatnonzero(tp / n_pos >= target_sensitivity)
        return float(thresholds[reached[0]])  # always non-empty: the last threshold gives tpr = 1
    if method == "target_specificity":
        if not 0 < target_specificity <= 1:
            raise ValueError("target_specificity must lie in (0, 1]")
        reached = np.flatnonzero((n_neg - fp) / n_neg >= target_specificity)
        if reached.size == 0:
            # Only "never positive" reaches it (sensitivity 0; a threshold above a top score of 1.0 is no probability).
            raise ValueError(
                f"no threshold reaches validation specificity >= {target_specificity:g} while calling any image "
                f"positive: the highest-scored validation image is a negative, and one false positive among {n_neg} "
                f"negatives gives specificity {(n_neg - 1) / n_neg:.4f}. Ask for a lower target, or validate on more "
                "images"
            )
        return float(thresholds[reached[-1]])
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def _logit_midpoint(low: float, high: float) -> float:
    eps = 1e-12
    lo, hi = (np.log(np.clip(v, eps, 1 - eps) / np.clip(1 - v, eps, 1 - eps)) for v in (low, high))
    mid = float(1.0 / (1.0 + np.exp(-(lo + hi) / 2)))
    return mid if low < mid <= high else high  # scores too close for float64 logits: keep the edge


# The rules every binary evaluation reports side by side (threshold chosen on validation, scored on the evaluated
# split), so that the one a run declared can be compared with all others and none can be picked after the fact.
RULES: tuple[tuple[str, dict[str, float]], ...] = (
    ("youden", {}),
    ("gap_midpoint", {}),
    ("prior_balanced", {}),
    ("target_sensitivity", {"target_sensitivity": 0.95}),
    ("target_sensitivity", {"target_sensitivity": 0.99}),
)


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float]:
    scored = binary_metrics(y, p, t)
    return {k: scored[k] for k in ("sensitivity", "specificity", "accuracy")}


def compare_rules(y_val: Any, p_val: Any, y_eval: Any, p_eval: Any) -> list[dict[str, Any]]:
    """Every rule of :data:`RULES` (and the untuned t = 0.5): its threshold chosen on validation, its sensitivity,
    specificity and accuracy on validation and on the evaluated split. Point estimates: a side-by-side view, the
    declared rule's CIs are in the evaluation's primary section."""
    yv, pv = np.asarray(y_val), np.asarray(p_val, dtype=np.float64)
    ye, pe = np.asarray(y_eval), np.asarray(p_eval, dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for method, targets in (("fixed_0.5", {}), *RULES):
        t = 0.5 if method == "fixed_0.5" else choose_threshold(yv, pv, method, **targets)  # type: ignore[arg-type]
        label = method_label({"method": method, **targets}) if method != "fixed_0.5" else "t = 0.5"
        rows.append({"rule": label, "method": method, **targets, "threshold": t,
                     "val": _rates(yv, pv, t), "evaluated": _rates(ye, pe, t)})  # fmt: skip
    return rows


def method_label(op: Mapping[str, Any]) -> str:
    """How a binary threshold was chosen on validation, in words: ``Youden's J``, ``sensitivity >= 0.95``."""
    labels = {"youden": "Youden's J", "gap_midpoint": "middle of Youden's gap", "prior_balanced": "balanced priors"}
    if op.get("method") in labels:
        return labels[op["method"]]
    targets = [f"{k.removeprefix('target_')} >= {op[k]:g}" for k in TARGETS if op.get(k) is not None]
    return ", ".join(targets) or str(op.get("method"))

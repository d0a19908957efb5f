"""Choosing the binary operating point on the validation split.

The function only receives validation labels and scores: the test split must never influence the threshold,
otherwise test metrics are optimistically biased. The returned ``t`` is used as ``p_pos >= t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_curve

ThresholdMethod = Literal["youden", "target_sensitivity", "target_specificity"]
TARGETS = ("target_sensitivity", "target_specificity")  # the keys of an operating point that hold a target


def choose_threshold(
    y_val: Any,
    p_val: Any,
    method: ThresholdMethod = "youden",
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.95,
) -> float:
    """Pick a decision threshold from the validation ROC curve.

    - ``"youden"``: maximises Youden's J = sensitivity + specificity - 1; ties go to the largest threshold.
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

    if method == "youden":
        best = int(np.argmax(tp * n_neg - fp * n_pos))  # J * P * N; thresholds decrease, argmax takes the largest
        return float(thresholds[best])
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
    raise ValueError(f"unknown method {method!r}; use 'youden', 'target_sensitivity' or 'target_specificity'")


def method_label(op: Mapping[str, Any]) -> str:
    """How a binary threshold was chosen on validation, in words: ``Youden's J``, ``sensitivity >= 0.95``."""
    if op.get("method") == "youden":
        return "Youden's J"
    targets = [f"{k.removeprefix('target_')} >= {op[k]:g}" for k in TARGETS if op.get(k) is not None]
    return ", ".join(targets) or str(op.get("method"))

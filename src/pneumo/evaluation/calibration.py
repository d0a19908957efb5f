"""Calibration: top-label ECE, reliability-curve data and temperature scaling (Guo et al., 2017).

Top-label definitions (confidence = max class probability, correct = argmax equals the label) work for any
K >= 2; for binary tasks this is the standard max-probability ECE, not the positive-class reliability curve
of ``sklearn.calibration.calibration_curve`` (which has no top-label mode, hence the small hand-written
binning here). Bins are equal-width on [0, 1] and right-closed: (0, 1/B], ..., ((B-1)/B, 1].
Binary inputs may be given as ``N x 2`` probabilities or as a 1-D positive-class probability.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

log = logging.getLogger(__name__)

# Search range of the temperature (bounded search on log T): far beyond any sensible model.
T_BOUNDS = (1e-2, 1e2)
PLAUSIBLE_T = (0.1, 10.0)  # outside, fit_temperature warns


def _as_prob_matrix(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be N x K (K >= 2) or 1-D binary, got shape {p.shape}")
    return p


def _as_logit_matrix(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        # A single positive-class logit: softmax([0, z]) == sigmoid(z), so temperature acts identically.
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be N x K (K >= 2) or 1-D binary, got shape {z.shape}")
    return z


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of non-empty bins (arrays of equal length) plus all bin edges."""

    bin_edges: np.ndarray
    confidence: np.ndarray  # mean top-label confidence in the bin
    accuracy: np.ndarray  # fraction correct in the bin
    count: np.ndarray  # images in the bin

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "bin_edges": self.bin_edges.tolist(),
            "confidence": self.confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
            "count": self.count.tolist(),
        }


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability data: mean confidence vs. accuracy in equal-width confidence bins."""
    p = _as_prob_matrix(probs)
    y = np.asarray(y_true)
    if y.shape != (p.shape[0],):
        raise ValueError(f"y_true shape {y.shape} does not match {p.shape[0]} predictions")
    if n_bins < 1:
        raise ValueError("n_bins must be positive")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(bin_of, minlength=n_bins)
    conf_sum = np.bincount(bin_of, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bin_of, weights=correct, minlength=n_bins)
    keep = count > 0
    return ReliabilityCurve(
        bin_edges=edges,
        confidence=conf_sum[keep] / count[keep],
        accuracy=correct_sum[keep] / count[keep],
        count=count[keep],
    )


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label ECE = sum over bins of (bin share of images) * |accuracy - mean confidence|."""
    curve = reliability_curve(y_true, probs, n_bins)
    if curve.count.sum() == 0:
        raise ValueError("cannot compute ECE on an empty set")
    weights = curve.count / curve.count.sum()
    return float(np.sum(weights * np.abs(curve.accuracy - curve.confidence)))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(y.size), y].mean())


def fit_temperature(logits: Any, y_true: Any) -> float:
    """Temperature T minimising the mean NLL of ``softmax(logits / T)`` on (validation) logits.

    Optimised over log T with a bounded scalar search, so T stays positive; T > 1 softens over-confident
    predictions. Fit on validation data only and apply the same T to test logits.
    """
    z = _as_logit_matrix(logits)
    y = np.asarray(y_true).astype(np.int64)
    if y.shape != (z.shape[0],) or y.size == 0:
        raise ValueError(f"y_true shape {y.shape} does not match {z.shape[0]} logits")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}")
    if not np.isfinite(z).all():  # one NaN or inf makes every NLL non-finite: the search would return any bound
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise ValueError(f"{bad} of {z.shape[0]} images have non-finite logits: the model diverged or overflowed")
    result = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=tuple(np.log(T_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(np.exp(result.x))
    if not PLAUSIBLE_T[0] <= temperature <= PLAUSIBLE_T[1]:
        # typical fits lie between about 1 and 3; far outside, the validation split is (nearly) separated by these
        # logits, or too small, and the calibration it gives does not carry over to test
        log.warning(
            "temperature %.3g fitted on %d validation images lies outside %s: the validation split is (nearly) "
            "separated by the logits or too small, so this calibration is unreliable",
            temperature, y.size, PLAUSIBLE_T,
        )  # fmt: skip
    return temperature


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` as an ``N x K`` matrix (``N x 2`` for a 1-D binary logit)."""
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    return softmax(_as_logit_matrix(logits) / temperature, axis=1)


def nll(logits: Any, y_true: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)``; what :func:`fit_temperature` minimises."""
    return _nll(_as_logit_matrix(logits), np.asarray(y_true).astype(np.int64), temperature)

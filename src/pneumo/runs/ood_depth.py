"""The stored multi-depth outlier-exposure scorer (``multidepth-oe``): its parameters and scoring, NumPy only.

Method, chosen by measurement (docs/TRUST.md, ``experiments/ood/measure.py``):

1. features: every backbone stage's per-channel spatial mean and standard deviation
   (:mod:`pneumo.models.depth_features`), which see texture, contrast and scale as well as content;
2. a logistic regression (L2, ``C``) separates the run's **train** images (and augmented copies, so that the
   acquisition differences the model is trained to tolerate are not flagged) from outlier-exposure negatives
   (Hendrycks et al. 2019): generated corruptions of train images and synthetic non-X-rays
   (:mod:`pneumo.trust.ood_negatives`), plus any negatives the caller supplies (e.g. adult X-rays);
3. ``score = w . (f - mean) / scale + b`` (higher = less like the training images); the threshold is a quantile of
   the **validation** scores (images the fit never saw): ``pass_rate`` of them pass by construction.

Scoring is NumPy only (a dot product), so predict, serve and an ONNX-only deployment need nothing else; fitting is
:func:`pneumo.trust.ood_depth.fit_depth_scorer`. Parameters are JSON numbers rounded to 7 significant digits, and the
fitted scorer is rebuilt from them, so a round trip through ``checkpoint.json`` or ONNX metadata changes no score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

POOLING = "mean+std"
METHOD = "multidepth-oe"
VERSION = 1
PASS_RATE = 0.99
C = 0.01
EXTRA_SHARE = 0.5
FEATURES = f"depth_features: {POOLING} of every backbone stage's output"
ARRAY_KEYS = ("feature_mean", "feature_scale", "coef")
DERIVED_KEYS = ("method", "version", "features", "n_features", "threshold", "intercept", "stages", "depth_dims")
_DIGITS = 7


def _round(a: np.ndarray) -> list:
    return np.vectorize(lambda v: float(f"{v:.{_DIGITS}g}"), otypes=[float])(np.asarray(a, np.float64)).tolist()


@dataclass(frozen=True)
class DepthScorer:
    """A linear outlier-exposure head on standardised multi-depth features; see the module docstring."""

    feature_mean: np.ndarray  # (d,)
    feature_scale: np.ndarray  # (d,)
    coef: np.ndarray  # (d,)
    intercept: float
    threshold: float
    stages: tuple[str, ...]
    depth_dims: tuple[int, ...]
    extra: Mapping[str, Any]

    @property
    def n_features(self) -> int:
        return int(self.feature_mean.shape[0])

    def contributions(self, depth_features: np.ndarray) -> np.ndarray:
        """``(N, n_stages)``: each stage's share of the score (without the intercept)."""
        f = np.asarray(depth_features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.n_features:
            raise ValueError(f"expected multi-depth features of shape (N, {self.n_features}), got {f.shape}")
        terms = (f - self.feature_mean) / self.feature_scale * self.coef
        edges = np.cumsum([0, *self.depth_dims])
        return np.add.reduceat(terms, edges[:-1], axis=1) if len(f) else np.empty((0, len(self.depth_dims)))

    def score(self, depth_features: np.ndarray) -> np.ndarray:
        return self.contributions(depth_features).sum(axis=1) + self.intercept

    def in_distribution(self, depth_features: np.ndarray) -> np.ndarray:
        return self.score(depth_features) <= self.threshold

    def to_params(self) -> dict[str, Any]:
        return {
            **self.extra,
            "method": METHOD,
            "version": VERSION,
            "features": FEATURES,
            "stages": list(self.stages),
            "depth_dims": list(self.depth_dims),
            "n_features": self.n_features,
            "threshold": float(self.threshold),
            "intercept": float(f"{self.intercept:.{_DIGITS}g}"),
            "feature_mean": _round(self.feature_mean),
            "feature_scale": _round(self.feature_scale),
            "coef": _round(self.coef),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DepthScorer:
        if params.get("method") != METHOD:
            raise ValueError(f"unsupported OOD method {params.get('method')!r} (expected {METHOD!r})")
        if int(params.get("version", 0)) != VERSION:
            raise ValueError(f"unsupported OOD parameter version {params.get('version')!r} (expected {VERSION})")
        arrays = {k: np.asarray(params[k], dtype=np.float64) for k in ARRAY_KEYS}
        dims = tuple(int(d) for d in params["depth_dims"])
        if len({a.shape for a in arrays.values()}) != 1 or arrays["coef"].shape != (sum(dims),):
            raise ValueError("inconsistent OOD parameters (mean, scale, coefficients and stage widths disagree)")
        if not (arrays["feature_scale"] > 0).all():
            raise ValueError("inconsistent OOD parameters (a feature scale is not positive)")
        extra = {k: v for k, v in params.items() if k not in (*ARRAY_KEYS, *DERIVED_KEYS)}
        return cls(
            arrays["feature_mean"],
            arrays["feature_scale"],
            arrays["coef"],
            float(params["intercept"]),
            float(params["threshold"]),
            tuple(str(s) for s in params["stages"]),
            dims,
            extra,
        )


def quantile_threshold(scores: np.ndarray, pass_rate: float) -> float:
    """The smallest score that at least ``pass_rate`` of ``scores`` do not exceed (kept exact, not rounded)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return float(s[max(0, math.ceil(pass_rate * len(s)) - 1)])

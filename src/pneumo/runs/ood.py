"""The stored out-of-distribution scorers: their parameters (``checkpoint.json["ood"]``, ONNX metadata) and scoring.

Two methods, told apart by ``params["method"]``: ``multidepth-oe`` (:mod:`pneumo.runs.ood_depth`, what
:func:`pneumo.trust.ood.fit_ood` fits by default) and the earlier ``mahalanobis-pca-tied`` (:class:`OODScorer`),
which runs fitted with older versions keep using; :func:`check` and :func:`score` serve both.
NumPy only, so that prediction, the service and ONNX-only deployments score without scikit-learn or torch. The
methods and their fitting are described in :mod:`pneumo.trust.ood`, which fits and thresholds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.runs.ood_depth import METHOD as DEPTH_METHOD
from pneumo.runs.ood_depth import DepthScorer

METHOD = "mahalanobis-pca-tied"
VERSION = 1
FEATURES = "forward_head(forward_features(x), pre_logits=True)"
_DIGITS = 7


def _round(a: np.ndarray) -> list:
    """Nested lists of Python floats with ``_DIGITS`` significant digits (short JSON, exact round trip)."""
    return np.vectorize(lambda v: float(f"{v:.{_DIGITS}g}"), otypes=[float])(np.asarray(a, np.float64)).tolist()


@dataclass(frozen=True)
class OODScorer:
    """Mahalanobis distance on ``[PCA coordinates, residual norm]`` of pooled features; see the module docstring."""

    feature_mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    class_means: np.ndarray  # (C, k + 1)
    precision: np.ndarray  # (k + 1, k + 1)
    threshold: float
    extra: Mapping[str, Any]  # provenance, copied into the parameters

    @property
    def n_features(self) -> int:
        return int(self.feature_mean.shape[0])

    def coordinates(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (N, {self.n_features}), got {f.shape}")
        centred = f - self.feature_mean
        z = centred @ self.components.T
        residual = np.linalg.norm(centred - z @ self.components, axis=1)
        return np.column_stack([z, residual])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance to the nearest class, ``(N,)``; higher = less like the training images."""
        u = self.coordinates(features)
        diff = u[:, None, :] - self.class_means[None, :, :]  # (N, C, k+1)
        squared = np.einsum("nci,ij,ncj->nc", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) <= self.threshold

    def to_params(self) -> dict[str, Any]:
        """Plain JSON numbers (and a few strings): what ``checkpoint.json["ood"]`` and ONNX metadata hold."""
        return {
            **self.extra,
            "method": METHOD,
            "version": VERSION,
            "features": FEATURES,
            "n_features": self.n_features,
            "n_components": int(self.components.shape[0]),
            "threshold": float(self.threshold),
            "feature_mean": _round(self.feature_mean),
            "components": _round(self.components),
            "class_means": _round(self.class_means),
            "precision": _round(self.precision),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OODScorer:
        if params.get("method") != METHOD:
            raise ValueError(f"unsupported OOD method {params.get('method')!r} (expected {METHOD!r})")
        if int(params.get("version", 0)) != VERSION:
            raise ValueError(f"unsupported OOD parameter version {params.get('version')!r} (expected {VERSION})")
        arrays = {k: np.asarray(params[k], dtype=np.float64) for k in ARRAY_KEYS}
        k = arrays["components"].shape[0]
        if arrays["precision"].shape != (k + 1, k + 1) or arrays["class_means"].shape[1] != k + 1:
            raise ValueError("inconsistent OOD parameters (components, class means and precision disagree)")
        extra = {key: v for key, v in params.items() if key not in (*ARRAY_KEYS, *DERIVED_KEYS)}
        return cls(
            arrays["feature_mean"],
            arrays["components"],
            arrays["class_means"],
            arrays["precision"],
            float(params["threshold"]),
            extra,
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> OODScorer | None:
        """The scorer of a run's ``checkpoint.json`` (or any dict with an ``"ood"`` entry); None when there is none."""
        params = meta.get("ood")
        return cls.from_params(params) if params else None


ARRAY_KEYS = ("feature_mean", "components", "class_means", "precision")
METHODS = (DEPTH_METHOD, METHOD)
DERIVED_KEYS = ("method", "version", "features", "n_features", "n_components", "threshold")


_CACHE: dict[int, tuple[Mapping[str, Any], OODScorer | DepthScorer]] = {}


def _cached_scorer(params: Mapping[str, Any]) -> OODScorer | DepthScorer:
    """Parsing 10^4-10^5 numbers per call would dominate small predictions; keep the scorer of a params object."""
    hit = _CACHE.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    scorer = DepthScorer.from_params(params) if needs_depth(params) else OODScorer.from_params(params)
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[id(params)] = (params, scorer)
    return scorer


def check(params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (or ``KeyError``/``TypeError``) when this version cannot score with ``params``; called
    once when a model loads, so that a bad entry is found then and not at every prediction."""
    _cached_scorer(params)


def needs_depth(params: Mapping[str, Any]) -> bool:
    """Whether ``params`` score multi-depth features (``multidepth-oe``) rather than the penultimate ones."""
    return params.get("method") == DEPTH_METHOD


def score(
    params: Mapping[str, Any],
    *,
    logits: np.ndarray | None = None,
    features: np.ndarray,
    depth_features: np.ndarray | None = None,
) -> tuple:
    """``(scores, in_distribution)`` for ``pneumo.inference``: float ``(N,)`` and bool ``(N,)``; ``logits`` unused."""
    scorer = _cached_scorer(params)
    if needs_depth(params):
        if depth_features is None:
            raise ValueError(f"the {params['method']} check needs multi-depth features, which this model does not give")
        s = scorer.score(depth_features)
    else:
        s = scorer.score(features)
    return s, s <= scorer.threshold

"""The one place where prediction asks the out-of-distribution detector for a verdict.

The scorer is :mod:`pneumo.runs.ood` (NumPy only)::

    score(params: dict, *, logits: np.ndarray, features: np.ndarray, depth_features: np.ndarray | None)
        -> tuple[np.ndarray, np.ndarray]

``params`` is the run's ``checkpoint.json["ood"]`` entry (JSON, self-contained: it also travels in ONNX metadata);
``logits`` are the raw model outputs ``(N, num_outputs)`` (dummy class included, no temperature);
``features`` the pooled penultimate features ``(N, num_features)`` (``forward_head(pre_logits=True)``);
``depth_features`` every backbone stage's pooled mean and std (:mod:`pneumo.models.depth_features`), None where the
backend has none (an export older than the multi-depth check).
It returns ``(scores, in_distribution)``: float ``(N,)`` (higher = more unusual) and bool ``(N,)``.

``check(params)`` raises when this version cannot use the parameters (another method or version);
``needs_depth(params)`` says whether scoring needs ``depth_features``.

A run without an ``ood`` entry gets ``None`` for both fields. A run with one that this version cannot use (another
method or version) also gets ``None`` (with one warning when the model loads), never a made-up verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from pneumo.runs import ood

log = logging.getLogger(__name__)

OodScoreFn = Callable[..., tuple[np.ndarray, np.ndarray]]


def resolve_scorer(params: dict[str, Any] | None) -> OodScoreFn | None:
    """The scoring function for a model's OOD parameters, or ``None`` when there is nothing to score with."""
    if not params:
        return None
    try:
        ood.check(params)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("the model's OOD parameters cannot be used by this version (%s): OOD fields stay empty", exc)
        return None
    return ood.score


def needs_depth(params: dict[str, Any] | None) -> bool:
    """Whether the detector scores multi-depth features (which an export older than that check does not output)."""
    return bool(params) and ood.needs_depth(params)


def ood_reason(params: dict[str, Any] | None, score: float | None, inside: bool | None) -> str | None:
    """Why an image was flagged, in one sentence; None for an image that passed or a model without a detector."""
    if inside is not False or score is None or not params:
        return None
    threshold = params.get("threshold")
    above = "" if threshold is None else f" above the threshold {float(threshold):.3g}"
    return (
        f"the image is unlike the chest X-rays this model was trained on (out-of-distribution score {score:.3g}"
        f"{above}): its label is unreliable"
    )


def ood_verdicts(
    scorer: OodScoreFn | None,
    params: dict[str, Any] | None,
    logits: np.ndarray,
    features: np.ndarray,
    depth_features: np.ndarray | None = None,
) -> list[tuple[float | None, bool | None]]:
    """``(ood_score, in_distribution)`` per row; ``(None, None)`` rows when the model has no detector."""
    n = len(logits)
    if scorer is None or not params:
        return [(None, None)] * n
    extra = {} if depth_features is None else {"depth_features": depth_features}
    scores, inside = scorer(params, logits=logits, features=features, **extra)
    scores, inside = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(inside, dtype=bool).reshape(-1)
    if len(scores) != n or len(inside) != n:
        raise ValueError(f"the OOD scorer returned {len(scores)}/{len(inside)} values for {n} images")
    return [(float(s), bool(i)) for s, i in zip(scores, inside, strict=True)]

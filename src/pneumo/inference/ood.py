"""The one place where prediction asks the out-of-distribution detector for a verdict.

The scorer is :mod:`pneumo.runs.ood` (NumPy only)::

    score(params: dict, *, logits: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]

``params`` is the run's ``checkpoint.json["ood"]`` entry (JSON, self-contained: it also travels in ONNX metadata);
``logits`` are the raw model outputs ``(N, num_outputs)`` (dummy class included, no temperature);
``features`` the pooled penultimate features ``(N, num_features)`` (``forward_head(pre_logits=True)``).
It returns ``(scores, in_distribution)``: float ``(N,)`` (higher = more unusual) and bool ``(N,)``.

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


def ood_verdicts(
    scorer: OodScoreFn | None, params: dict[str, Any] | None, logits: np.ndarray, features: np.ndarray
) -> list[tuple[float | None, bool | None]]:
    """``(ood_score, in_distribution)`` per row; ``(None, None)`` rows when the model has no detector."""
    n = len(logits)
    if scorer is None or not params:
        return [(None, None)] * n
    scores, inside = scorer(params, logits=logits, features=features)
    scores, inside = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(inside, dtype=bool).reshape(-1)
    if len(scores) != n or len(inside) != n:
        raise ValueError(f"the OOD scorer returned {len(scores)}/{len(inside)} values for {n} images")
    return [(float(s), bool(i)) for s, i in zip(scores, inside, strict=True)]

"""The answer for one image: what ``Predictor.predict`` returns and the service sends as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from pneumo.inference.meta import DISCLAIMER

OOD_WARNING = "this image does not look like the chest X-rays the model was trained on: the prediction is unreliable"


@dataclass(frozen=True)
class PredictionResult:
    """Probabilities over the task classes, the decided label and the out-of-distribution verdict.

    ``threshold``: for binary tasks, the probability of the positive class (``class_names[1]``) at or above which
    the label is positive (the run's validated operating point, else 0.5); ``None`` for 3-class tasks (argmax).
    ``in_distribution``/``ood_score``: ``None`` when the model carries no out-of-distribution detector;
    ``reason``: why the image was flagged (``in_distribution`` False), else ``None``;
    ``warning``: set when ``in_distribution`` is False (the label is unreliable), else ``None``.
    """

    probabilities: dict[str, float]
    label: str
    threshold: float | None = None
    in_distribution: bool | None = None
    ood_score: float | None = None
    source: str = ""
    reason: str | None = None
    warning: str | None = None

    def __post_init__(self) -> None:
        if self.in_distribution is False and self.warning is None:
            object.__setattr__(self, "warning", OOD_WARNING)

    @property
    def disclaimer(self) -> str:
        """Research use only, not a medical device (the HTTP service sends it with every prediction)."""
        return DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Explanation(NamedTuple):
    """Grad-CAM of one image: ``heatmap`` (float32 HxW in [0, 1] at the model size) and ``overlay_png`` (PNG bytes
    of the heatmap over the image, at the original image size, scaled down to at most 2048 px on its longer side)."""

    heatmap: np.ndarray
    overlay_png: bytes

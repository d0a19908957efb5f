"""What each model declares besides its architecture, as timm's pretrained configs and torchvision's weights enums do:
default input size and channels, the normalisation its weights expect, family training defaults.

A weights choice (``"imagenet"``) may carry its own mean/std or input size (:class:`WeightsSpec`), which override the
model's. :func:`pneumo.models.registry.preprocess_contract` is the one place a preprocessing contract is built from a
model's spec and a run's settings; a trained run stores its contract, and everything downstream reads it from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pneumo.data.preprocess import DEFAULT_IMAGE_SIZE, GRAY_MEAN, GRAY_STD

DEFAULT_MODEL = "cnn"


@dataclass(frozen=True)
class WeightsSpec:
    """What a pretrained weights choice changes: its own normalisation and/or input size (``None``: the model's)."""

    mean: float | None = None
    std: float | None = None
    image_size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model's defaults; ``trainable``: offered by ``pneumo train`` (not the GAN's discriminator)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    in_chans: int = 1
    mean: float = GRAY_MEAN
    std: float = GRAY_STD
    batch_size: int = 32
    lr: float = 1e-3
    epochs: int = 10
    weight_decay: float = 1e-4
    weights: Mapping[str, WeightsSpec] = field(default_factory=dict)
    trainable: bool = True

    def with_weights(self, weights: str | Path | None) -> ModelSpec:
        """This spec as the named weights change it; a path or run folder (transfer) keeps the model's own."""
        chosen = self.weights.get(str(weights).lower()) if isinstance(weights, str) else None
        if chosen is None:
            return self
        changed = {k: v for k, v in vars(chosen).items() if v is not None}
        return replace(self, **changed)

    def train_defaults(self) -> dict[str, Any]:
        """The family defaults ``pneumo train`` starts from (below the user's YAML, flags and ``--set``)."""
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "image_size": self.image_size,
            "weight_decay": self.weight_decay,
        }

"""Classifier head shared by every network, and the dummy-class convention.

Dummy class: when training uses an extra "none of the task classes" output (e.g. fed with out-of-distribution or
generated images), the training code builds the model with ``num_classes = n_task + n_dummy``. The dummy outputs are
always the **last** ones (indices ``n_task ..``). At evaluation time :func:`task_logits` drops them, so a softmax over
what is left gives the task-class probabilities conditioned on "the image is one of the task classes"; the dummy
score never enters metrics computed on task labels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear (the timm/torchvision classifier layout)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = self.flatten(self.pool(feats))
        if pre_logits:
            return pooled
        return self.fc(self.drop(pooled))


def task_logits(logits: Tensor, n_task: int) -> Tensor:
    """Keep the first ``n_task`` outputs (the task classes), dropping the trailing dummy output(s)."""
    if not 1 <= n_task <= logits.shape[-1]:
        raise ValueError(f"n_task must be in [1, {logits.shape[-1]}], got {n_task}")
    return logits[..., :n_task]


def task_probs(logits: Tensor, n_task: int) -> Tensor:
    """Softmax over the task logits only: probabilities that sum to 1 over the task classes."""
    return torch.softmax(task_logits(logits, n_task), dim=-1)


def match_channels(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The contract yields 1-channel input; a model built with ``in_chans=3`` gets it replicated to (g, g, g).

    Every forward pass outside training goes through this (evaluation, inference, ONNX export, the trust checks)."""
    in_chans = int(getattr(model, "in_chans", 1))  # a Python int, so ONNX tracing sees no data-dependent branch
    return x if in_chans == 1 else x.expand(-1, in_chans, -1, -1)

"""Optimiser and per-step learning-rate schedule.

The schedule is a pure function of the global step applied to every parameter group's ``base_lr``; hand-written
(rather than ``torch.optim.lr_scheduler``) so that groups added mid-run by gradual unfreezing follow the same curve,
and so that the scheduler's whole state is one integer (the step), trivially saved and resumed.
"""

from __future__ import annotations

import math

import torch

from pneumo.models import PneumoNet, add_unfrozen_params, param_groups
from pneumo.training.config import TrainConfig

ONECYCLE_START = 1 / 25  # torch.optim.lr_scheduler.OneCycleLR's default div_factor
ONECYCLE_END = 1 / (25 * 1e4)  # ... and final_div_factor
ONECYCLE_PCT = 0.3  # ... and pct_start, used when warmup_epochs is 0


def build_optimizer(model: PneumoNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.lr * cfg.backbone_lr_scale)
    for g in groups:
        g["base_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        nesterov = cfg.momentum > 0  # PyTorch refuses Nesterov without momentum; momentum 0 is plain SGD
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def add_unfrozen_group(optimizer: torch.optim.Optimizer, model: PneumoNet, cfg: TrainConfig) -> int:
    """After ``unfreeze_stages``: put the newly trainable parameters in a group at the backbone learning rate."""
    base = cfg.lr * cfg.backbone_lr_scale
    added = add_unfrozen_params(optimizer, model, base)
    if added:
        optimizer.param_groups[-1]["base_lr"] = base
    return added


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of ``base_lr`` at ``step`` (0-based) of ``total_steps``."""
    total_steps = max(1, total_steps)
    if schedule == "onecycle":
        # The OneCycleLR curve (cosine up from lr/25, cosine down to lr/25e4), momentum left alone.
        up = warmup_steps if warmup_steps > 0 else max(1, round(ONECYCLE_PCT * total_steps))
        if step < up:
            return _cos_between(ONECYCLE_START, 1.0, step / up)
        return _cos_between(1.0, ONECYCLE_END, (step - up) / max(1, total_steps - up))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, t))))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply the factor to every group; returns the first group's (the head's) learning rate."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]

"""Transfer-learning freeze policies, optimiser parameter groups and gradual unfreezing.

Policies: ``none`` (train everything), ``backbone`` (train the head only), ``until:<stage>`` (freeze the backbone
stages from the input up to and including ``<stage>``, one of ``model.layer_names()``).

Frozen means frozen: parameters get ``requires_grad=False`` and the BatchNorm layers of frozen stages stay in eval
mode, even after ``model.train()`` (see ``PneumoNet.train``), so their running statistics never move.
"""

from __future__ import annotations

from torch import nn
from torch.optim import Optimizer

from .base import PneumoNet

POLICIES = ("none", "backbone", "until:<stage>")


def _set_frozen(model: PneumoNet, frozen: list[str]) -> None:
    stages = model.stages()
    for name, modules in stages.items():
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(name not in frozen)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.frozen_stages = set(frozen)
    model.train(model.training)  # re-apply eval mode to the BatchNorm of (newly) frozen stages


def stages_for_policy(model: PneumoNet, policy: str) -> list[str]:
    """The stage names ``policy`` freezes, input side first."""
    names = model.layer_names()
    if policy == "none":
        return []
    if policy == "backbone":
        return names
    if policy.startswith("until:"):
        stage = policy.removeprefix("until:")
        if stage not in names:
            raise ValueError(f"unknown stage {stage!r} for {model.arch}; valid: {', '.join(names)}")
        return names[: names.index(stage) + 1]
    raise ValueError(f"unknown freeze policy {policy!r}; valid: {', '.join(POLICIES)}")


def apply_freeze(model: PneumoNet, policy: str) -> list[str]:
    """Set the model's frozen stages to exactly those of ``policy``; returns them (input side first)."""
    frozen = stages_for_policy(model, policy)
    _set_frozen(model, frozen)
    return frozen


def unfreeze_stages(model: PneumoNet, n: int) -> list[str]:
    """Unfreeze the last ``n`` frozen stages (nearest the head first); returns the stages unfrozen.

    Their BatchNorm layers train again. Their parameters are not in an optimiser built while they were frozen:
    call :func:`add_unfrozen_params` afterwards.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    frozen = [name for name in model.layer_names() if name in model.frozen_stages]
    released = frozen[len(frozen) - min(n, len(frozen)) :]
    _set_frozen(model, [name for name in frozen if name not in released])
    return released


def _backbone_and_head(model: PneumoNet) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in model.head.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    return backbone, head


def param_groups(model: PneumoNet, lr: float, backbone_lr: float | None = None) -> list[dict]:
    """Optimiser groups: the head at ``lr``, trainable backbone at ``backbone_lr`` (default ``lr``); frozen excluded."""
    backbone, head = _backbone_and_head(model)
    groups = [
        {"name": "head", "params": head, "lr": lr},
        {"name": "backbone", "params": backbone, "lr": lr if backbone_lr is None else backbone_lr},
    ]
    return [g for g in groups if g["params"]]


def add_unfrozen_params(optimizer: Optimizer, model: PneumoNet, lr: float) -> int:
    """Add the model's trainable parameters that ``optimizer`` does not hold yet (after unfreezing) at ``lr``.

    Returns how many parameters were added (0 adds no group).
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in held]
    if new:
        optimizer.add_param_group({"name": "backbone-unfrozen", "params": new, "lr": lr})
    return len(new)

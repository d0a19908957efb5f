"""Freeze policies: which parameters freeze, BatchNorm statistics, param groups, gradual unfreezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from pneumo.models import (
    PneumoNet,
    add_unfrozen_params,
    apply_freeze,
    get_model,
    param_groups,
    unfreeze_stages,
)

RESNET_STAGE_PREFIXES = {
    "stem": ("conv1.", "bn1."),
    "layer1": ("layer1.",),
    "layer2": ("layer2.",),
    "layer3": ("layer3.",),
    "layer4": ("layer4.",),
}


def _frozen_names(model: PneumoNet) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def _with_prefix(model: PneumoNet, prefixes: tuple[str, ...]) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


@pytest.mark.parametrize("name", ["cnn", "resnet18", "densenet121", "efficientnet_lite0"])
def test_stages_and_head_cover_every_parameter(name: str) -> None:
    model = get_model(name, num_classes=2)
    in_stages = [id(p) for modules in model.stages().values() for m in modules for p in m.parameters()]
    assert len(in_stages) == len(set(in_stages))  # no parameter in two stages
    covered = set(in_stages) | {id(p) for p in model.head.parameters()}
    assert covered == {id(p) for p in model.parameters()}


def test_resnet_policies_freeze_the_right_sets() -> None:
    model = get_model("resnet18", num_classes=2)
    assert model.layer_names() == list(RESNET_STAGE_PREFIXES)
    everything = {name for name, _ in model.named_parameters()}
    head = _with_prefix(model, ("head.",))

    assert apply_freeze(model, "backbone") == list(RESNET_STAGE_PREFIXES)
    assert _frozen_names(model) == everything - head

    assert apply_freeze(model, "until:layer3") == ["stem", "layer1", "layer2", "layer3"]
    prefixes = tuple(p for stage in ["stem", "layer1", "layer2", "layer3"] for p in RESNET_STAGE_PREFIXES[stage])
    assert _frozen_names(model) == _with_prefix(model, prefixes)
    assert _with_prefix(model, ("layer4.",)) and not _frozen_names(model) & _with_prefix(model, ("layer4.",))

    assert apply_freeze(model, "none") == []
    assert _frozen_names(model) == set()


def test_densenet_until_denseblock3() -> None:
    model = get_model("densenet121", num_classes=2)
    frozen = apply_freeze(model, "until:denseblock3")
    assert frozen == ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3"]
    prefixes = ("features.conv0.", "features.norm0.", *(f"features.{s}." for s in frozen[1:]))
    assert _frozen_names(model) == _with_prefix(model, prefixes)
    trainable = _with_prefix(model, ("features.transition3.", "features.denseblock4.", "features.norm5.", "head."))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_bad_policy_and_layer_names() -> None:
    model = get_model("resnet18", num_classes=2)
    with pytest.raises(ValueError, match="valid: stem, layer1, layer2, layer3, layer4"):
        apply_freeze(model, "until:layer5")
    with pytest.raises(ValueError, match="unknown freeze policy"):
        apply_freeze(model, "most")
    with pytest.raises(ValueError, match="block1"):
        apply_freeze(get_model("cnn", num_classes=2), "until:layer2")


def _snapshot(model: PneumoNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_steps(model: PneumoNet, steps: int = 3) -> None:
    torch.manual_seed(1)
    # All parameters handed to the optimiser on purpose, with weight decay and momentum: frozen ones must still stay.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(4, 1, 32, 32) * 2 + 1, torch.tensor([0, 1, 0, 1])
    for _ in range(steps):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "policy", "frozen_prefixes", "trained_prefixes"),
    [
        ("resnet18", "until:layer3", ("conv1.", "bn1.", "layer1.", "layer2.", "layer3."), ("layer4.", "head.")),
        ("cnn", "until:block2", ("features.block1.", "features.block2."), ("features.block3.", "features.block4.")),
        ("cnn", "backbone", ("features.",), ("head.",)),
        (
            "efficientnet_lite0",
            "until:blocks.2",
            ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."),
            ("blocks.3.", "blocks.6.", "conv_head.", "bn2.", "head."),
        ),
    ],
)
def test_frozen_params_and_batchnorm_stats_stay_bit_identical(
    name: str, policy: str, frozen_prefixes: tuple[str, ...], trained_prefixes: tuple[str, ...]
) -> None:
    model = get_model(name, num_classes=2)
    apply_freeze(model, policy)
    model.train()
    frozen_bns = [
        m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and f"{n}.".startswith(frozen_prefixes)
    ]
    assert frozen_bns and all(not bn.training for bn in frozen_bns)
    before = _snapshot(model)
    _train_steps(model)
    after = model.state_dict()
    frozen_keys = [k for k in before if k.startswith(frozen_prefixes)]
    assert any(k.endswith("running_var") for k in frozen_keys) and any(
        k.endswith("num_batches_tracked") for k in frozen_keys
    )
    for key in frozen_keys:
        assert torch.equal(after[key], before[key]), key
    for key in (k for k in before if k.startswith(trained_prefixes)):
        if before[key].is_floating_point():
            assert not torch.equal(after[key], before[key]), key


def test_param_groups_exclude_frozen_and_split_rates() -> None:
    model = get_model("resnet18", num_classes=2)
    apply_freeze(model, "until:layer3")
    groups = param_groups(model, lr=1e-3, backbone_lr=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == 1e-4
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == {id(p) for p in model.layer4.parameters()}
    torch.optim.AdamW(groups)  # a valid optimiser specification

    apply_freeze(model, "backbone")
    assert [g["name"] for g in param_groups(model, lr=1e-3, backbone_lr=1e-4)] == ["head"]
    apply_freeze(model, "none")
    (backbone,) = [g for g in param_groups(model, lr=1e-3) if g["name"] == "backbone"]
    assert backbone["lr"] == 1e-3 and len(backbone["params"]) == len(list(model.parameters())) - 2


def test_gradual_unfreezing() -> None:
    model = get_model("resnet18", num_classes=2)
    apply_freeze(model, "until:layer3")
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr=0.01))
    assert unfreeze_stages(model, 1) == ["layer3"]
    model.train()
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert model.layer3[0].bn1.training and not model.layer2[0].bn1.training
    assert not any(p.requires_grad for p in model.layer2.parameters())
    assert add_unfrozen_params(optimizer, model, lr=0.001) == len(list(model.layer3.parameters()))
    assert optimizer.param_groups[-1]["lr"] == 0.001
    assert add_unfrozen_params(optimizer, model, lr=0.001) == 0

    assert unfreeze_stages(model, 10) == ["stem", "layer1", "layer2"]
    assert all(p.requires_grad for p in model.parameters()) and model.bn1.training
    assert unfreeze_stages(model, 1) == []
    with pytest.raises(ValueError):
        unfreeze_stages(model, -1)

"""The registry and the shared PneumoNet interface, for every registered model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pneumo.models import (
    PneumoCNN,
    PneumoNet,
    get_model,
    list_models,
    register_model,
    registry,
    task_logits,
    task_probs,
)

MODELS = ["cnn", "resnet18", "resnet50", "densenet121", "efficientnet_lite0"]


def test_registry_lists_the_zoo() -> None:
    # other packages may register more models (e.g. the ACGAN discriminator) when imported
    assert set(MODELS) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'; available: ") as info:
        get_model("vgg16", num_classes=2)
    assert all(name in str(info.value) for name in MODELS)


def test_register_model_adds_a_builder_and_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny_cnn")
    def _tiny(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool) -> PneumoNet:
        return PneumoCNN(num_classes, in_chans, drop_rate, widths=(4, 8), depths=(1, 1))

    model = get_model("tiny_cnn", num_classes=3)
    assert (model.arch, model.num_features) == ("tiny_cnn", 8)
    assert "tiny_cnn" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_cnn")(_tiny)


def test_bad_weights_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="no ImageNet weights"):
        get_model("cnn", num_classes=2, weights="imagenet")
    with pytest.raises(FileNotFoundError):
        get_model("resnet18", num_classes=2, weights=tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cnn", num_classes=0)


# resnet50 shares resnet18's wrapper class: two combinations are enough and save a second of CPU per build.
ALL_COMBINATIONS = [(c, k) for c in (1, 3) for k in (2, 3, 4)]
COMBINATIONS = {name: ALL_COMBINATIONS for name in MODELS} | {"resnet50": [(1, 4), (3, 2)]}


@pytest.mark.parametrize("name", MODELS)
def test_interface_shapes_and_composition(name: str) -> None:
    torch.manual_seed(0)
    for in_chans, num_classes in COMBINATIONS[name]:
        model = get_model(name, num_classes=num_classes, in_chans=in_chans).eval()
        assert isinstance(model, PneumoNet)
        assert (model.arch, model.num_classes, model.in_chans) == (name, num_classes, in_chans)
        x = torch.randn(2, in_chans, 32, 32)
        with torch.no_grad():
            feats = model.forward_features(x)
            out = model(x)
            pooled = model.forward_head(feats, pre_logits=True)
            composed = model.forward_head(feats)
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
        assert out.shape == (2, num_classes)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(composed, out)
        torch.testing.assert_close(pooled, feats.mean(dim=(2, 3)))


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_and_inference_mode(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
    cl_model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        cl_out = cl_model(x.contiguous(memory_format=torch.channels_last))
        feats = cl_model.forward_features(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl_out, reference, rtol=1e-4, atol=1e-4)
    assert feats.shape[1] == model.num_features


@pytest.mark.parametrize("name", MODELS)
def test_few_sgd_steps_lower_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=2, drop_rate=0.0).train()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    if name.startswith("efficientnet"):  # its depthwise convolutions swing under SGD + momentum on 4 tiny images
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    assert final < 0.8 * losses[0], (losses, final)


def test_head_dropout_is_active_in_train_mode_only() -> None:
    model = get_model("cnn", num_classes=2, drop_rate=0.5)
    feats = torch.ones(8, model.num_features, 2, 2)
    model.train()
    assert not torch.equal(model.forward_head(feats), model.forward_head(feats))
    model.eval()
    assert torch.equal(model.forward_head(feats), model.forward_head(feats))


def test_reset_classifier_keeps_the_backbone() -> None:
    model = get_model("cnn", num_classes=2).eval()
    x = torch.randn(2, 1, 32, 32)
    feats = model.forward_features(x)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    torch.testing.assert_close(model.forward_features(x), feats)


def test_cnn_is_configurable() -> None:
    model = get_model("cnn", num_classes=2, widths=(8, 16, 32), depths=(1, 1, 3))
    assert model.layer_names() == ["block1", "block2", "block3"]
    assert model.num_features == 32
    # stride-2 first conv then two 2x2 pools: 64 / 8
    assert model.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 32, 8, 8)
    convs = [m for m in model.features.block3.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    with pytest.raises(ValueError):
        get_model("cnn", num_classes=2, widths=(8, 16), depths=(1,))


def test_task_logits_drop_trailing_dummy_outputs() -> None:
    logits = torch.tensor([[2.0, 1.0, 5.0], [0.0, 3.0, -1.0]])  # 2 task classes + 1 dummy
    kept = task_logits(logits, 2)
    assert torch.equal(kept, logits[:, :2])
    probs = task_probs(logits, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(probs, torch.softmax(logits[:, :2], dim=1))
    # the dummy logit (5.0, the largest) does not change the task-class probabilities
    assert probs[0, 0] > 0.7
    with pytest.raises(ValueError):
        task_logits(logits, 4)
    with pytest.raises(ValueError):
        task_logits(logits, 0)

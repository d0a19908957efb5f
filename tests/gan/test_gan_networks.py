"""Generator / discriminator shapes, the classifier export and the registry entry."""

from __future__ import annotations

import pytest
import torch

import pneumo.models.acgan_discriminator  # noqa: F401  (registers "acgan_discriminator")
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.gan import Discriminator, Generator, load_config
from pneumo.models import get_model, save_weights


@pytest.mark.parametrize("size", [64, 128])
def test_generator_and_discriminator_shapes(size: int) -> None:
    torch.manual_seed(0)
    g = Generator(num_classes=3, z_dim=128, image_size=size, base_channels=8, embed_dim=16)
    d = Discriminator(num_classes=3, image_size=size, base_channels=8)
    labels = torch.tensor([0, 1, 2, 1])
    x = g(torch.randn(4, 128), labels)
    assert x.shape == (4, 1, size, size)
    assert x.min() >= -1 and x.max() <= 1  # tanh
    adv, cls = d(x)
    assert adv.shape == (4,) and cls.shape == (4, 3)
    # the label conditions the output: same noise, other class -> other image
    z = torch.randn(1, 128).repeat(3, 1)
    g.eval()
    out = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


@pytest.mark.parametrize("size", [8, 48, 100])
def test_image_size_must_be_a_power_of_two(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(image_size=size)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(image_size=size)


def test_config_refuses_unknown_keys_and_smoothing_with_hinge() -> None:
    with pytest.raises(ValueError, match="learning_rate: unknown setting"):
        load_config(None, ["learning_rate=1e-3"])
    with pytest.raises(ValueError, match="nonsaturating"):
        load_config(None, ["label_smoothing=0.1"])
    cfg = load_config(None, ["loss=nonsaturating", "label_smoothing=0.1", "image_size=128"], epochs=3)
    assert (cfg.loss, cfg.label_smoothing, cfg.image_size, cfg.epochs) == ("nonsaturating", 0.1, 128, 3)


def test_export_gives_the_class_head_logits_on_normalised_input(tmp_path) -> None:
    torch.manual_seed(0)
    d = Discriminator(num_classes=3, image_size=32, base_channels=8)
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    d.train()
    for _ in range(3):  # a few power iterations, so u/v differ from their initial values
        d(x)
    contract = PreprocessContract(image_size=32)
    net = d.export_classifier(contract.mean, contract.std)
    pixels = ((x + 1) * 127.5).round().to(torch.uint8)
    d.eval()
    expected = d((pixels.float() / 127.5) - 1)[1]
    got = net(normalize(pixels, contract))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not any("parametrizations" in k for k in net.state_dict())  # spectral norm baked in

    # the registry builds the same network from the checkpoint's kwargs and loads the weights
    save_weights(net, tmp_path / "best.safetensors")
    kwargs = d.classifier_kwargs(contract.mean, contract.std)
    model = get_model("acgan_discriminator", num_classes=3, in_chans=1, weights=tmp_path, **kwargs).eval()
    torch.testing.assert_close(model(normalize(pixels, contract)), expected, atol=1e-5, rtol=1e-4)


def test_pneumonet_interface() -> None:
    model = get_model("acgan_discriminator", num_classes=3, image_size=64, base_channels=8).eval()
    x = torch.randn(2, 1, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model.forward_head(feats).shape == (2, 3)
    assert model.layer_names() == ["block1", "block2", "block3", "block4", "final"]
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["shape"] = output.shape

    handle = model.cam_target_layer.register_forward_hook(hook)
    model(x)
    handle.remove()
    assert seen["shape"][-2:] == (4, 4)  # Grad-CAM needs a spatial map
    with pytest.raises(ValueError, match="ImageNet"):
        get_model("acgan_discriminator", num_classes=3, weights="imagenet")

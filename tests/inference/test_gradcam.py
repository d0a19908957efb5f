"""Grad-CAM: the heatmap equals the textbook definition on each architecture's target layer, and maps back onto
the original image for every contract geometry."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pneumo.data.preprocess import PreprocessContract, resize_gray
from pneumo.inference import ExplainUnavailable, Predictor
from pneumo.inference.gradcam import OVERLAY_MAX_SIDE, heatmap_to_original, shrink_for_overlay

from .conftest import make_fake_run, xray_like


def reference_grad_cam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, index: int) -> np.ndarray:
    """Selvaraju et al.: ReLU(sum_k mean(d y_c / d A_k) A_k), upsampled to the input, scaled to [0, 1]."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        out = model(x)
    finally:
        handle.remove()
    acts = store["a"]
    (grads,) = torch.autograd.grad(out[0, index], acts)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    cam = cam - cam.min()
    cam = cam / (cam.max() + 1e-7)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / (cam.max() + 1e-7)).detach().numpy()


@pytest.mark.parametrize(
    ("arch", "size"), [("cnn", 32), ("resnet18", 64), ("densenet121", 64), ("efficientnet_lite0", 64)]
)
def test_heatmap_matches_the_definition(tmp_path: Path, arch: str, size: int) -> None:
    predictor = Predictor.load(make_fake_run(tmp_path, arch=arch, image_size=size))
    image = xray_like(70, 52, seed=1)
    prepared = predictor.prepare(image)
    label = predictor.predict_prepared([prepared])[0].label

    heatmap, overlay = predictor.explain(image)
    assert heatmap.shape == (size, size) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0 and heatmap.std() > 0.01

    model = copy.deepcopy(predictor.backend.model).to(memory_format=torch.contiguous_format).eval()
    x = torch.from_numpy(predictor.model_input([prepared.resized]))
    expected = reference_grad_cam(model, model.cam_target_layer, x, predictor.class_names.index(label))
    assert np.abs(heatmap - expected).mean() < 0.03
    assert np.corrcoef(heatmap.ravel(), expected.ravel())[0, 1] > 0.98

    with Image.open(io.BytesIO(overlay)) as img:  # overlay at the ORIGINAL size, in colour
        assert img.format == "PNG" and img.size == (52, 70) and img.mode == "RGB"

    other = next(c for c in predictor.class_names if c != label)
    other_heat, _ = predictor.explain(image, target=other)
    assert not np.allclose(other_heat, heatmap, atol=1e-3)  # the class asked for is the one explained
    # explaining leaves prediction untouched (Grad-CAM hooks live on a private copy)
    assert predictor.predict_prepared([prepared])[0].label == label
    assert not predictor.backend.model._forward_hooks
    # the map needs the gradient at one layer, not the weights': none are computed (1.4x faster on a CPU)
    assert not any(p.requires_grad or p.grad is not None for p in predictor._cam_model.parameters())


def test_target_layers_are_the_recommended_ones(tmp_path: Path) -> None:
    res = Predictor.load(make_fake_run(tmp_path, name="r", arch="resnet18", image_size=64)).backend.model
    dense = Predictor.load(make_fake_run(tmp_path, name="d", arch="densenet121", image_size=64)).backend.model
    assert res.cam_target_layer is res.layer4[-1]
    assert dense.cam_target_layer is dense.features.norm5


@pytest.mark.parametrize("geometry", ["squash", "center-crop", "letterbox"])
def test_heatmap_maps_back_onto_the_original(geometry: str) -> None:
    height, width = 90, 60
    yy, xx = np.mgrid[0:height, 0:width]
    original = (255 * (0.6 * yy / height + 0.4 * xx / width)).astype(np.uint8)  # smooth, asymmetric
    contract = PreprocessContract(image_size=32, geometry=geometry)  # type: ignore[arg-type]
    model_view = resize_gray(original, contract).astype(np.float32) / 255.0
    back = heatmap_to_original(model_view, height, width, contract)
    assert back.shape == (height, width)
    truth = original / 255.0
    if geometry == "center-crop":
        top = (height - width) // 2
        assert np.abs(back[top + 2 : top + width - 2] - truth[top + 2 : top + width - 2]).max() < 0.05
        assert back[: top - 1].max() == 0 and back[top + width + 1 :].max() == 0  # never seen by the model
    else:
        assert np.abs(back[4:-4, 4:-4] - truth[4:-4, 4:-4]).max() < 0.05  # edges blend with padding


def test_overlay_of_a_large_image_is_bounded(tmp_path: Path) -> None:
    predictor = Predictor.load(make_fake_run(tmp_path, image_size=32))
    wide = np.tile(np.linspace(0, 255, 5000).astype(np.uint8), (1200, 1))  # 6 megapixels, 5000 x 1200
    overlay = predictor.explain(wide).overlay_png
    with Image.open(io.BytesIO(overlay)) as img:
        assert img.size == (OVERLAY_MAX_SIDE, round(1200 * OVERLAY_MAX_SIDE / 5000))
    assert shrink_for_overlay(np.zeros((40, 30), np.uint8)).shape == (40, 30)  # small images stay as they are


def test_explain_works_under_inference_mode(tmp_path: Path) -> None:
    predictor = Predictor.load(make_fake_run(tmp_path))
    image = xray_like(40, 40, seed=2)
    expected, _ = predictor.explain(image)
    with torch.inference_mode():
        heatmap, _ = predictor.explain(image)
    np.testing.assert_allclose(heatmap, expected, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_a_single_position_target_layer_is_refused_not_explained_as_empty(tmp_path: Path, arch: str) -> None:
    """At 32 px the ResNet/DenseNet target layer is 1x1: pytorch-grad-cam would return an all-zero map."""
    small = Predictor.load(make_fake_run(tmp_path, name="small", arch=arch, image_size=32))
    assert not small.can_explain and "1x1" in small.explain_unavailable and "32 px" in small.explain_unavailable
    with pytest.raises(ExplainUnavailable, match="cannot localise at 32 px"):
        small.explain(xray_like(40, 40, seed=3))
    assert small.predict(xray_like(40, 40, seed=3)).label in small.class_names  # prediction is unaffected
    assert Predictor.load(make_fake_run(tmp_path, name="large", arch=arch, image_size=64)).can_explain

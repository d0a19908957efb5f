"""An EfficientNet-Lite run through the use paths: ONNX export and onnxruntime prediction, ``predict --cam``, and the
pooled features that the OOD check fits on. Random weights at 64 px: no weights package needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from pneumo.cli.use import register
from pneumo.data.preprocess import PreprocessContract
from pneumo.inference import Predictor
from pneumo.inference.onnx import export_onnx
from pneumo.trust.forward import forward_arrays
from pneumo.trust.ood import fit_scorer

from .conftest import make_fake_run, xray_like

ARCH, SIZE = "efficientnet_lite0", 64


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("lite"), arch=ARCH, image_size=SIZE, dummy_class=True)


def test_the_run_records_the_lite_normalisation(lite_run: Path) -> None:
    contract = Predictor.load(lite_run).meta.contract
    assert (contract.mean, contract.std) == pytest.approx((127 / 255, 128 / 255))


def test_onnx_predictions_and_features_equal_pytorch(lite_run: Path, tmp_path: Path) -> None:
    onnx_path = export_onnx(lite_run, tmp_path / "lite.onnx")
    torch_pred, onnx_pred = Predictor.load(lite_run), Predictor.load(onnx_path)
    images = [xray_like(70, 52, seed=s) for s in range(3)]
    x = torch_pred.model_input([torch_pred.prepare(i).resized for i in images])
    expected, got = torch_pred.run(x), onnx_pred.run(x)
    np.testing.assert_allclose(got.raw_logits, expected.raw_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.features, expected.features, rtol=1e-4, atol=1e-4)
    assert got.features.shape == (3, 1280)
    for a, b in zip(onnx_pred.predict(images), torch_pred.predict(images), strict=True):
        assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-4)


def test_predict_with_cam_writes_an_overlay(lite_run: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    Image.fromarray(xray_like(70, 52, seed=1)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["predict", str(lite_run), str(tmp_path / "a.png"), "--cam", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "c" / "a.cam.png") as overlay:
        assert overlay.size == (52, 70) and overlay.mode == "RGB"


def test_ood_features_are_the_pooled_backbone_and_fit_a_scorer(lite_run: Path) -> None:
    model = Predictor.load(lite_run).backend.model
    contract = PreprocessContract(SIZE, mean=127 / 255, std=128 / 255)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8)
    _, feats = forward_arrays(model, images, contract, batch_size=6, features=True)
    assert feats is not None and feats.shape == (12, model.num_features)
    x = torch.from_numpy(images[:2, None]).float().div(255).sub(contract.mean).div(contract.std)
    with torch.no_grad():
        direct = model.forward_head(model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(feats[:2], direct.numpy(), rtol=1e-4, atol=1e-5)
    scorer = fit_scorer(feats[:8], np.array([0, 1] * 4), feats[8:])
    assert scorer.n_features == model.num_features and np.isfinite(scorer.score(feats)).all()

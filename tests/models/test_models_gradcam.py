"""``cam_target_layer`` works with pytorch-grad-cam for every model: a heatmap of the input's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pneumo.models import get_model


@pytest.mark.parametrize("name", ["cnn", "resnet18", "resnet50", "densenet121", "efficientnet_lite0"])
def test_gradcam_heatmap_has_input_size(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=2).eval()
    x = torch.randn(1, 1, 64, 48)
    with GradCAM(model=model, target_layers=[model.cam_target_layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, 64, 48)
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() > 0.0 and heat.std() > 0.0  # a map, not a constant
    # the hooks are removed afterwards: the model still runs normally
    assert model(x).shape == (1, 2)

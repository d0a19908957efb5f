"""The model zoo: ``get_model("cnn" | "resnet18" | "resnet50" | "densenet121" | "efficientnet_lite0", num_classes=..)``.

Every model is a :class:`PneumoNet` (``forward_features``, ``forward_head``, ``num_features``, ``num_classes``,
``cam_target_layer``, ``layer_names``), so Grad-CAM, feature extraction and freezing need no per-model code.
"""

from __future__ import annotations

from .acgan_discriminator import ACGANDiscriminatorNet
from .base import PneumoNet
from .cnn import PneumoCNN
from .efficientnet import EFFICIENTNET_LITE_SPECS, EfficientNetLite, build_efficientnet_lite, map_lite_keys
from .freeze import add_unfrozen_params, apply_freeze, param_groups, stages_for_policy, unfreeze_stages
from .heads import ClassifierHead, match_channels, task_logits, task_probs
from .registry import check_input_size, get_model, list_models, register_model
from .torchvision_nets import TorchvisionDenseNet, TorchvisionResNet, build_torchvision
from .weights import (
    LoadReport,
    WeightsUnavailableError,
    adapt_first_conv,
    imagenet_state_dict,
    load_weights,
    read_state_dict,
    resolve_imagenet_weights,
    resolve_weights_file,
    save_weights,
)

__all__ = [
    "EFFICIENTNET_LITE_SPECS",
    "ACGANDiscriminatorNet",
    "ClassifierHead",
    "EfficientNetLite",
    "LoadReport",
    "PneumoCNN",
    "PneumoNet",
    "TorchvisionDenseNet",
    "TorchvisionResNet",
    "WeightsUnavailableError",
    "adapt_first_conv",
    "add_unfrozen_params",
    "apply_freeze",
    "build_efficientnet_lite",
    "build_torchvision",
    "check_input_size",
    "get_model",
    "imagenet_state_dict",
    "list_models",
    "load_weights",
    "map_lite_keys",
    "match_channels",
    "param_groups",
    "read_state_dict",
    "register_model",
    "resolve_imagenet_weights",
    "resolve_weights_file",
    "save_weights",
    "stages_for_policy",
    "task_logits",
    "task_probs",
    "unfreeze_stages",
]

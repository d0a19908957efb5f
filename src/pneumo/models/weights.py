"""Reading, adapting and loading weights: ImageNet (torchvision), local files and pneumo run folders.

Grayscale input: the networks take 1-channel images. When 3-channel (RGB) weights meet a 1-channel model, the
first convolution's kernel is summed over its input channels (:func:`adapt_first_conv`, the only place this
happens). For a gray image ``g`` replicated to ``(g, g, g)``, ``sum_c w_c * g == (sum_c w_c) * g``, so the result is
mathematically identical to replicating the image to 3 channels, at a third of the first layer's cost. (Normalise
the gray image with one mean/std for all channels, e.g. ImageNet's channel averages 0.449 / 0.226, for the
equivalence to hold.) The reverse (1-channel weights into a 3-channel model) divides the kernel by 3 and repeats it.

Transfer between tasks (e.g. normal-pneumonia -> bacteria-virus) loads a previous run's backbone: a head whose shape
differs is skipped (and logged), the rest must match. ``load_head=False`` keeps a fresh head even when the shapes
agree: training passes it when the source run was trained for other classes (its NORMAL/PNEUMONIA outputs are no
starting point for bacteria/virus).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

from pneumo.utils.atomic import save_safetensors
from pneumo.utils.errors import PneumoError

log = logging.getLogger(__name__)

RUN_WEIGHT_FILES = ("best.safetensors", "last.safetensors")  # looked up in this order inside a run folder
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")  # common checkpoint layouts wrapping the weights
# torchvision's DenseNet checkpoints use legacy names ("norm.1" for "norm1"); same regex as torchvision.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass
class LoadReport:
    """What :func:`load_weights` did, key by key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first conv, channel count changed
    skipped_head: list[str] = field(default_factory=list)  # head keys whose shape differs (kept fresh)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the source
    unexpected: list[str] = field(default_factory=list)  # in the source, absent from the model


def adapt_first_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a conv kernel ``[out, c, kh, kw]`` to ``in_chans`` input channels (see the module docstring)."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    raise ValueError(f"cannot adapt a first convolution from {have} to {in_chans} input channels")


def resolve_imagenet_weights(arch: str) -> WeightsEnum:
    """torchvision's default ImageNet weights for ``arch`` (resolution only: nothing is downloaded)."""
    return get_model_weights(arch).DEFAULT


class WeightsUnavailableError(PneumoError, FileNotFoundError):
    """Pretrained weights that are neither cached locally nor downloadable (an offline machine)."""


def imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for ``arch``: from the torch hub cache, else downloaded into it (internet).

    Offline, the error names the file to copy into the cache, so a machine without internet can still use them.
    A cached file is checked against the SHA-256 prefix in its name and read with ``weights_only=True``: torch hub
    checks the hash only when it downloads, and unpickles with code execution by default, so a file copied into
    the cache (as the offline message says to) would otherwise be trusted whatever it holds.
    """
    weights = resolve_imagenet_weights(arch)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if cached.is_file():
        _check_hash_in_name(cached, weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as exc:  # urllib's URLError is an OSError
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} are not in the torch hub cache and could not be downloaded ({exc}); "
            f"copy {weights.url} to {cached} (or set TORCH_HOME), or pass --weights PATH"
        ) from exc
    except Exception as exc:  # weights_only refused it (pickle.UnpicklingError), or it is not a checkpoint at all
        raise ValueError(
            f"{cached}: not a plain weights file ({type(exc).__name__}: {exc}); delete it, then download "
            f"{weights.url} again"
        ) from exc


_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torchvision's file names end in the SHA-256 prefix


def _check_hash_in_name(path: Path, url: str) -> None:
    from pneumo.utils.digest import file_sha256

    expected = _HASH_IN_NAME.search(path.name)
    if expected and not file_sha256(path).startswith(expected.group(1)):
        raise ValueError(
            f"{path}: its SHA-256 does not start with {expected.group(1)}, as its name says (a corrupt, truncated or "
            f"substituted file); delete it, then download {url} again"
        )


def resolve_weights_file(source: str | Path) -> Path:
    """A weights file, or the ``best``/``last`` safetensors file of a pneumo run folder."""
    path = Path(source)
    if path.is_dir():
        for name in RUN_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} is a folder without {' or '.join(RUN_WEIGHT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    return path


def read_state_dict(source: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, ``.pth``/``.pt`` (``weights_only=True``) or a run folder."""
    path = resolve_weights_file(source)
    if path.suffix == ".safetensors":
        state = load_file(path, device="cpu")
    elif path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"unsupported weights file {path.name}: use .safetensors, .pth or .pt")
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, Tensor]:
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}} at most
        if isinstance(state, dict) and not all(isinstance(v, Tensor) for v in state.values()):
            nested = next((state[k] for k in _NESTED_KEYS if isinstance(state.get(k), dict)), None)
            if nested is None:
                break
            state = nested
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _normalise_keys(state: dict[str, Tensor], classifier: str) -> dict[str, Tensor]:
    """Map foreign key layouts onto ours: DataParallel prefix, torchvision legacy and classifier names."""
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {_DENSENET_LEGACY.sub(r"\1\2", k): v for k, v in state.items()}
    if classifier:  # torchvision's "fc." / "classifier." is our "head.fc."
        prefix = f"{classifier}."
        state = {"head.fc." + k.removeprefix(prefix) if k.startswith(prefix) else k: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, source: str | Path | dict[str, Tensor], *, load_head: bool = True) -> LoadReport:
    """Load matching weights into ``model``; adapt the first conv's channels; skip a head of another shape (or any
    head, with ``load_head=False``).

    Raises ``ValueError`` when nothing matched or when a backbone tensor has an incompatible shape (weights of
    another architecture). Missing and unexpected keys are logged as warnings and listed in the report.
    """
    if isinstance(source, dict):
        state, name = source, "<state dict>"
    else:
        state, name = read_state_dict(source), str(source)
    state = _normalise_keys(state, getattr(model, "classifier", ""))
    report = LoadReport(source=name)
    own = model.state_dict()
    first_conv = getattr(model, "first_conv", "")
    to_load: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if key.startswith("head.") and not load_head:
            report.skipped_head.append(key)
        elif value.shape == target.shape:
            to_load[key] = value
            report.loaded.append(key)
        elif key == f"{first_conv}.weight" and value.shape[:1] + value.shape[2:] == target.shape[:1] + target.shape[2:]:
            to_load[key] = adapt_first_conv(value, target.shape[1])
            report.adapted.append(key)
        elif key.startswith("head."):
            report.skipped_head.append(key)
        else:
            mismatched.append(f"{key}: {tuple(value.shape)} in source vs {tuple(target.shape)} in model")
    # BatchNorm's step counter is absent from files saved before PyTorch 0.4 (torchvision's DenseNet weights) and
    # is not a weight: its absence is no reason for a warning
    report.missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    if mismatched:
        raise ValueError(f"{name}: incompatible shapes (another architecture?):\n  " + "\n  ".join(mismatched))
    if not any(not k.startswith("head.") for k in [*report.loaded, *report.adapted]):
        # a head alone (say, a CNN run's 2-class bias into a ResNet) is not a transfer: the backbone stays random
        raise ValueError(
            f"{name}: no backbone weight matched the model (another architecture?); refusing to continue with "
            "random weights"
        )
    model.load_state_dict(to_load, strict=False)
    _log_report(report)
    return report


def _log_report(report: LoadReport) -> None:
    log.info("loaded %d tensors from %s", len(report.loaded) + len(report.adapted), report.source)
    if report.adapted:
        log.info("adapted the first convolution's input channels: %s", ", ".join(report.adapted))
    if report.skipped_head:
        log.info("kept a fresh head (other shape or other classes): skipped %s", ", ".join(report.skipped_head))
    if report.missing:
        log.warning("%d keys missing from %s: %s", len(report.missing), report.source, _short(report.missing))
    if report.unexpected:
        log.warning("%d unexpected keys in %s: %s", len(report.unexpected), report.source, _short(report.unexpected))


def _short(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... (+{len(keys) - limit})" if len(keys) > limit else "")


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` to a ``.safetensors`` file atomically (what :func:`load_weights` reads)."""
    save_safetensors(path, {k: v.cpu() for k, v in model.state_dict().items()})
    return Path(path)

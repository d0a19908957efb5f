"""The preprocessing contract: decoded grayscale -> square uint8 of the model size -> normalised float tensor.

It is defined here once and travels with every model (checkpoint and ONNX metadata), so training, evaluation,
predict and serve cannot disagree.

Default geometry is ``squash``: the whole image resized to S x S with Pillow BILINEAR, aspect ratio not kept. The
shared 224 px copy of the Kermany data was made exactly so, as most published pipelines for this dataset do; a model
trained on it must see a raw, non-square X-ray at predict time the same way. ``center-crop`` (central square) and
``letterbox`` (pad to square with black) are options recorded in the contract. NORMAL originals are squarer than
PNEUMONIA ones (width/height about 1.25 vs 1.5), so the squash distorts the classes differently: a possible shortcut,
measured by ``pneumo audit``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from pneumo.data.decode import ImageInput, decode_image

if TYPE_CHECKING:  # torch is not needed at run time here: ONNX-only prediction imports this module without it
    import torch

Geometry = Literal["squash", "center-crop", "letterbox"]
_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}

# The defaults of a model's spec (pneumo.models.spec), which may declare its own: the average of ImageNet's RGB
# statistics, consistent with an ImageNet first conv whose RGB weights are summed for 1-channel input.
GRAY_MEAN = 0.449
GRAY_STD = 0.226
# The one default model size (px): every model's spec starts from it, and so do `pneumo train` and `pneumo data cache`.
DEFAULT_IMAGE_SIZE = 128


@dataclass(frozen=True)
class PreprocessContract:
    """Everything needed to turn a file into the model's input; serialised with every model."""

    image_size: int = DEFAULT_IMAGE_SIZE
    geometry: Geometry = "squash"
    interpolation: str = "bilinear"
    mean: float = GRAY_MEAN
    std: float = GRAY_STD
    version: int = 1

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.geometry not in ("squash", "center-crop", "letterbox"):
            raise ValueError(f"unknown geometry {self.geometry!r}")
        if self.interpolation not in _FILTERS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {sorted(_FILTERS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def fingerprint(self) -> str:
        """Identifies the pixels this contract produces (mean/std act later and do not change the cache)."""
        key = {k: v for k, v in self.to_dict().items() if k not in ("mean", "std")}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def resize_gray(gray: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Bring a grayscale uint8 HxW array to S x S uint8 by the contract's geometry."""
    img = Image.fromarray(gray, mode="L")
    size = contract.image_size
    w, h = img.size
    if contract.geometry == "center-crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif contract.geometry == "letterbox":
        # the longer side to S first, then black bars: padding first would need a max(w, h)^2 canvas, gigabytes
        # for a 40000 x 25 image that the pixel limit lets through
        scale = size / max(w, h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(
            img.resize(inner, _FILTERS[contract.interpolation]), ((size - inner[0]) // 2, (size - inner[1]) // 2)
        )
        img = canvas
    if img.size != (size, size):
        img = img.resize((size, size), _FILTERS[contract.interpolation])
    return np.asarray(img, dtype=np.uint8)


def preprocess_image(source: ImageInput, contract: PreprocessContract) -> np.ndarray:
    """Decode and resize one input: the uint8 S x S array that the cache stores."""
    return resize_gray(decode_image(source), contract)


def normalize(batch: torch.Tensor, contract: PreprocessContract) -> torch.Tensor:
    """uint8 (N, 1, S, S) or (N, S, S) -> float32 (N, 1, S, S) normalised model input, on the batch's device."""
    if batch.ndim == 3:
        batch = batch.unsqueeze(1)
    return batch.float().div_(255.0).sub_(contract.mean).div_(contract.std)


def normalize_array(batch: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """:func:`normalize` in NumPy, for prediction without PyTorch (ONNX). The same float32 operations in the same
    order, so both give identical values for every uint8 input (tested on all 256)."""
    if batch.ndim == 3:
        batch = batch[:, None]
    x = batch.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(contract.mean)) / np.float32(contract.std)

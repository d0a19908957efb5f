"""Batch augmentation on the training device: per-sample random parameters, drawn from an explicit generator.

Images arrive as uint8 (N, 1, S, S) and leave as uint8 of the same shape (then :func:`pneumo.data.preprocess.normalize`
runs, exactly as at evaluation time). All random numbers come from the ``generator`` argument; the engine seeds it
from (seed, epoch, step, rank), so the augmentation of every step is reproducible and a resumed run sees the same
images as an uninterrupted one.

The geometric part is hand-written with ``affine_grid``/``grid_sample`` because torchvision's ``RandomAffine`` draws
one set of parameters per call (the whole batch would move together) and a Python loop over samples is slow on GPU;
one batched resampling covers rotation, scale, translation and aspect jitter, and stays on the device.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Training-time augmentation, applied per sample on the training device. The heart is on the image's right
    (patient's left), so horizontal flips are off by default: they would create anatomically impossible images."""

    enabled: bool = True
    rotation: float = Field(7.0, ge=0, le=180, description="max rotation in degrees")
    translate: float = Field(0.05, ge=0, lt=0.5, description="max shift as a fraction of the image size")
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    clahe: bool = False
    clahe_p: float = Field(0.5, ge=0, le=1)
    hflip: bool = False

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {v}")
        return v


class AcquisitionAugmentConfig(_Strict):
    """Simulated acquisition differences (other scanners, exports, crops), for robustness. Off by default.

    Each effect is applied to a sample with its probability ``p_*``; parameters are drawn uniformly from the ranges.
    """

    enabled: bool = False
    p_resample: float = Field(0.3, ge=0, le=1)
    resample_factor: tuple[float, float] = (0.35, 0.9)  # down to factor x size, then back up
    p_blur: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.3, 1.5)  # in pixels at the model size
    p_sharpen: float = Field(0.2, ge=0, le=1)
    sharpen_amount: tuple[float, float] = (0.3, 1.5)
    p_noise: float = Field(0.3, ge=0, le=1)
    noise_std: tuple[float, float] = (0.005, 0.04)  # on the [0, 1] intensity scale
    p_jpeg: float = Field(0.3, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (30, 95)
    p_aspect: float = Field(0.3, ge=0, le=1)
    aspect_jitter: float = Field(0.15, ge=0, lt=0.5)  # log-uniform width/height factor in [1/(1+a), 1+a]
    p_border: float = Field(0.2, ge=0, le=1)
    border_max: float = Field(0.08, ge=0, lt=0.5)  # max masked band per side, as a fraction of the size

    @field_validator("resample_factor", "blur_sigma", "sharpen_amount", "noise_std", "jpeg_quality")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"expected (low, high) with 0 <= low <= high, got {v}")
        return v

    @field_validator("resample_factor")
    @classmethod
    def _factor(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"resample_factor must lie in (0, 1], got {v}")
        return v

    @field_validator("jpeg_quality")
    @classmethod
    def _quality(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100:
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {v}")
        return v


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _chance(n: int, p: float, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device) < p


def to_unit(images: Tensor) -> Tensor:
    return images.to(torch.float32).div_(255.0)


def to_uint8(x: Tensor) -> Tensor:
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


class BatchAugmenter:
    """Training augmentation (``augment``) and simulated acquisition differences (``acquisition_augment``)."""

    def __init__(self, augment: AugmentConfig, acquisition: AcquisitionAugmentConfig) -> None:
        self.aug = augment
        self.acq = acquisition

    @property
    def active(self) -> bool:
        return self.aug.enabled or self.acq.enabled

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not self.active:
            return images
        x = to_unit(images)
        if self.aug.enabled and self.aug.clahe:
            x = self._clahe(x, generator)
        if self.acq.enabled:
            x = self._acquisition(x, generator)
        x = self._affine(x, generator)
        if self.acq.enabled:
            x = self._border_mask(x, generator)
        if self.aug.enabled:
            x = self._intensity(x, generator)
        return to_uint8(x)

    # --- geometry -------------------------------------------------------------------------------------------------
    def _affine(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, dev = x.shape[0], x.device
        angle = torch.zeros(n, device=dev)
        scale = torch.ones(n, device=dev)
        shift = torch.zeros(n, 2, device=dev)
        aspect = torch.ones(n, device=dev)
        if self.aug.enabled:
            angle = _uniform(n, -self.aug.rotation, self.aug.rotation, g, dev) * (math.pi / 180)
            scale = _uniform(n, *self.aug.scale, g, dev)
            # A shift of a fraction f of the size is 2f in grid_sample's [-1, 1] coordinates.
            shift = _uniform(2 * n, -self.aug.translate, self.aug.translate, g, dev).view(n, 2) * 2
        if self.acq.enabled and self.acq.aspect_jitter > 0:
            log_a = math.log1p(self.acq.aspect_jitter)
            ratio = torch.exp(_uniform(n, -log_a, log_a, g, dev))
            aspect = torch.where(_chance(n, self.acq.p_aspect, g, dev), ratio, aspect)
        if not (self.aug.enabled or (aspect != 1).any()):
            return x
        # Forward map: out = S * R * D * in + t with D = diag(sqrt(a), 1/sqrt(a)); grid_sample wants its inverse.
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx, sy = torch.sqrt(aspect) * scale, scale / torch.sqrt(aspect)
        inv = torch.stack(
            [torch.stack([cos / sx, sin / sx], -1), torch.stack([-sin / sy, cos / sy], -1)], dim=1
        )  # D^-1 R^-1 / s, shape (n, 2, 2)
        offset = -(inv @ shift.unsqueeze(-1))
        theta = torch.cat([inv, offset], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # --- intensity ------------------------------------------------------------------------------------------------
    def _intensity(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, dev = x.shape[0], x.device
        # torchvision ColorJitter semantics: brightness multiplies, contrast blends with the image mean.
        b = _uniform(n, 1 - self.aug.brightness, 1 + self.aug.brightness, g, dev).view(n, 1, 1, 1)
        c = _uniform(n, 1 - self.aug.contrast, 1 + self.aug.contrast, g, dev).view(n, 1, 1, 1)
        x = (x * b).clamp_(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean).clamp_(0, 1)
        if self.aug.hflip:
            flip = _chance(n, 0.5, g, dev).view(n, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x

    def _clahe(self, x: Tensor, g: torch.Generator) -> Tensor:
        # No torch CLAHE exists in our dependencies: scikit-image's, on the CPU, for the chosen samples only.
        from skimage.exposure import equalize_adapthist

        chosen = torch.nonzero(_chance(x.shape[0], self.aug.clahe_p, g, x.device)).flatten().tolist()
        if not chosen:
            return x
        x = x.clone()
        for i in chosen:
            img = x[i, 0].detach().cpu().numpy().astype(np.float64)
            x[i, 0] = torch.from_numpy(equalize_adapthist(img, clip_limit=0.01).astype(np.float32)).to(x.device)
        return x

    # --- acquisition ----------------------------------------------------------------------------------------------
    def _acquisition(self, x: Tensor, g: torch.Generator) -> Tensor:
        a, n, dev = self.acq, x.shape[0], x.device
        size = x.shape[-1]
        x = x.clone()
        resample = _chance(n, a.p_resample, g, dev)
        factors = _uniform(n, *a.resample_factor, g, dev)
        for i in torch.nonzero(resample).flatten().tolist():
            small = max(4, round(size * float(factors[i])))
            down = F.interpolate(x[i : i + 1], size=(small, small), mode="bilinear", antialias=True)
            x[i : i + 1] = F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)
        blur = _chance(n, a.p_blur, g, dev)
        sigma = _uniform(n, *a.blur_sigma, g, dev)
        if blur.any():
            x[blur] = gaussian_blur(x[blur], sigma[blur])
        sharpen = _chance(n, a.p_sharpen, g, dev)
        amount = _uniform(n, *a.sharpen_amount, g, dev)
        if sharpen.any():
            s = x[sharpen]
            detail = s - gaussian_blur(s, torch.ones(s.shape[0], device=dev))
            x[sharpen] = (s + amount[sharpen].view(-1, 1, 1, 1) * detail).clamp_(0, 1)
        jpeg = _chance(n, a.p_jpeg, g, dev)
        quality = torch.randint(a.jpeg_quality[0], a.jpeg_quality[1] + 1, (n,), generator=g, device=dev)
        if jpeg.any():
            x = _jpeg(x, jpeg, quality)
        noise = _chance(n, a.p_noise, g, dev).view(n, 1, 1, 1)
        std = _uniform(n, *a.noise_std, g, dev).view(n, 1, 1, 1)
        gauss = torch.randn(x.shape, generator=g, device=dev)
        return torch.where(noise, x + std * gauss, x).clamp_(0, 1)

    def _border_mask(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, dev, size = x.shape[0], x.device, x.shape[-1]
        chosen = _chance(n, self.acq.p_border, g, dev).view(n, 1)
        widths = _uniform(4 * n, 0, self.acq.border_max, g, dev).view(n, 4) * size * chosen
        pos = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
        rows = (pos.view(1, -1) > widths[:, 0:1]) & (pos.view(1, -1) < size - widths[:, 1:2])
        cols = (pos.view(1, -1) > widths[:, 2:3]) & (pos.view(1, -1) < size - widths[:, 3:4])
        keep = (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)
        return x * keep


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image of (n, 1, H, W) with its own sigma: a separable grouped convolution (one kernel per image)."""
    n = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    pos = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(pos.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")  # (1, n, H+2r, W+2r)
    y = F.conv2d(y, kernel.view(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, kernel.view(n, 1, -1, 1), groups=n)
    return y.transpose(0, 1)


def _jpeg(x: Tensor, chosen: Tensor, quality: Tensor) -> Tensor:
    # JPEG round trips with Pillow on the CPU (torchvision.io's codecs are deprecated), one per chosen image.
    x = x.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        buf = io.BytesIO()
        Image.fromarray(to_uint8(x[i, 0]).cpu().numpy()).save(buf, format="JPEG", quality=int(quality[i]))
        decoded = np.asarray(Image.open(buf), dtype=np.uint8)
        x[i, 0] = to_unit(torch.from_numpy(decoded.copy())).to(x.device)
    return x


def shuffled_patches(images: Tensor, generator: torch.Generator, grid: int = 4) -> Tensor:
    """Cut each uint8 image into ``grid x grid`` tiles and reassemble them in a random order (per image).

    The tiles keep an X-ray's grey levels and texture but the anatomy is destroyed: "not a chest X-ray of any task
    class". Used as the dummy class where the data has no out-of-task images (normal-pneumonia).
    """
    n, c, h, w = images.shape
    th, tw = h // grid, w // grid
    core = images[:, :, : th * grid, : tw * grid]
    tiles = core.reshape(n, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, th, tw)
    order = torch.argsort(torch.rand(n, grid * grid, generator=generator, device=images.device), dim=1)
    tiles = torch.gather(tiles, 1, order.view(n, -1, 1, 1, 1).expand_as(tiles))
    out = images.clone()
    rebuilt = tiles.reshape(n, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, th * grid, tw * grid)
    out[:, :, : th * grid, : tw * grid] = rebuilt
    return out

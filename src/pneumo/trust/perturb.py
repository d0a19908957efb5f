"""Deterministic test-time perturbations of model-size images: how much of a score survives acquisition changes.

Every perturbation maps one uint8 ``S x S`` image (already through the model's preprocessing contract) to another;
:func:`apply` runs it over a stack with one random generator per image, seeded by ``(seed, image index)``, so a
result never depends on batch size or order. Strengths are fractions of the image size where geometry matters, so
they mean the same at any model size. Training-time acquisition augmentation lives in
:mod:`pneumo.data.augment`; these are fixed, single-strength probes for the audit, written with Pillow/SciPy on
the CPU because they run once over a test split.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from pneumo.trust.regions import regions

ImageFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    fn: ImageFn


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def stretch(factor_x: float, factor_y: float) -> ImageFn:
    """Scale the content by (fx, fy) about the centre and crop back to S x S (no padding): a different squash."""

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = img.shape[0]
        w, h = max(size, round(size * factor_x)), max(size, round(size * factor_y))
        big = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
        top, left = (h - size) // 2, (w - size) // 2
        return np.ascontiguousarray(big[top : top + size, left : left + size])

    return fn


def resample(factor: float) -> ImageFn:
    """Down to ``factor`` of the size (antialiased) and back up: lost resolution, as from a smaller original."""

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = img.shape[0]
        small = max(4, round(size * factor))
        down = Image.fromarray(img).resize((small, small), Image.Resampling.BILINEAR)
        return np.asarray(down.resize((size, size), Image.Resampling.BILINEAR))

    return fn


def blur(sigma_fraction: float) -> ImageFn:
    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_u8(gaussian_filter(img.astype(np.float32), sigma=sigma_fraction * img.shape[0], mode="reflect"))

    return fn


def noise(std: float) -> ImageFn:
    """Additive Gaussian noise, ``std`` on the [0, 1] intensity scale."""

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_u8(img.astype(np.float32) + rng.normal(0.0, std * 255.0, img.shape).astype(np.float32))

    return fn


def jpeg(quality: int) -> ImageFn:
    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        with Image.open(buf) as decoded:
            return np.asarray(decoded.convert("L"))

    return fn


def gamma(value: float) -> ImageFn:
    lut = _to_u8(255.0 * (np.arange(256) / 255.0) ** value)

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return lut[img]

    return fn


def shift(offset: float) -> ImageFn:
    """Add ``offset`` (on the [0, 1] scale) to every pixel, clipped: a brighter or darker exposure."""

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_u8(img.astype(np.float32) + offset * 255.0)

    return fn


def mask(region: str) -> ImageFn:
    """Fill a region (``border`` band or ``centre`` box, equal areas: see :mod:`pneumo.trust.regions`) with the
    image's mean grey, so that the masked area adds no edge of its own beyond the box outline."""

    def fn(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = getattr(regions(img.shape[0]), region)
        out = img.copy()
        out[m] = np.uint8(round(float(img.mean())))
        return out

    return fn


def default_perturbations() -> dict[str, Perturbation]:
    """The audit's probes, by name."""
    items = [
        Perturbation(
            "stretch-x 1.2",
            "content stretched 1.2x horizontally, sides cropped: squashed as if the original were 1.2x squarer",
            stretch(1.2, 1),
        ),
        Perturbation(
            "stretch-y 1.2",
            "content stretched 1.2x vertically, top/bottom cropped: squashed as if the original were 1.2x wider",
            stretch(1, 1.2),
        ),
        Perturbation("resample 0.5", "down to half the size and back up (bilinear)", resample(0.5)),
        Perturbation("resample 0.25", "down to a quarter of the size and back up (bilinear)", resample(0.25)),
        Perturbation("blur", "Gaussian blur, sigma = 0.75 % of the size", blur(0.0075)),
        Perturbation("noise", "Gaussian noise, std 0.03 of the intensity range", noise(0.03)),
        Perturbation("jpeg q30", "JPEG re-encoding at quality 30", jpeg(30)),
        Perturbation("gamma 0.7", "gamma 0.7 (brighter mid-tones)", gamma(0.7)),
        Perturbation("gamma 1.4", "gamma 1.4 (darker mid-tones)", gamma(1.4)),
        Perturbation("brightness +0.1", "+0.1 on every pixel (clipped)", shift(0.1)),
        Perturbation(
            "mask border", "outer 10 % band filled with the mean grey (about 36 % of the area)", mask("border")
        ),
        Perturbation("mask centre", "central box filled with the mean grey (same area as the band)", mask("centre")),
    ]
    return {p.name: p for p in items}


def apply(images: np.ndarray, perturbation: Perturbation | ImageFn, seed: int = 0) -> np.ndarray:
    """Perturb uint8 ``N x S x S`` images; image ``i`` gets ``numpy.random.default_rng([seed, i])``."""
    fn = perturbation.fn if isinstance(perturbation, Perturbation) else perturbation
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = fn(np.ascontiguousarray(img), np.random.default_rng([seed, i]))
    return out


def select(names: Sequence[str] | None) -> list[Perturbation]:
    """The named default perturbations (all when ``names`` is None); unknown names raise with the valid ones."""
    available = default_perturbations()
    if names is None:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; choose from {list(available)}")
    return [available[n] for n in names]

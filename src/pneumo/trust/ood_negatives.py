"""Outlier-exposure negatives for the out-of-distribution check: images that are not pneumo's chest X-rays, made
from nothing but the run's own train images and a random generator (Hendrycks et al. 2019 expose the detector to
such outliers; here they are generated, so that fitting needs no download and no data set beyond the run's).

* :func:`corruptions`: a train image broken in one of ten ways (inverted, rotated, blurred away, drowned in noise,
  shuffled tiles, zoomed into, crushed contrast, tilted, pixelated, phase-scrambled);
* :func:`synthetic_images`: noise, blank, gradient, ring and rendered-text images.

Natural photographs, other modalities and adult X-rays are left to the evaluation, which asks whether the detector
flags what it was never shown.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter, rotate

N_KINDS = 10


def corruptions(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 ``N x S x S`` -> one corrupted copy of each image (kind drawn per image)."""
    rng = np.random.default_rng(seed)
    out = []
    for x in images:
        f = x.astype(np.float64)
        s = f.shape[0]
        kind = rng.integers(0, N_KINDS)
        if kind == 0:
            y = 255 - f
        elif kind == 1:
            y = np.rot90(f, int(rng.integers(1, 4)))
        elif kind == 2:
            y = gaussian_filter(f, rng.uniform(3, 8))
        elif kind == 3:
            y = f + rng.normal(0, rng.uniform(25, 60), f.shape)
        elif kind == 4:
            t = s // 4
            tiles = [f[r : r + t, c : c + t] for r in range(0, 4 * t, t) for c in range(0, 4 * t, t)]
            order = rng.permutation(16)
            y = np.asarray(
                Image.fromarray(
                    np.uint8(np.block([[tiles[order[4 * r + c]] for c in range(4)] for r in range(4)]))
                ).resize((s, s)),
                np.float64,
            )
        elif kind == 5:
            y = np.asarray(
                Image.fromarray(x).crop((s // 4, s // 4, 3 * s // 4, 3 * s // 4)).resize((s, s), Image.BILINEAR),
                np.float64,
            )
        elif kind == 6:
            y = 255 * (f / 255) ** rng.choice([0.25, 4.0])
        elif kind == 7:
            y = rotate(f, rng.uniform(30, 150), reshape=False, mode="constant")
        elif kind == 8:
            small = Image.fromarray(x).resize((12, 12), Image.BILINEAR)
            y = np.asarray(small.resize((s, s), Image.NEAREST), np.float64)
        else:
            y = np.abs(np.fft.ifft2(np.fft.fft2(f) * np.exp(2j * np.pi * rng.random(f.shape))))
        out.append(np.clip(y, 0, 255).astype(np.uint8))
    return np.stack(out) if out else np.empty((0, *images.shape[1:]), np.uint8)


def text_image(seed: int, size: int = 512) -> np.ndarray:
    """Dark words on a light page (a scanned report, a screenshot)."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (size, size), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.integers(14, 40)))
    words = ["chest", "radiograph", "report", "impression", "findings", "normal", "lungs", "pneumonia", "consolidation"]
    y = 10
    while y < size - 30:
        draw.text((10, y), " ".join(rng.choice(words, 6)), fill=int(rng.integers(0, 60)), font=font)
        y += int(rng.integers(24, 48))
    return np.asarray(img)


def synthetic_images(seed: int, size: int = 256) -> dict[str, np.ndarray]:
    """Ten uint8 ``size x size`` images that are plainly not X-rays, named ``kind:what-seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = {
        f"noise:gaussian-{seed}": rng.normal(128, 50, (size, size)),
        f"noise:uniform-{seed}": rng.uniform(0, 255, (size, size)),
        f"noise:salt-pepper-{seed}": (rng.random((size, size)) > 0.5) * 255.0,
        f"noise:smooth-{seed}": 255 * gaussian_filter(rng.random((size, size)), 8) * 4 % 255,
        f"blank:black-{seed}": np.full((size, size), float(seed % 20)),
        f"blank:white-{seed}": np.full((size, size), 255.0 - seed % 20),
        f"blank:grey-{seed}": np.full((size, size), float(60 + (37 * seed) % 140)),
        f"pattern:gradient-{seed}": 255 * (xx if seed % 2 else yy),
        f"pattern:rings-{seed}": 127 + 127 * np.sin(40 * np.hypot(xx - 0.5, yy - 0.5) + seed),
        f"text:rendered-{seed}": text_image(seed, size),
    }
    return {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in out.items()}

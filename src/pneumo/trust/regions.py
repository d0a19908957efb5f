"""Image regions shared by the cues, the masking perturbations and the Grad-CAM energy shares.

All are fractions of the (square) model-size image, so they mean the same thing at 32 px and at 224 px:

* ``border``: the outer band, ``BORDER`` of the side on every edge, where collimation edges, text markers
  ("L"/"R", dates) and scanner labels sit;
* ``corners``: the four ``CORNER`` x ``CORNER`` squares (inside the border band), where markers usually are;
* ``centre``: the central square with the same area as the border band (side about 60 % of the image at
  ``BORDER = 0.1``), mostly the lung fields and mediastinum of a squashed PA/AP chest film.

Equal areas (about 36 % of the image each) mean that masking one or the other removes as many pixels, and that a
uniform Grad-CAM map puts the same share of its energy into each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BORDER = 0.1
CORNER = 0.1


@dataclass(frozen=True)
class Regions:
    """Boolean ``S x S`` masks of one image size."""

    border: np.ndarray
    corners: np.ndarray
    centre: np.ndarray

    def area(self, name: str) -> float:
        return float(getattr(self, name).mean())


def _band(size: int, fraction: float) -> int:
    return max(1, round(size * fraction))


def regions(size: int, border: float = BORDER, corner: float = CORNER) -> Regions:
    """The masks for an ``size x size`` image (at least one pixel wide each)."""
    b, c = _band(size, border), _band(size, corner)
    border_mask = np.ones((size, size), dtype=bool)
    border_mask[b : size - b, b : size - b] = False
    corner_mask = np.zeros((size, size), dtype=bool)
    for rows in (slice(0, c), slice(size - c, size)):
        for cols in (slice(0, c), slice(size - c, size)):
            corner_mask[rows, cols] = True
    side = round(size * float(np.sqrt(border_mask.mean())))  # same area as the band, to a pixel row
    lo = (size - side) // 2
    hi = lo + side
    centre_mask = np.zeros((size, size), dtype=bool)
    centre_mask[lo:hi, lo:hi] = True
    return Regions(border_mask, corner_mask, centre_mask)

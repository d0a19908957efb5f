"""Fixtures of the training tests: small configs on the synthetic dataset and an easy blob dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pneumo.training.config import TrainConfig, build_config


@pytest.fixture
def make_cfg(synthetic_data: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    """A tiny, fast config (32 px, batch 8, 3 steps, one epoch) on the synthetic data; keywords override."""

    def make(*overrides: str, **flags: Any) -> TrainConfig:
        base: dict[str, Any] = {
            "data": str(synthetic_data),
            "model": "cnn",
            "image_size": 32,
            "batch_size": 8,
            "epochs": 1,
            "max_steps_per_epoch": 3,
            "progress": False,
            "num_workers": 0,
            "amp": False,  # float32 on every CPU: the bit-for-bit checks (resume, threads) rely on it
            "out": str(tmp_path / "run"),
        }
        base.update(flags)
        return build_config(flags=base, overrides=overrides)

    return make


BLOB_CONTRAST = 0.3
BLOB_RADIUS = (0.05, 0.09)


def _blob_image(rng: np.random.Generator, size: int, lesion: bool) -> np.ndarray:
    """Smooth random background with random exposure; PNEUMONIA adds one bright blob at a random place."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    img = 0.35 + rng.uniform(-0.15, 0.15) + gx * (xx - 0.5) + gy * (yy - 0.5)
    img = img + rng.normal(0, 0.03, (size, size))
    if lesion:
        cx, cy = rng.uniform(0.25, 0.75, 2)
        r = rng.uniform(*BLOB_RADIUS)
        img = img + BLOB_CONTRAST * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An easy dataset in the Kaggle layout (a bright blob anywhere = PNEUMONIA) to check that training learns.

    The procedural ``synthetic_data`` (240 images) is deliberately subtle: a plain Adam loop on it reaches only
    about 0.6 validation AUC after 10 epochs at 64 px, too noisy for a short test. Here a CNN must still localise
    the finding (exposure varies more than the blob changes the mean), but it learns within a few epochs.
    """
    root = tmp_path_factory.mktemp("blobs") / "chest_xray"
    rng = np.random.default_rng(0)
    for split, n_patients in (("train", 80), ("test", 10)):
        for p in range(n_patients):
            lesion = p % 2 == 1
            label = "PNEUMONIA" if lesion else "NORMAL"
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            pid = p if split == "train" else 1000 + p  # patients never cross splits
            for k in range(2):
                name = f"person{pid}_bacteria_{k}.png" if lesion else f"IM-{pid:04d}-{k:04d}.png"
                Image.fromarray(_blob_image(rng, 48, lesion)).save(folder / name)
    return root

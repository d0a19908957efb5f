"""Fixtures of the benchmark tests: one thread (the machine is shared) and a tiny synthetic image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.bench.data import BenchData, image_folder_data, synthetic_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> BenchData:
    """12 synthetic grayscale JPEGs of odd, non-square sizes plus one RGB-encoded JPEG (decoders differ there)."""
    root = synthetic_image_folder(tmp_path_factory.mktemp("bench") / "train", 12, height=70, width=93, seed=3)
    rgb = np.random.default_rng(0).integers(0, 256, size=(61, 83, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "PNEUMONIA" / "person999_virus_1.jpeg", format="JPEG", quality=85)
    return image_folder_data(Path(root))

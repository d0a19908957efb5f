"""Shared fixtures: the real dataset where present, a small synthetic one, and an isolated image cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data"))
KAGGLE = SHARED_DATA / "chest_xray"
ORIGINALS = SHARED_DATA / "chest_xray_originals_subset"

# The tests use tiny models that gain nothing from intra-op threads; on a shared 2-core machine two threads thrash
# (measured 2-5x slower). One thread for the whole session, set once here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PNEUMO_CACHE_DIR"] = str(tmp_path_factory.mktemp("pneumo-cache"))


@pytest.fixture(scope="session")
def kaggle_data() -> Path:
    if not (KAGGLE / "MANIFEST.csv").exists():
        pytest.skip(f"the shared Kermany dataset is absent ({KAGGLE}); set PNEUMO_SHARED_DATA to its parent folder")
    return KAGGLE


@pytest.fixture(scope="session")
def originals_data() -> Path:
    if not (ORIGINALS / "MANIFEST.csv").exists():
        pytest.skip(f"the shared originals subset is absent ({ORIGINALS})")
    return ORIGINALS


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the Kaggle layout, made once per test session."""
    from pneumo.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic"), n=240, seed=0, progress=False)

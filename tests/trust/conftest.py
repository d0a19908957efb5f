"""Trust fixtures: one tiny trained run (cnn, 32 px) on the synthetic data, foreign images, a planted-shortcut set."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def trust_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine trained run; tests that write into a run use :func:`run_copy`."""
    from pneumo.training import build_config, train

    flags = {
        "data": str(synthetic_data),
        "model": "cnn",
        "epochs": 2,
        "image_size": 32,
        "batch_size": 16,
        "max_steps_per_epoch": 8,
        "early_stopping_patience": None,
        "num_workers": 0,
        "progress": False,
        "fit_ood": False,  # the tests fit the detector themselves, and test a run without one
        "out": str(tmp_path_factory.mktemp("trust-runs") / "run"),
    }
    return train(build_config(flags=flags))


@dataclass(frozen=True)
class RunOutputs:
    """The trust run's model and its test split as the audit sees them: images, targets, patients, probabilities."""

    ctx: Any  # pneumo.runs.context.RunContext
    model: Any  # torch.nn.Module
    records: list[Any]
    images: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    probs: np.ndarray


@pytest.fixture(scope="session")
def run_outputs(trust_run: Path) -> RunOutputs:
    from pneumo.runs.context import load_model, open_run, split_images
    from pneumo.trust.forward import forward_arrays, task_probabilities

    ctx = open_run(trust_run)
    model = load_model(ctx, "cpu")
    test = ctx.split("test")
    images = split_images(test)
    raw, _ = forward_arrays(model, images, ctx.contract, device="cpu")
    probs = task_probabilities(raw, len(ctx.class_names))
    groups = np.array(test.groups, dtype=object)
    return RunOutputs(ctx, model, list(test.records), images, np.asarray(test.targets), groups, probs)


@pytest.fixture
def run_copy(trust_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trust_run, tmp_path / "run"))


def rendered_text(width: int = 320, height: int = 200) -> np.ndarray:
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    for i in range(8):
        draw.text((10, 10 + 22 * i), "The quick brown fox jumps over the lazy dog", fill=0)
    return np.asarray(img)


@pytest.fixture(scope="session")
def foreign_images() -> dict[str, np.ndarray]:
    """Clearly foreign inputs, decoded to grayscale: photographs, CT/MR slices, noise, a blank image, text."""
    import pydicom.data
    import skimage.data

    from pneumo.data.decode import decode_image

    images = {
        name: decode_image(getattr(skimage.data, name)()) for name in ("astronaut", "camera", "coffee", "chelsea")
    }
    for name in ("CT_small.dcm", "MR_small.dcm"):
        images[name] = decode_image(pydicom.data.get_testdata_file(name))
    images["uniform noise"] = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    images["blank"] = np.zeros((256, 256), dtype=np.uint8)
    images["rendered text"] = rendered_text()
    return images


@pytest.fixture(scope="session")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planted shortcut in the Kaggle layout: PNEUMONIA images carry a bright square in the top-left corner,
    otherwise both classes are the same smooth noise."""
    root = tmp_path_factory.mktemp("marker") / "chest_xray"
    rng = np.random.default_rng(1)
    for split, n_patients in (("train", 30), ("test", 12)):
        for p in range(n_patients):
            sick = p % 2 == 1
            folder = root / split / ("PNEUMONIA" if sick else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            pid = p if split == "train" else 500 + p
            img = np.clip(rng.normal(110, 25, (40, 40)), 0, 255).astype(np.uint8)
            if sick:
                img[1:4, 1:4] = 255
            name = f"person{pid}_bacteria_1.png" if sick else f"IM-{pid:04d}-0001.png"
            Image.fromarray(img).save(folder / name)
    return root

"""GAN test fixtures: a toy dataset with an easy class signal, an independent classifier for it, one short GAN run.

Toy data instead of ``pneumo.data.synth`` for the learning tests: at the 16-32 px a CPU test can afford, the synthetic
radiographs' classes are barely separable (a small CNN reaches about 55 % on three classes there, barely above the
48 % of always answering "bacteria"), so neither the auxiliary loss nor class control could be checked in seconds.
Here the class is the horizontal position of a bright blob (left = normal, centre = bacteria, right = virus), which a
small CNN learns perfectly; the files use Kaggle names and layout, so the whole data path (discover, patient split,
cache) is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

TOY_SIZE = 32
BLOB_X = {"normal": 0.25, "bacteria": 0.5, "virus": 0.75}
# Small networks: the GAN tests run on 2 shared CPU cores.
TINY = ["g_channels=16", "d_channels=16", "z_dim=32", "embed_dim=16", "batch_size=32", "g_lr=2e-4"]


def toy_image(cls: str, rng: np.random.Generator, size: int = TOY_SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    cx, cy, r = BLOB_X[cls] + rng.normal(0, 0.03), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.14)
    img = 0.2 + 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) + rng.normal(0, 0.05, (size, size))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_toy_dataset(root: Path, n_train: int = 60, n_test: int = 10, seed: int = 0) -> Path:
    """Kaggle layout: ``{train,test}/{NORMAL,PNEUMONIA}``, NORMAL as IM-XXXX-0001.png, others personN_<class>_K.png."""
    rng = np.random.default_rng(seed)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 5000)):
        for cls in BLOB_X:
            folder = root / split / ("NORMAL" if cls == "normal" else "PNEUMONIA")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(offset, offset + n):
                name = f"IM-{i:04d}-0001.png" if cls == "normal" else f"person{i}_{cls}_{i}.png"
                Image.fromarray(toy_image(cls, rng)).save(folder / name)
    return root


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_classifier(toy_data: Path):
    """A small CNN trained on the real toy training images only: the independent judge of class control."""
    from pneumo.data import PreprocessContract, build_split, discover, get_task, make_split, normalize
    from pneumo.models import PneumoCNN

    contract = PreprocessContract(image_size=TOY_SIZE)
    split = build_split("train", make_split(discover(toy_data)), get_task("normal-bacteria-virus"), contract)
    x, y = normalize(split.as_tensor(), contract), torch.from_numpy(split.targets)
    torch.manual_seed(1)
    model = PneumoCNN(3, widths=(8, 16, 32), depths=(1, 1, 1), drop_rate=0.0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(6):
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.preprocess_contract = contract  # as pneumo.runs.checkpoint.load_run sets it on a run's model
    return model.eval()


@pytest.fixture(scope="session")
def gan_run(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six epochs (about 30 steps) of a tiny ACGAN at 32 px on the toy data."""
    from pneumo.gan import load_config, train_gan

    config = load_config(None, [*TINY, f"image_size={TOY_SIZE}", "epochs=6", "sample_every=3"], data=str(toy_data))
    return train_gan(config, tmp_path_factory.mktemp("gan") / "toyrun", progress=False)

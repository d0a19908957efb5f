"""Sampling from a trained ACGAN: tensors, labelled grids, and synthetic training images in the Kaggle layout.

Synthetic images are for the **training split only**. :func:`write_synthetic_dataset` writes nothing but
``DIR/train/{NORMAL,PNEUMONIA}/`` and :func:`synthetic_records` returns records with ``split="train"``: callers add
them to the training records *after* the train/val split is made, so generated images never reach validation or test
(and never decide early stopping, thresholds or reported metrics). File names
``synthetic-<runid>-<class>-<index>.png`` mark them as synthetic and carry the class;
:func:`pneumo.data.records.parse_file_name` reads the class from them and makes each image its own patient.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torchvision.utils import make_grid

from pneumo.data.decode import MIN_SIDE
from pneumo.data.provenance import PROVENANCE_SUFFIX, read_provenance_run, write_provenance
from pneumo.data.records import IMAGE_SUFFIXES, Record, dataset_root, is_synthetic, parse_file_name
from pneumo.data.tasks import get_task
from pneumo.gan.acgan import Generator
from pneumo.gan.checkpoint import GENERATOR_EMA, load_generator
from pneumo.gan.config import TASK
from pneumo.utils.atomic import atomic_path
from pneumo.utils.digest import file_sha256

CLASS_NAMES: tuple[str, ...] = get_task(TASK).class_names  # ("normal", "bacteria", "virus")
_LABEL_FOLDER = {"normal": "NORMAL", "bacteria": "PNEUMONIA", "virus": "PNEUMONIA"}
_GRID_PAD = 2

log = logging.getLogger(__name__)


def label_distribution(targets: Tensor, num_classes: int, mode: str) -> Tensor:
    """The class draw for generated images: the training targets' frequencies (``data``) or ``uniform``."""
    if mode == "uniform":
        return torch.full((num_classes,), 1.0 / num_classes)
    counts = torch.bincount(targets, minlength=num_classes).float()
    return counts / counts.sum()


def standing_statistics(
    generator: Generator, label_probs: Tensor, *, batches: int, batch_size: int, seed: int
) -> Generator:
    """A copy of ``generator`` whose BatchNorm running statistics are the plain average over ``batches`` batches of
    its own outputs (train-mode forward passes, no gradients, a noise stream of its own seed).

    "Standing statistics" (Brock et al. 2019): the EMA generator's weights are an average, while the statistics it
    carries are the live generator's (copied each step), which belong to other weights. On the three 32 px ACGANs of
    the cpu suite they did not help consistently (classifier Frechet distance lower for two, higher for the third;
    RESULTS.md), so they are off by default (``ema_standing_batches: 0``)."""
    standing = copy.deepcopy(generator)
    norms = [m for m in standing.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return standing.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    device = next(standing.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    standing.train()
    with torch.no_grad():
        for _ in range(batches):
            z = torch.randn(batch_size, standing.z_dim, generator=rng)
            labels = torch.multinomial(label_probs, batch_size, replacement=True, generator=rng)
            standing(z.to(device), labels.to(device))
    for m in norms:
        m.momentum = 0.1  # back to the default, as built
    return standing.eval()


def to_uint8(x: Tensor) -> Tensor:
    """Generator output in ``[-1, 1]`` -> uint8 pixels."""
    return ((x.detach().float().cpu() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_gan_range(pixels: Tensor) -> Tensor:
    """uint8 pixels -> float in ``[-1, 1]`` (the inverse of :func:`to_uint8`)."""
    return pixels.float() / 127.5 - 1.0


@torch.no_grad()
def generate(generator: Generator, labels: Sequence[int] | Tensor, *, seed: int = 0, batch_size: int = 256) -> Tensor:
    """uint8 images ``(N, 1, S, S)`` for class indices ``labels``; the same seed gives the same images."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), generator.z_dim, generator=rng)
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = [
        to_uint8(generator(z[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)))
        for i in range(0, len(labels), batch_size)
    ]
    generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 1, generator.image_size, generator.image_size, dtype=torch.uint8)


def class_index(name: str) -> int:
    try:
        return CLASS_NAMES.index(name.lower())
    except ValueError:
        raise ValueError(f"unknown class {name!r}; choose one of {', '.join(CLASS_NAMES)}") from None


def labelled_grid(images: Tensor, row_labels: Sequence[str], per_row: int) -> Image.Image:
    """Images ``(N, 1, S, S)`` uint8 in rows of ``per_row``, each row labelled on the left."""
    grid = make_grid(images.float() / 255.0, nrow=per_row, padding=_GRID_PAD, pad_value=1.0)
    grid_img = Image.fromarray((grid[0].numpy() * 255).round().astype(np.uint8), mode="L")
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(grid_img)
    margin = 8 + max(int(draw.textlength(label, font=font)) for label in row_labels) if row_labels else 0
    canvas = Image.new("L", (grid_img.width + margin, grid_img.height), 255)
    canvas.paste(grid_img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    size = images.shape[-1]
    for i, label in enumerate(row_labels):
        y = _GRID_PAD + i * (size + _GRID_PAD) + size // 2
        draw.text((4, y), label, fill=0, font=font, anchor="lm")
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def class_grid(generator: Generator, per_class: int, *, seed: int = 0) -> Image.Image:
    """One labelled row of ``per_class`` samples per class (fixed noise for a fixed seed)."""
    labels = [c for c in range(len(CLASS_NAMES)) for _ in range(per_class)]
    return labelled_grid(generate(generator, labels, seed=seed), CLASS_NAMES, per_class)


def sample_to_file(
    run_dir: str | Path, out: str | Path, *, class_name: str | None = None, n: int = 64, seed: int = 0
) -> Path:
    """``pneumo gan sample``: a grid of ``n`` samples of one class, or ``n`` per class in rows if no class."""
    generator = load_generator(run_dir)
    if class_name is None:
        return save_png(class_grid(generator, n, seed=seed), out)
    per_row = max(1, math.ceil(math.sqrt(n)))
    images = generate(generator, [class_index(class_name)] * n, seed=seed)
    rows = [class_name.lower()] + [""] * (math.ceil(n / per_row) - 1)
    return save_png(labelled_grid(images, rows, per_row), out)


def generator_digest(run_dir: str | Path) -> str | None:
    """SHA-256 of the EMA generator weights of a GAN run (the images' maker); None when the file is missing."""
    path = Path(run_dir) / GENERATOR_EMA
    return file_sha256(path) if path.is_file() else None


def run_id(run_dir: str | Path) -> str:
    """Lowercase alphanumeric id of a GAN run (its folder name), as the synthetic file-name pattern requires."""
    rid = re.sub(r"[^a-z0-9]", "", Path(run_dir).resolve().name.lower())
    return rid or "gan"


def _per_class_counts(per_class: int | Mapping[str, int]) -> dict[str, int]:
    counts = {c: per_class for c in CLASS_NAMES} if isinstance(per_class, int) else dict(per_class)
    unknown = set(counts) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"unknown class(es) {sorted(unknown)}; choose from {', '.join(CLASS_NAMES)}")
    if any(int(n) < 0 for n in counts.values()):
        raise ValueError(f"per-class counts must be >= 0, got {counts}")
    return {c: int(counts.get(c, 0)) for c in CLASS_NAMES}


def first_real_image(folder: Path) -> Path | None:
    """An image under ``folder`` that ``pneumo gan synth`` did not write (the folder is a real dataset), or None."""
    if not folder.is_dir():
        return None
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and not is_synthetic(path.name) and path.is_file():
            return path
    return None


def write_synthetic_dataset(
    gan_run_dir: str | Path,
    out_dir: str | Path,
    per_class: int | Mapping[str, int],
    *,
    seed: int = 0,
    into_dataset: bool = False,
) -> list[Path]:
    """Write generated PNGs to ``out_dir/train/{NORMAL,PNEUMONIA}/synthetic-<runid>-<class>-<i>.png``.

    Only a ``train/`` folder is written (see the module docstring). Earlier files of the same run id in those folders
    are replaced, so the folder holds exactly the requested images. Same run and seed -> same pixels.
    ``out_dir`` must not hold real images unless ``into_dataset``: generated images in a dataset folder train every
    later run on that folder, a contamination that is easy to forget (``pneumo train`` warns about it).
    """
    counts = _per_class_counts(per_class)
    if not into_dataset and (real := first_real_image(Path(out_dir))):
        raise ValueError(
            f"{out_dir} holds real images (e.g. {real}): generated images written there would join the training "
            "split of every later run on that folder. Write them to a folder of their own (train with "
            "--synthetic-from instead), or pass into_dataset=True (--into-dataset) if that is what you want"
        )
    generator = load_generator(gan_run_dir)
    rid = run_id(gan_run_dir)
    # into a dataset: its own train/ (DATA/chest_xray/train for DATA), else a train/ beside it would hide the real one
    out = (dataset_root(out_dir) if into_dataset else Path(out_dir)) / "train"
    # what the GAN trained on goes with its images, so any later split of a dataset holding them can be checked
    out.mkdir(parents=True, exist_ok=True)
    earlier = read_provenance_run(out / f"synthetic-{rid}{PROVENANCE_SUFFIX}")
    if earlier and earlier != str(Path(gan_run_dir).resolve()):
        log.warning("%s: replacing the images of %s, another GAN run with the same id %r", out, earlier, rid)
    write_provenance(
        out, f"synthetic-{rid}", Path(gan_run_dir), _trained_patients(Path(gan_run_dir)), generator_digest(gan_run_dir)
    )
    for folder in set(_LABEL_FOLDER.values()):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for old in (out / folder).glob(f"synthetic-{rid}-*.png"):
            old.unlink()
    paths: list[Path] = []
    for class_idx, name in enumerate(CLASS_NAMES):
        # one seed per class: changing one class's count leaves the others' images unchanged
        images = generate(generator, [class_idx] * counts[name], seed=seed * 1000 + class_idx)
        for i, pixels in enumerate(images):
            path = out / _LABEL_FOLDER[name] / f"synthetic-{rid}-{name}-{i:05d}.png"
            save_png(_at_least_min_side(Image.fromarray(pixels[0].numpy(), mode="L")), path)
            paths.append(path)
    return paths


def _at_least_min_side(img: Image.Image) -> Image.Image:
    """A 16 px sample repeated to 32 px (each pixel 2x2): decoding refuses images under ``MIN_SIDE`` as no
    radiograph, and whole repeats add no pixel value the generator did not make."""
    factor = math.ceil(MIN_SIDE / min(img.size))
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST) if factor > 1 else img


def _trained_patients(gan_run_dir: Path) -> list[str] | None:
    """Patient ids of the GAN run's train split (its ``split.csv``); None for a folder without one (unknown: images
    written into a dataset are then refused by its later splits)."""
    split = gan_run_dir / "split.csv"
    if not split.is_file():
        return None
    with split.open(newline="") as f:
        return [row["patient_id"] for row in csv.DictReader(f) if row["split"] == "train"]


def synthetic_records(
    gan_run_dir: str | Path, per_class: int | Mapping[str, int], out_dir: str | Path, *, seed: int = 0
) -> list[Record]:
    """Generate images (:func:`write_synthetic_dataset`) and return them as ``split="train"`` records.

    For ``pneumo train --synthetic-from GAN_RUN --synthetic-per-class N|balance``: add these to the train records
    after the split is made; never to val or test.
    """
    records = []
    for path in write_synthetic_dataset(gan_run_dir, out_dir, per_class, seed=seed):
        subtype, patient = parse_file_name(path.name)
        label = path.parent.name
        records.append(Record(path, "train", label, subtype, patient))
    return records

"""Data figures: cache build rate, and images/s delivered by the cache vs by decoding JPEGs every epoch.

The naive pipeline is what a plain torchvision project does: ``ImageFolder`` (PIL decode, RGB) + ``Grayscale`` +
``Resize((S, S))`` + ``ToTensor`` + ``Normalize`` on every access. With the default (squash, bilinear) contract it
yields exactly the pixels of pneumo's cache, so the two pipelines differ only in when the work is done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler, Subset
from torchvision import datasets, transforms

from pneumo.data.dataset import BatchedSplit, SplitData, build_split
from pneumo.data.decode import decode_image
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.data.records import Record, dataset_root, parse_file_name
from pneumo.data.tasks import get_task
from pneumo.training.config import AugmentConfig
from pneumo.training.data import collate_batch

KAGGLE_TRAIN_IMAGES = 5216  # official Kaggle train split: the default epoch for per-epoch figures
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
_PIL_FILTERS = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
}


@dataclass
class BenchData:
    """Images in an ImageFolder layout (``root/<CLASS>/<file>``) and the subset of them the benchmark uses."""

    root: Path
    indices: list[int]  # positions in ``ImageFolder(root).samples``
    paths: list[Path]
    targets: np.ndarray
    source: str
    available: int = 0  # images in the folder (``indices`` may be a subset)

    def __len__(self) -> int:
        return len(self.paths)


def synthetic_image_folder(root: Path, n: int, *, height: int, width: int, seed: int = 0) -> Path:
    """Write ``n`` SYNTHETIC radiograph-like JPEGs (``pneumo.data.synth.render_image``) to ``root/<CLASS>/``.

    Used instead of ``generate_dataset`` because the benchmark needs a chosen count and size, fast, and no splits.
    """
    from pneumo.data.synth import render_image

    rng = np.random.default_rng(seed)
    for label in CLASS_NAMES:
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        subtype = ("normal", "bacteria", "virus")[i % 3]
        if subtype == "normal":
            path = root / "NORMAL" / f"IM-{i:04d}-0001.jpeg"
        else:
            path = root / "PNEUMONIA" / f"person{i}_{subtype}_1.jpeg"
        Image.fromarray(render_image(subtype, rng, height, width)).save(path, format="JPEG", quality=90)
    return root


def train_folder(data: Path) -> Path:
    """The ``train`` folder (with NORMAL/PNEUMONIA) of a Kaggle-layout dataset, or ``data`` itself if it has them."""
    data = Path(data).expanduser()
    if not data.exists():
        raise ValueError(f"--data {data}: no such folder")
    if not data.is_dir():
        raise ValueError(f"--data {data}: expected a dataset folder (Kaggle layout), not a file")
    for candidate in (data, dataset_root(data) / "train"):
        names = {p.name.upper() for p in candidate.iterdir() if p.is_dir()} if candidate.is_dir() else set()
        if set(CLASS_NAMES) <= names:
            return candidate
    raise ValueError(f"--data {data}: found no train/NORMAL and train/PNEUMONIA folders")


def image_folder_data(root: Path, *, max_images: int | None = None, source: str | None = None) -> BenchData:
    """The images of ``root`` as ImageFolder sees them; ``max_images`` keeps an evenly spaced (stratified) subset."""
    folder = datasets.ImageFolder(str(root))
    n = len(folder.samples)
    if n == 0:
        raise ValueError(f"{root}: no images")
    indices = list(range(n))
    if max_images is not None and max_images < n:
        indices = sorted({int(i) for i in np.linspace(0, n - 1, max_images).round()})
    paths = [Path(folder.samples[i][0]) for i in indices]
    targets = np.asarray([folder.samples[i][1] for i in indices], dtype=np.int64)
    return BenchData(Path(root), indices, paths, targets, source or str(root), available=n)


def make_fullres_copies(data: BenchData, out: Path, *, n: int, size: tuple[int, int], quality: int = 90) -> BenchData:
    """JPEG copies of ``n`` images upscaled to ``size`` (width, height), like the 0.5-7 MP Kaggle originals."""
    chosen = sorted({int(i) for i in np.linspace(0, len(data) - 1, min(n, len(data))).round()})
    for i in chosen:
        src = data.paths[i]
        dst = out / CLASS_NAMES[int(data.targets[i])] / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(decode_image(src)).resize(size, Image.Resampling.BICUBIC)
        big.save(dst, format="JPEG", quality=quality)
    return image_folder_data(out, source=f"{len(chosen)} upscaled {size[0]}x{size[1]} JPEG copies of {data.source}")


# --- the two pipelines ------------------------------------------------------------------------------------------


def naive_transform(contract: PreprocessContract, augment: AugmentConfig | None = None) -> transforms.Compose:
    """The plain torchvision per-image pipeline for ``contract`` (squash geometry), with PIL augmentation if asked."""
    if contract.geometry != "squash" or contract.interpolation not in _PIL_FILTERS:
        raise ValueError("the naive baseline mirrors the default contract (squash, bilinear or bicubic)")
    steps: list = [
        transforms.Grayscale(num_output_channels=1),
        transforms.Resize((contract.image_size, contract.image_size), _PIL_FILTERS[contract.interpolation]),
    ]
    if augment is not None and augment.enabled:
        steps += [
            transforms.RandomAffine(
                degrees=augment.rotation,
                translate=(augment.translate, augment.translate),
                scale=augment.scale,
                interpolation=transforms.InterpolationMode.BILINEAR,
            ),
            transforms.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize([contract.mean], [contract.std])]
    return transforms.Compose(steps)


def naive_dataset(data: BenchData, contract: PreprocessContract, augment: AugmentConfig | None = None) -> Subset:
    """``ImageFolder`` with the naive transform, restricted to the benchmark's images (same order as ``data``)."""
    folder = datasets.ImageFolder(str(data.root), transform=naive_transform(contract, augment))
    return Subset(folder, data.indices)


def build_cached_split(
    data: BenchData, contract: PreprocessContract, cache_root: Path, *, workers: int = 0
) -> tuple[SplitData, float]:
    """Decode ``data`` once into pneumo's cache (via ``build_split``); returns the split and the seconds it took."""
    records = []
    for path, target in zip(data.paths, data.targets, strict=True):
        label = CLASS_NAMES[int(target)]
        subtype, patient = parse_file_name(path.name, label)
        records.append(Record(path, "train", label, subtype, patient))
    start = time.perf_counter()
    split = build_split(
        "train", records, get_task("normal-pneumonia"), contract, cache_root=cache_root, workers=workers, progress=False
    )
    return split, time.perf_counter() - start


class RepeatingBatches(Sampler[list[int]]):
    """``n_batches`` full batches of indices in ``0..n-1``, reshuffled every pass (like epochs, without a tail)."""

    def __init__(self, n: int, batch_size: int, n_batches: int, seed: int = 0) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n} and {batch_size}")
        self.n, self.batch_size, self.n_batches, self.seed = n, batch_size, n_batches, seed

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        pool: list[int] = []
        for _ in range(self.n_batches):
            while len(pool) < self.batch_size:
                pool.extend(rng.permutation(self.n).tolist())
            batch, pool = pool[: self.batch_size], pool[self.batch_size :]
            yield batch

    def __len__(self) -> int:
        return self.n_batches


def loader_workers(device: torch.device) -> int:
    """The engine's ``num_workers="auto"``: none on CPU (a cached batch is one memcpy), a few feeding a GPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if device.type == "cpu" else min(4, max(1, cpus - 1))


def cached_loader(
    split: SplitData, batch_size: int, n_batches: int, *, workers: int, device: torch.device, seed: int = 0
) -> DataLoader:
    """The engine's loader: batched reads from the memory-mapped cache, uint8 ``(B, 1, S, S)`` batches."""
    return DataLoader(
        BatchedSplit(split),
        batch_sampler=RepeatingBatches(len(split), batch_size, n_batches, seed),
        collate_fn=collate_batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def naive_loader(
    dataset: Subset, batch_size: int, n_batches: int, *, workers: int, device: torch.device, seed: int = 0
) -> DataLoader:
    """Decode + resize (+ augment) per image with PIL in the loader: float ``(B, 1, S, S)`` batches."""
    return DataLoader(
        dataset,
        batch_sampler=RepeatingBatches(len(dataset), batch_size, n_batches, seed),
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def warmup_batches(workers: int, prefetch_factor: int = 2) -> int:
    """Batches not timed: the first (worker start-up, first file opens) and every batch the workers may have
    prepared while waiting for it (``prefetch_factor`` each), which would otherwise arrive in no time."""
    return 1 + prefetch_factor * workers


def loader_throughput(
    loader: DataLoader, contract: PreprocessContract, device: torch.device, *, max_seconds: float = 15.0
) -> dict:
    """Images/s delivered to the model: batches moved to ``device`` and normalised, after
    :func:`warmup_batches` batches (give the loader that many more than are to be timed).

    Stops early once ``max_seconds`` have been timed (slow pipelines on full-resolution files need fewer batches).
    """
    from pneumo.bench.machine import sync

    warmup = warmup_batches(loader.num_workers, loader.prefetch_factor or 2)
    images, start = 0, None
    for i, batch in enumerate(loader):
        x = batch[0].to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize(x, contract)
        if i < warmup:
            if i == warmup - 1:
                sync(device)
                start = time.perf_counter()
            continue
        images += x.shape[0]
        if time.perf_counter() - start > max_seconds:
            break
    sync(device)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else None}


# --- the section ------------------------------------------------------------------------------------------------


def run_data_section(
    data: BenchData,
    fullres: BenchData,
    *,
    sizes: Sequence[int],
    device: torch.device,
    workdir: Path,
    batch_size: int,
    n_batches: int,
    cache_workers: int,
    splits: dict[int, SplitData],
) -> dict:
    """Cache build rates and loader throughput at every size; fills ``splits`` (size -> cached split) for training."""
    workers = loader_workers(device)
    builds, loaders = [], []
    for size in sizes:
        contract = PreprocessContract(image_size=size)
        for name, source in (("source", data), ("full-res", fullres)):
            split, seconds = build_cached_split(source, contract, workdir / f"cache-{name}", workers=cache_workers)
            builds.append(
                {
                    "images": name,
                    "size": size,
                    "n": len(split),
                    "workers": cache_workers,
                    "seconds": seconds,
                    "images_per_s": len(split) / seconds,
                }
            )
            if name == "source":
                splits[size] = split
            n = n_batches + warmup_batches(workers)
            cached = cached_loader(split, batch_size, n, workers=workers, device=device)
            naive = naive_loader(naive_dataset(source, contract), batch_size, n, workers=workers, device=device)
            row_cached = loader_throughput(cached, contract, device)
            row_naive = loader_throughput(naive, contract, device)
            ratio = None
            if row_cached["images_per_s"] and row_naive["images_per_s"]:
                ratio = row_cached["images_per_s"] / row_naive["images_per_s"]
            loaders.append(
                {
                    "images": name,
                    "size": size,
                    "batch_size": batch_size,
                    "workers": workers,
                    "cache_images_per_s": row_cached["images_per_s"],
                    "decode_images_per_s": row_naive["images_per_s"],
                    "speedup": ratio,
                    "cache": row_cached,
                    "decode": row_naive,
                }
            )
    return {
        "source": data.source,
        "n_images": len(data),
        "fullres": {"source": fullres.source, "n_images": len(fullres)},
        "cache_build": builds,
        "loaders": loaders,
    }

"""From records to tensors: task selection, split, cache lookup and a torch Dataset of uint8 images.

Images leave this module as uint8 (1, S, S) tensors; normalisation and augmentation happen on the batch (on the
device that trains), so the same cache serves CPU and GPU pipelines.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pneumo.data.cache import CachedImages, ImageCache
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import Record
from pneumo.data.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """The images of one split for one task: records, class indices, patient groups and cached pixels."""

    name: str
    records: list[Record]
    targets: np.ndarray
    images: CachedImages

    def __len__(self) -> int:
        return len(self.records)

    @property
    def groups(self) -> list[str]:
        return [r.patient_id for r in self.records]

    def as_tensor(self) -> torch.Tensor:
        """All images as one uint8 (N, 1, S, S) tensor (for in-memory or on-GPU pipelines)."""
        return torch.from_numpy(np.ascontiguousarray(self.images.array[self.images.rows])).unsqueeze(1)

    def torch_dataset(self) -> CachedImageDataset:
        return CachedImageDataset(self.images, self.targets)


class CachedImageDataset(Dataset):
    """(uint8 (1, S, S) tensor, class index) pairs read from the memory-mapped cache."""

    def __init__(self, images: CachedImages, targets: np.ndarray):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]).unsqueeze(0), int(self.targets[i])


def build_split(
    name: str,
    records: Sequence[Record],
    task: Task,
    contract: PreprocessContract,
    *,
    cache_root: Path | None = None,
    workers: int = 0,
    progress: bool = True,
    include_out_of_task: bool = False,
) -> SplitData:
    """Select the task's records of one split, cache them and drop (with a warning) those that fail to decode.

    With ``include_out_of_task`` the records outside the task get class index ``task.num_classes`` (the dummy class).
    """
    chosen, targets = task.select([r for r in records if r.split == name])
    if include_out_of_task:
        extra = task.out_of_task([r for r in records if r.split == name])
        chosen, targets = chosen + extra, targets + [task.num_classes] * len(extra)
    images = ImageCache(contract, cache_root).build([r.path for r in chosen], workers=workers, progress=progress)
    for path, reason in images.failures:
        log.warning("skipping %s: %s", path, reason)
    keep = images.ok
    images = CachedImages(images.file, images.image_size, images.rows[keep], images.failures)
    return SplitData(
        name,
        [r for r, k in zip(chosen, keep, strict=True) if k],
        np.asarray(targets, dtype=np.int64)[keep],
        images,
    )


def image_digests(splits: Iterable[SplitData]) -> dict[str, list[list[str]]]:
    """Per split, ``[file name, digest of its cached pixels and class]`` for each image, in split order.

    Saved with a run's resumable state and compared on resume, so a run does not continue on images that changed, or
    were added or removed, since it started. Pixels rather than file names, sizes or times: the dataset folder may move
    and be copied, and a newer pneumo may cache it anew, as long as the model sees the same images."""
    digests: dict[str, list[list[str]]] = {}
    for split in splits:
        pixels = split.images.array
        digests[split.name] = [
            [record.name, hashlib.blake2b(pixels[row].tobytes() + bytes([int(target)]), digest_size=8).hexdigest()]
            for record, row, target in zip(split.records, split.images.rows, split.targets, strict=True)
        ]
    return digests


def image_changes(saved: dict[str, list[list[str]]] | None, current: dict[str, list[list[str]]]) -> list[str]:
    """What differs between two :func:`image_digests`, a line per split (a few file names each); empty when equal or
    when the state predates the digests (``saved`` None)."""
    if saved is None:
        return []
    changes = []
    for name, now in current.items():
        before = saved.get(name, [])
        if before == now:
            continue
        old, new = dict(map(tuple, before)), dict(map(tuple, now))
        gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        parts = [
            f"{label} {len(files)} ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
            for label, files in (("removed", gone), ("added", added), ("other pixels or class", changed))
            if files
        ]
        changes.append(f"{name}: {'; '.join(parts) or 'the same images in another order'}")
    return changes


class BatchedSplit(Dataset):
    """Batched reads from the memory-mapped cache: one fancy-indexing copy per batch instead of one per image.

    ``DataLoader`` calls ``__getitems__`` with a whole batch of indices; the result is already a batch, so pass
    :func:`collate_batch` as ``collate_fn``.
    """

    def __init__(self, split: SplitData) -> None:
        self.images = split.images
        self.targets = torch.as_tensor(split.targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.images.rows[idx]
        order = np.argsort(rows, kind="stable")  # read the memmap in file order, then restore the batch order
        pixels = np.empty((len(idx), *self.images.array.shape[1:]), dtype=np.uint8)
        pixels[order] = self.images.array[rows[order]]
        return torch.from_numpy(pixels).unsqueeze(1), self.targets[idx], torch.from_numpy(idx)

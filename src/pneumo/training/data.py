"""Training data: the split, the cached splits, the per-epoch sample order and batched loading.

The order of an epoch is a pure function of (seed, epoch, rank, world size), so a resumed run can skip the steps it
already did and see exactly the same batches. Sampling uses torch's own samplers: ``DistributedSampler`` (it also
serves one process, as a seeded shuffle) and, for ``balance=sampler``, ``WeightedRandomSampler`` with a generator
seeded from (seed, epoch), whose draws are then sharded over ranks the way ``DistributedSampler`` shards.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, WeightedRandomSampler

from pneumo.data.dataset import BatchedSplit, SplitData, build_split
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.provenance import PROVENANCE_SUFFIX, check_generated_images, read_generator_digest
from pneumo.data.records import DatasetError, Record, dataset_root, discover, parse_file_name
from pneumo.data.splits import check_disjoint, make_split, patients_seen_but_held_out, read_split_csv, write_split_csv
from pneumo.data.tasks import Task
from pneumo.gan.synth import generator_digest, run_id, synthetic_records
from pneumo.models.registry import preprocess_contract
from pneumo.training.config import TrainConfig

log = logging.getLogger(__name__)


def contract_for(cfg: TrainConfig) -> PreprocessContract:
    return preprocess_contract(cfg.model, weights=cfg.weights, image_size=cfg.image_size, geometry=cfg.geometry)


def resolve_split(cfg: TrainConfig) -> list[Record]:
    """The records with their split: read from ``split_file`` when given, else carved by patient."""
    if cfg.split_file:
        records = read_split_csv(Path(cfg.split_file), dataset_root(cfg.data))
        if shared := [p for p, splits in check_disjoint(records).items() if {"train", "val"} <= set(splits)]:
            raise DatasetError(
                f"{cfg.split_file}: {len(shared)} patient(s) in both train and val (e.g. {shared[:3]}): "
                "validation would score images of patients the model trained on"
            )
        return records
    return make_split(
        discover(cfg.data),
        val_fraction=cfg.val_fraction,
        seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
        keep_official_val=cfg.keep_official_val,
        exclude_test_patients=cfg.exclude_test_patients,
    )


def _run_folder(weights: str | Path) -> Path:
    """The folder of ``weights``: a run folder itself, or the folder holding a weights file."""
    path = Path(weights)
    return path if path.is_dir() else path.parent


def source_runs(cfg: TrainConfig) -> list[Path]:
    """The pneumo run folders this run inherits from: ``weights`` (a run folder or a file in one) and the GAN run."""
    found = []
    if cfg.weights not in ("none", "imagenet"):
        found.append(_run_folder(cfg.weights))  # a bare weights file (no split) is taken as it is
    found = [run for run in found if (run / "split.csv").is_file()]
    if cfg.synthetic.enabled:
        gan = Path(str(cfg.synthetic.from_run))
        if not (gan / "split.csv").is_file():  # its images would carry patients nobody could check
            raise DatasetError(
                f"{gan}: a GAN run without split.csv, so the patients it trained on are unknown: generated images "
                "from it could carry patients this run validates or tests on"
            )
        found.append(gan)
    return found


def check_source_runs(cfg: TrainConfig, records: list[Record]) -> None:
    """Refuse a source run (or generated images in the dataset) that trained on patients this run validates or
    tests on.

    Transfer (``weights: RUN``) and GAN balancing (``synthetic.from_run``) carry what the source run learnt into this
    one; if that run's train split holds patients of this run's validation split, epoch and threshold selection are
    biased, silently. It happens easily: a different ``seed`` carves a different validation split.
    """
    check_generated_images(records)
    sources = source_runs(cfg)
    if not sources:
        return  # the common case: nothing inherited, nothing to resolve
    ours = {r.path.resolve() for r in records}
    our_names = {r.path.name for r in records}
    for run in sources:
        source = read_split_csv(run / "split.csv", dataset_root(cfg.data))
        if not any(r.path.resolve() in ours for r in source):
            # split.csv paths are relative to the dataset root: a source run on another copy of the same images (moved,
            # laid out differently, read through a manifest) shares no path, but its file names (Kermany's are unique)
            if 2 * sum(r.path.name in our_names for r in source) >= len(source):
                log.info("%s: matched to this run's dataset by file name (another copy of it)", run)
            else:  # not silent: nobody has checked its patients then
                log.warning(
                    "%s shares no image path or file name with this run's dataset: its patients are not checked "
                    "against this run's validation and test splits (fine for another dataset)",
                    run,
                )
                continue
        leaked = patients_seen_but_held_out(source, records)
        if leaked:
            raise DatasetError(
                f"{run} trained on {len(leaked)} patients that this run holds out for validation or test "
                f"(e.g. {', '.join(sorted(leaked)[:3])}); starting from it would leak them. Use that run's split "
                f"(--set split_file={run / 'split.csv'}) or carve the same one (same split seed, val_fraction, "
                "keep_official_val and exclude_test_patients)"
            )


def save_split(records: list[Record], cfg: TrainConfig, path: Path) -> None:
    write_split_csv(records, path, dataset_root(cfg.data))


SYNTHETIC_DIR = "synthetic"


def synthetic_counts(per_class: int | str, records: list[Record], task: Task, dummy_class: bool) -> dict[str, int]:
    """Images to generate per GAN class (normal/bacteria/virus) for ``synthetic.per_class``.

    ``balance`` tops every task class of the train split up to the largest one (for normal-pneumonia a PNEUMONIA
    deficit is shared by bacteria and virus in their real proportion). NORMAL images are generated for
    bacteria-virus only as dummy-class material (``dummy_class=true``).
    """
    train = [r for r in records if r.split == "train"]
    sub = Counter(r.subtype for r in train)
    counts = dict.fromkeys(("normal", "bacteria", "virus"), 0)
    if isinstance(per_class, int):
        counts = dict.fromkeys(counts, per_class)
    elif task.name == "normal-pneumonia":
        # Counted by label: a PNEUMONIA image without a subtype still counts; the deficit is shared by the known
        # subtypes in their proportion (evenly when none is known).
        labels = Counter(r.label for r in train)
        n_normal, n_pneumonia = labels["NORMAL"], labels["PNEUMONIA"]
        if n_normal < n_pneumonia:
            counts["normal"] = n_pneumonia - n_normal
        else:
            deficit, known = n_normal - n_pneumonia, sub["bacteria"] + sub["virus"]
            counts["bacteria"] = round(deficit * (sub["bacteria"] / known if known else 0.5))
            counts["virus"] = deficit - counts["bacteria"]
    else:
        classes = ("normal", "bacteria", "virus") if task.name == "normal-bacteria-virus" else ("bacteria", "virus")
        target = max(sub[c] for c in classes)
        counts.update({c: target - sub[c] for c in classes})
    if task.name == "bacteria-virus" and not dummy_class:
        counts["normal"] = 0  # out of task: they would be dropped
    return counts


def decodable_train_records(cfg: TrainConfig, records: list[Record], task: Task, *, progress: bool) -> list[Record]:
    """The train records that training will use: the task's (and the dummy class's), minus the images the cache
    cannot decode, which :func:`build_train_data` skips. Caches them on the way (the later build finds them)."""
    split = build_split(
        "train", records, task, contract_for(cfg), cache_root=Path(cfg.cache_dir) if cfg.cache_dir else None,
        progress=progress, include_out_of_task=cfg.dummy_class,
    )  # fmt: skip
    return split.records


def with_synthetic(
    cfg: TrainConfig, records: list[Record], task: Task, run_dir: Path, *, generate: bool, progress: bool = False
) -> list[Record]:
    """Add ACGAN images (``synthetic.*``) to the **train** split only, after the split is made.

    ``generate`` writes them into ``RUN_DIR/synthetic`` (rank 0, new run), after clearing what an earlier attempt
    in the same folder left there (perhaps from another GAN, whose images were never checked for leaks); otherwise
    the images of this run's GAN already there are used (other ranks, resume), so every process and a resumed run
    see the same files in the same order. ``balance`` counts the train images that decode: one that the cache
    skips would otherwise leave its class short by one.
    """
    if not cfg.synthetic.enabled:
        return records
    folder = run_dir / SYNTHETIC_DIR
    if generate:
        counted = records
        if cfg.synthetic.per_class == "balance":
            counted = decodable_train_records(cfg, records, task, progress=progress)
        per_class = synthetic_counts(cfg.synthetic.per_class, counted, task, cfg.dummy_class)
        log.info("adding synthetic training images from %s: %s", cfg.synthetic.from_run, per_class)
        shutil.rmtree(folder, ignore_errors=True)
        extra = synthetic_records(cfg.synthetic.from_run, per_class, folder, seed=cfg.seed)
    else:
        _warn_if_generator_changed(folder, cfg.synthetic.from_run)
        extra = []
        for path in folder.glob(f"train/*/synthetic-{run_id(cfg.synthetic.from_run)}-*.png"):
            subtype, patient = parse_file_name(path.name)
            extra.append(Record(path, "train", path.parent.name, subtype, patient))
    return records + sorted(extra, key=lambda r: str(r.path))


def _warn_if_generator_changed(folder: Path, gan_run: str | Path) -> None:
    """A resumed run keeps the images it generated; say so when its GAN has other weights now (retrained)."""
    made_by = read_generator_digest(folder / "train" / f"synthetic-{run_id(gan_run)}{PROVENANCE_SUFFIX}")
    now = generator_digest(gan_run)
    if made_by and now and made_by != now:
        log.warning(
            "%s: its generator changed since this run generated its images (weights %s..., now %s...); the run "
            "goes on with the images it has, made by the earlier weights",
            gan_run, made_by[:12], now[:12],
        )  # fmt: skip


def source_has_same_outputs(weights: str | Path, class_names: Sequence[str], dummy_class: bool) -> bool:
    """Whether a source run was trained for these outputs (same classes, same dummy class), so that its head is a
    starting point; a bare weights file without ``checkpoint.json`` beside it counts as the same (its head loads
    when its shape fits). ImageNet weights never count: their 1000-class head is no starting point."""
    if str(weights) == "imagenet":
        return False
    if not Path(weights).exists():
        return True  # nothing to describe: loading it fails next, naming the path
    meta_path = _run_folder(weights) / "checkpoint.json"
    if not meta_path.is_file():
        log.warning(
            "%s: no checkpoint.json beside it, so its classes are unknown; its head is loaded wherever its shape fits "
            "(%d outputs), as if it had been trained for %s",
            weights, len(class_names) + int(dummy_class), ", ".join(class_names),
        )  # fmt: skip
        return True
    meta = json.loads(meta_path.read_text())
    return list(meta.get("class_names") or []) == list(class_names) and bool(meta.get("dummy_class")) == dummy_class


@dataclass
class TrainData:
    train: SplitData
    val: SplitData
    contract: PreprocessContract
    dummy_from_data: bool  # dummy-class images come from out-of-task records (else: made on the fly)


def warn_if_geometry_is_moot(records: Sequence[Record], contract: PreprocessContract, sample: int = 64) -> bool:
    """Warn (and return True) when a crop or letterbox geometry meets training images that are all square already.

    The common 224 px copies of Kermany were squashed: cropping or padding them changes nothing in training, while
    prediction on the non-square originals crops or pads for real, so training and serving would see different
    geometry. Reads image headers only, of an evenly spaced sample of the training images."""
    if contract.geometry == "squash":
        return False
    train = [r for r in records if r.split == "train"]
    sizes = set()
    for r in train[:: max(1, len(train) // sample)][:sample]:
        try:
            with Image.open(r.path) as img:
                sizes.add(img.size[0] == img.size[1])
        except (OSError, ValueError):  # unreadable or DICOM: the cache build reports it; no verdict from it here
            continue
    if sizes == {True}:
        log.warning(
            "geometry=%s, but the training images are square already (e.g. the squashed 224 px copies): training "
            "sees squashed images while predictions on non-square originals are %s; train on the originals, or "
            "use geometry=squash",
            contract.geometry,
            "letterboxed" if contract.geometry == "letterbox" else "center-cropped",
        )
        return True
    return False


def build_train_data(cfg: TrainConfig, records: list[Record], task: Task, *, progress: bool) -> TrainData:
    """Cache and load the train and validation splits (never test)."""
    contract = contract_for(cfg)
    warn_if_geometry_is_moot(records, contract)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else None
    train = build_split(
        "train", records, task, contract, cache_root=cache_root, progress=progress, include_out_of_task=cfg.dummy_class
    )
    val = build_split("val", records, task, contract, cache_root=cache_root, progress=progress)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"task {task.name}: {len(train)} train and {len(val)} validation images; need both")
    for split in (train, val):
        missing = set(range(task.num_classes)) - set(np.unique(split.targets).tolist())
        if missing:
            names = [task.class_names[i] for i in sorted(missing)]
            raise ValueError(f"the {split.name} split has no image of class(es) {names}")
    dummy_from_data = cfg.dummy_class and bool((train.targets == task.num_classes).any())
    if cfg.dummy_class and not dummy_from_data:
        log.info("dummy class: no out-of-task images for %s; using patch-shuffled training images", task.name)
    return TrainData(train, val, contract, dummy_from_data)


def class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (C * n_c)`` (scikit-learn's "balanced"); absent classes get weight 0."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(targets) / (num_classes * counts), 0.0)
    return weights


class EpochOrder:
    """The sample indices one rank trains on in one epoch."""

    def __init__(
        self, targets: np.ndarray, *, seed: int, rank: int = 0, world: int = 1, weighted_classes: int | None = None
    ) -> None:
        self.n = len(targets)
        self.seed, self.rank, self.world = seed, rank, world
        self.sample_weights = None
        if weighted_classes is not None:
            self.sample_weights = class_weights(targets, weighted_classes)[targets]

    def indices(self, epoch: int) -> list[int]:
        if self.sample_weights is None:
            sampler = DistributedSampler(range(self.n), num_replicas=self.world, rank=self.rank, seed=self.seed)
            sampler.set_epoch(epoch)
            return list(sampler)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        drawn = list(WeightedRandomSampler(self.sample_weights.tolist(), self.n, replacement=True, generator=g))
        per_rank = -(-self.n // self.world)
        drawn += drawn[: per_rank * self.world - self.n]  # pad like DistributedSampler
        return drawn[self.rank :: self.world]


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices ``0..n-1`` of one rank, padded by repetition to equal length on every rank (for evaluation)."""
    per_rank = -(-n // world)
    padded = list(range(n)) + list(range(per_rank * world - n))
    return padded[rank::world]


class ResidentSplit(BatchedSplit):
    """The split's uint8 images and targets copied to ``device`` once; a batch is one ``index_select`` there.

    Same interface and same batches as :class:`BatchedSplit` (row ``i`` is image ``i`` of the split), so the engine's
    epoch order, resume and validation are unchanged; only where the pixels live differs.
    """

    def __init__(self, split: SplitData, device: torch.device) -> None:
        self.images = split.as_tensor().to(device)
        self.targets = torch.as_tensor(split.targets, dtype=torch.int64).to(device)
        self.device = device

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64).to(self.device, non_blocking=True)
        return self.images.index_select(0, idx), self.targets.index_select(0, idx), idx


def resident_bytes(*splits: SplitData) -> int:
    """Bytes the uint8 images of ``splits`` take once copied to a device."""
    return sum(len(s) * int(np.prod(s.images.array.shape[1:])) for s in splits)


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return batch

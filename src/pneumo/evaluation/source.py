"""What an evaluation evaluates: the dataset (the run's own split file, or another dataset folder or CSV manifest),
its records, the ``eval-<dataset>-<split>`` folder name derived from it, and how much of it the run already saw in
training or validation. Nothing here loads images, runs the model or writes files; :mod:`pneumo.evaluation.run`
and :mod:`pneumo.evaluation.writers` build on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.data.records import DatasetError, Record, dataset_root, discover
from pneumo.data.splits import read_split_csv

EVAL_PREFIX = "eval-"


def dataset_slug(source: str | Path) -> str:
    """``/data/chest_xray`` -> ``chest-xray``; ``external.csv`` -> ``external`` (names the eval folder)."""
    path = Path(source)
    stem = path.stem if path.suffix.lower() == ".csv" else path.name
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "dataset"


def eval_dir_name(source: str | Path, split: str) -> str:
    return f"{EVAL_PREFIX}{dataset_slug(source)}-{split}"


@dataclass(frozen=True)
class EvalSource:
    """The records to evaluate and where they come from."""

    source: Path  # dataset folder or CSV manifest
    root: Path  # paths of predictions.csv are written relative to it
    own: bool  # the run's own dataset and split file
    records: list[Record]

    slug: str  # names the eval folder; unique for another dataset that shares the own one's folder name


def run_records(run_dir: Path, config: Mapping[str, Any]) -> list[Record]:
    """The run's split (``split.csv``), paths resolved against its dataset root."""
    return read_split_csv(run_dir / "split.csv", dataset_root(config["data"]))


def resolve_source(run_dir: Path, config: Mapping[str, Any], data: str | Path | None, split: str) -> EvalSource:
    """The run's own dataset and split file, or another dataset folder / CSV (its own split column; a manifest
    without one counts as all test)."""
    own = Path(config["data"]).expanduser().resolve()
    source = own if data is None else Path(data).expanduser().resolve()
    if source == own:
        return EvalSource(own, dataset_root(own), True, run_records(run_dir, config), dataset_slug(own))
    records = discover(source)
    if not any(r.split == split for r in records):
        found = sorted({r.split for r in records})
        raise DatasetError(f"{source} has no {split} split (it has: {', '.join(found)})")
    slug = dataset_slug(source)
    if slug == dataset_slug(own):  # /data/b/chest_xray must not overwrite (or pose as) /data/a/chest_xray's eval
        slug = f"{slug}-{hashlib.sha1(str(source).encode()).hexdigest()[:6]}"
    return EvalSource(source, dataset_root(source), False, records, slug)


def training_overlap(evaluated: Sequence[Record], run_split: Sequence[Record]) -> dict[str, int]:
    """How much of the evaluated set the run saw in training or validation, by patient id and by file name.

    Non-zero counts mean the evaluated images are not independent of the model (the same patients, or copies of
    the same files in another folder layout)."""
    seen = [r for r in run_split if r.split in ("train", "val")]
    patients = {r.patient_id for r in seen}
    names = {r.path.name.lower() for r in seen}
    eval_patients = {r.patient_id for r in evaluated}
    return {
        "patients_seen_in_train_or_val": len(eval_patients & patients),
        "images_of_those_patients": sum(r.patient_id in patients for r in evaluated),
        "images_with_a_train_or_val_file_name": sum(r.path.name.lower() in names for r in evaluated),
    }

"""Leak-free splits: the official test stays test; validation is carved from train by patient.

The split actually used is written as CSV (``path,split,label,subtype,patient_id`` with paths relative to the
dataset root) and can be passed back in to reproduce a run exactly.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumo.data.records import LABELS, SPLITS, DatasetError, Record, is_synthetic
from pneumo.utils.atomic import atomic_open

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ("path", "split", "label", "subtype", "patient_id")


def make_split(
    records: Sequence[Record],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    keep_official_val: bool = False,
    exclude_test_patients: bool = False,
) -> list[Record]:
    """Assign train/val by patient, stratified by subtype, with scikit-learn's StratifiedGroupKFold.

    The validation split is one fold of ``round(1 / val_fraction)``: 0.1 gives a tenth, 0.3 a third, 0.4 a half
    (folds keep every patient whole and every subtype in proportion, which a free fraction could not guarantee).

    The official test split is never touched. The official 16-image val joins the train pool unless
    ``keep_official_val`` (then it is the validation split and nothing is carved). ``exclude_test_patients`` drops
    train/val images whose patient id also occurs in test (in the Kaggle release 170 ``personN`` numbers are shared
    by train and test; whether they are the same children is not documented); dropped images are left out of the
    returned list, so the saved split file has none of them.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # imported here: keeps CLI and service start-up light

    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    # Generated images (pneumo gan synth written into a dataset folder) train only: never validated or tested on.
    generated = [r for r in records if is_synthetic(r.name)]
    if misplaced := [r for r in generated if r.split == "test"]:
        raise DatasetError(f"{len(misplaced)} generated image(s) in the test split, e.g. {misplaced[0].path}")
    if generated:
        log.warning(
            "%d generated image(s) (synthetic-*, e.g. %s) are in the dataset: they join the training split",
            len(generated),
            generated[0].path,
        )
    generated = [replace(r, split="train") for r in generated]
    records = [r for r in records if not is_synthetic(r.name)]
    test = [r for r in records if r.split == "test"]
    if exclude_test_patients:
        test_patients = {r.patient_id for r in test}
        dropped = [r for r in records if r.split != "test" and r.patient_id in test_patients]
        log.info(
            "exclude_test_patients: left out %d train/val images of %d patients that test also holds",
            len(dropped), len({r.patient_id for r in dropped}),
        )  # fmt: skip
        records = [r for r in records if r.split == "test" or r.patient_id not in test_patients]
    if keep_official_val:
        official_val = [r for r in records if r.split == "val"]
        if not official_val:
            raise DatasetError("keep_official_val was asked for, but the dataset has no val split")
        train = [r for r in records if r.split == "train"]
        shared = sorted({r.patient_id for r in train} & {r.patient_id for r in official_val})
        if shared:
            raise DatasetError(
                f"the dataset's own val split shares {len(shared)} patient(s) with train ({', '.join(shared[:5])}"
                f"{' ...' if len(shared) > 5 else ''}): it would not validate on unseen patients; drop "
                "keep_official_val to carve one by patient"
            )
        return [*train, *generated, *official_val, *test]

    pool = [r for r in records if r.split in ("train", "val")]
    if not pool:
        raise DatasetError("the dataset has no train images")
    strata = [r.subtype or r.label for r in pool]
    groups = [r.patient_id for r in pool]
    n_splits = max(2, round(1.0 / val_fraction))
    if abs(1.0 / n_splits - val_fraction) > 0.01:  # one fold of k: 0.45 carves half, 0.15 carves a seventh
        log.warning("val_fraction %g carves one fold of %d, about %.1f %% of the patients", val_fraction, n_splits,
                    100.0 / n_splits)  # fmt: skip
    if len(set(groups)) < n_splits:
        raise DatasetError(
            f"val_fraction {val_fraction} needs at least {n_splits} train patients to carve a validation split by "
            f"patient; the dataset has {len(set(groups))}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(np.zeros(len(pool)), strata, groups))
    val_set = set(val_idx.tolist())
    carved = [replace(r, split="val" if i in val_set else "train") for i, r in enumerate(pool)]
    return [*carved, *generated, *test]


def check_disjoint(records: Sequence[Record]) -> dict[str, list[str]]:
    """Patients that occur in more than one split, as ``{patient: [splits]}``."""
    seen: dict[str, set[str]] = {}
    for r in records:
        seen.setdefault(r.patient_id, set()).add(r.split)
    return {p: sorted(s) for p, s in sorted(seen.items()) if len(s) > 1}


def patients_seen_but_held_out(source: Sequence[Record], records: Sequence[Record]) -> set[str]:
    """Patients a source model trained on (``source``'s train split) that ``records`` holds out.

    A run that starts from another run's weights, or adds images from a GAN run, inherits what that run trained on.
    Held out are this split's validation and test patients, except those this split trains on itself (the Kaggle
    release shares patient numbers between train and test: a run that keeps them leaks nothing new by inheriting
    them). Empty means the source saw nothing this run is scored on.
    """
    return {r.patient_id for r in source if r.split == "train"} & held_out_patients(records)


def held_out_patients(records: Sequence[Record]) -> set[str]:
    """Validation and test patients, except those the split also trains on."""
    ours = {r.patient_id for r in records if r.split == "train"}
    return {r.patient_id for r in records if r.split in ("val", "test")} - ours


def write_split_csv(records: Sequence[Record], path: Path, root: Path) -> None:
    """Write the split atomically, paths relative to ``root`` where possible."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS)
        base = Path(os.path.abspath(root))
        for r in records:
            # abspath, not resolve: a symlinked image keeps its own name (the name carries the patient and class)
            full = Path(os.path.abspath(r.path))
            try:
                rel = full.relative_to(base)
            except ValueError:
                rel = full
            writer.writerow([rel.as_posix(), r.split, r.label, r.subtype or "", r.patient_id])


def read_split_csv(path: Path, root: Path) -> list[Record]:
    """Read a split file written by :func:`write_split_csv`; relative paths resolve against ``root``."""
    try:
        return _read_split_rows(path, root)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path} is damaged ({exc}); restore it from a copy of the run") from None


def _read_split_rows(path: Path, root: Path) -> list[Record]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != SPLIT_COLUMNS:
            raise DatasetError(f"{path}: expected columns {SPLIT_COLUMNS}, got {reader.fieldnames}")
        out = []
        seen: dict[str, int] = {}
        for line_no, row in enumerate(reader, start=2):
            p = Path(row["path"])
            if row["split"] not in SPLITS or row["label"] not in LABELS:
                raise DatasetError(
                    f"{path}:{line_no}: split {row['split']!r} / label {row['label']!r} is not one of {SPLITS} / "
                    f"{LABELS}"
                )
            if (first := seen.setdefault(row["path"], line_no)) != line_no:
                raise DatasetError(f"{path}:{line_no}: {row['path']} is listed again (first on line {first})")
            out.append(
                Record(
                    p if p.is_absolute() else root / p,
                    row["split"],
                    row["label"],
                    row["subtype"] or None,
                    row["patient_id"],
                )
            )
    return out

"""Datasets as lists of :class:`Record`: discovery of folder layouts and CSV manifests, names -> labels/patients.

Supported sources:

* the Kaggle layout ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/<file>``;
* the pediatric layout ``{train,test}/{NORMAL,PNEUMONIA}/<file>`` (Mendeley v2, no val);
* a CSV manifest with columns ``path,label[,subtype,patient_id,split]`` (paths relative to the CSV's folder).

Folder names are matched case-insensitively; a doubled nesting (``chest_xray/chest_xray/...``), ``__MACOSX``
and hidden files are ignored.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from pneumo.utils.errors import PneumoError

LABELS = ("NORMAL", "PNEUMONIA")
SUBTYPES = ("normal", "bacteria", "virus")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"})

log = logging.getLogger(__name__)

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
# IM-0115-0001, NORMAL2-IM-1427-0001, NORMAL2-IM-0173-0001-0001: the patient is the prefix up to the IM number.
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)
# Mendeley v3 ("CellData/chest_xray") names: NORMAL-1003233-0001, BACTERIA-1008087-0001, VIRUS-1014468-0001. The
# number is the patient, grouped across classes (grouping can only merge patients, never split one).
_NUMBERED = re.compile(r"^(NORMAL|BACTERIA|VIRUS)-(\d+)-\d+", re.IGNORECASE)
_SYNTHETIC = re.compile(r"^(synthetic-[a-z0-9]+)-(normal|bacteria|virus)-\d+", re.IGNORECASE)


class DatasetError(PneumoError, ValueError):
    """A dataset folder or manifest that cannot be read; the message names the path and the problem."""


@dataclass(frozen=True, slots=True)
class Record:
    """One image: where it is and what is known about it."""

    path: Path
    split: str
    label: str
    subtype: str | None
    patient_id: str

    @property
    def name(self) -> str:
        return self.path.name


def parse_file_name(name: str, label: str | None = None) -> tuple[str | None, str]:
    """Return ``(subtype, patient_id)`` from a Kermany file name.

    ``person123_bacteria_456.jpeg`` -> ``("bacteria", "person123")``;
    ``IM-0115-0001.jpeg`` -> ``("normal", "IM-0115")``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``("normal", "NORMAL2-IM-1427")``;
    ``BACTERIA-1008087-0001.jpeg`` (Mendeley v3) -> ``("bacteria", "1008087")``.
    A name that follows none of these becomes its own patient (its stem), with subtype ``normal`` for NORMAL images
    and unknown (None) otherwise.
    """
    stem = Path(name).stem
    if m := _PERSON.match(stem):
        return m.group(2).lower(), m.group(1).lower()
    if m := _SYNTHETIC.match(stem):
        return m.group(2).lower(), stem
    if m := _IM.match(stem):
        return "normal", m.group(1).upper()
    if m := _NUMBERED.match(stem):
        return m.group(1).lower(), m.group(2)
    return ("normal" if label == "NORMAL" else None), stem


def is_synthetic(name: str) -> bool:
    """True for the images ``pneumo gan synth`` writes (``synthetic-<run>-<class>-<i>.png``)."""
    return synthetic_prefix(name) is not None


def synthetic_prefix(name: str) -> str | None:
    """``synthetic-<run>`` of a generated image's name (the GAN run that made it), None for any other name."""
    m = _SYNTHETIC.match(Path(name).stem)
    return m.group(1).lower() if m else None


def follows_kermany_naming(name: str) -> bool:
    """True for ``personN_bacteria|virus_M``, ``[NORMAL2-]IM-N-M`` and ``NORMAL|BACTERIA|VIRUS-N-M`` names, whose
    patient id the name carries."""
    stem = Path(name).stem
    return bool(_PERSON.match(stem) or _IM.match(stem) or _NUMBERED.match(stem))


def contradiction(label: str, subtype: str | None) -> str | None:
    """Why ``label`` and ``subtype`` cannot both be true (NORMAL with a pneumonia subtype, or the reverse)."""
    if subtype is not None and (label == "NORMAL") != (subtype == "normal"):
        return f"label {label} contradicts subtype {subtype}"
    return None


def is_junk(path: Path) -> bool:
    """Hidden files and folders, and macOS archive leftovers (``__MACOSX/``, ``._name`` AppleDouble files)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _child_dirs(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-case name; two that differ only in case (``train/`` and ``Train/``) are an error, since
    one of them would be dropped."""
    children: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir() and not is_junk(Path(p.name)):
            if (other := children.get(p.name.lower())) is not None:
                raise DatasetError(f"{folder}: folders {other.name!r} and {p.name!r} differ only in case; merge them")
            children[p.name.lower()] = p
    return children


def _find_split_root(root: Path) -> Path | None:
    """The folder holding train/test (maybe val), searched through a few levels of nesting."""
    frontier = [root]
    for _ in range(4):
        next_frontier = []
        for folder in frontier:
            children = _child_dirs(folder)
            if "train" in children or "test" in children:
                return folder
            next_frontier.extend(children.values())
        frontier = next_frontier
    return None


def _records_from_layout(split_root: Path) -> list[Record]:
    records = []
    for split_name, split_dir in _child_dirs(split_root).items():
        if split_name not in SPLITS:
            _warn_if_skipped_images(split_dir, f"not a split folder ({', '.join(SPLITS)})")
            continue
        for label_name, label_dir in _child_dirs(split_dir).items():
            label = label_name.upper()
            if label not in LABELS:
                _warn_if_skipped_images(label_dir, f"not a class folder ({', '.join(LABELS)})")
                continue
            for path in sorted(label_dir.rglob("*")):
                rel = path.relative_to(label_dir)
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not is_junk(rel):
                    subtype, patient = parse_file_name(path.name, label)
                    if reason := contradiction(label, subtype):  # e.g. a person1_virus_1.jpeg filed under NORMAL/
                        log.warning("%s: skipped, its folder's %s (from its name)", path, reason)
                        continue
                    records.append(Record(path, split_name, label, subtype, patient))
    return records


def _warn_if_skipped_images(folder: Path, why: str) -> None:
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if not is_junk(p.relative_to(folder))):
        log.warning("%s: its images are skipped, %s", folder, why)


def warn_if_names_carry_no_patient(records: list[Record], source: Path) -> None:
    """Warn when file names follow no known naming: each such image is its own patient, so one child's images can
    land in both train and validation without any check noticing."""
    unknown = [r for r in records if not follows_kermany_naming(r.name) and not is_synthetic(r.name)]
    if unknown:
        log.warning(
            "%s: %d of %d file names follow no known naming (e.g. %s): each is taken as its own patient, so a child's "
            "images may be split between train and validation. Give patient ids in a CSV manifest "
            "(path,label,subtype,patient_id,split)",
            source, len(unknown), len(records), unknown[0].name,
        )  # fmt: skip


def read_manifest(csv_path: Path) -> list[Record]:
    """Records from a CSV manifest (``path,label[,subtype,patient_id,split]``, paths relative to the CSV)."""
    base = csv_path.parent
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path}: manifest lacks column(s) {sorted(missing)}")
        records = []
        lines: dict[Path, int] = {}
        for line_no, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip().upper()
            if label not in LABELS:
                raise DatasetError(f"{csv_path}:{line_no}: label {row['label']!r} is not one of {LABELS}")
            path = Path(row["path"])
            path = path if path.is_absolute() else base / path
            if (first := lines.setdefault(Path(os.path.abspath(path)), line_no)) != line_no:
                raise DatasetError(f"{csv_path}:{line_no}: {path} is listed again (first on line {first})")
            parsed_subtype, parsed_patient = parse_file_name(path.name, label)
            subtype = (row.get("subtype") or "").strip().lower() or parsed_subtype
            if subtype is not None and subtype not in SUBTYPES:
                raise DatasetError(f"{csv_path}:{line_no}: subtype {subtype!r} is not one of {SUBTYPES}")
            if follows_kermany_naming(path.name) and subtype != parsed_subtype:
                raise DatasetError(
                    f"{csv_path}:{line_no}: subtype {subtype!r} contradicts the file name's {parsed_subtype!r}"
                )
            if reason := contradiction(label, subtype):
                raise DatasetError(f"{csv_path}:{line_no}: {reason}")
            patient = (row.get("patient_id") or "").strip()
            # The shared MANIFEST stores only the N of personN, and a Kermany name carries the whole id. Any other
            # numeric id (NIH's "1" for 00000001_000.png) is the patient: replacing it would split a patient's
            # images between train and validation.
            if not patient or (patient.isdigit() and follows_kermany_naming(path.name)):
                patient = parsed_patient
            elif patient.lower() == parsed_patient.lower():
                patient = parsed_patient  # "Person7" and person7 are one patient: the name's spelling, for grouping
            split = (row.get("split") or "").strip().lower() or "test"
            if split not in SPLITS:
                raise DatasetError(f"{csv_path}:{line_no}: split {split!r} is not one of {SPLITS}")
            records.append(Record(path, split, label, subtype, patient))
    return records


def discover(source: str | Path) -> list[Record]:
    """All records of a dataset folder (Kaggle or pediatric layout) or CSV manifest, sorted by path."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DatasetError(f"{source}: expected a dataset folder or a CSV manifest")
        records = read_manifest(source)
    else:
        split_root = _find_split_root(source)
        if split_root is None:
            raise DatasetError(
                f"{source}: no train/ or test/ folder found (expected chest_xray/{{train,val,test}}/"
                "{NORMAL,PNEUMONIA}/ or {train,test}/{NORMAL,PNEUMONIA}/, or pass a CSV manifest)"
            )
        records = _records_from_layout(split_root)
        warn_if_names_carry_no_patient(records, source)
    if not records:
        raise DatasetError(f"{source}: no images found")
    return sorted(records, key=lambda r: str(r.path))


SYNTHETIC_README_TITLE = "# SYNTHETIC"  # the first line of the README that ``pneumo data synth`` writes


def is_synthetic_dataset(source: str | Path) -> bool:
    """True for a dataset written by ``pneumo data synth`` (its README says so): numbers on it describe the pipeline,
    not X-rays."""
    source = Path(source).expanduser()
    if not source.exists():
        return False
    for folder in dict.fromkeys([source if source.is_dir() else source.parent, dataset_root(source)]):
        readme = folder / "README.md"
        if readme.is_file():
            with readme.open(encoding="utf-8", errors="replace") as f:
                if f.readline().startswith(SYNTHETIC_README_TITLE):
                    return True
    return False


def dataset_root(source: str | Path) -> Path:
    """The folder that paths in split files are written relative to."""
    source = Path(source).expanduser().resolve()
    if source.is_file():
        return source.parent
    if not source.exists():  # a run's dataset moved away: its split file still reads, its images do not
        return source
    return _find_split_root(source) or source


def with_split(records: Iterable[Record], split: str) -> list[Record]:
    return [replace(r, split=split) for r in records]

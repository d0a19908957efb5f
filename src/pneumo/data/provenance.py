"""Where generated images come from, so that a dataset holding them can still be checked for patient leaks.

``pneumo gan synth`` names its images ``synthetic-<runid>-<class>-<i>.png`` and writes, beside their class folders,
``synthetic-<runid>.provenance.json``: the GAN run and the patients it trained on. A GAN reproduces what it trained
on, so its images carry those patients: a run that validates or tests on one of them is scored on images it has,
in a way, trained on. :func:`check_generated_images` refuses that, for images written into a dataset folder
(``--into-dataset``), which later runs pick up whatever their split; images added with ``--synthetic-from`` are
checked against the GAN run's own ``split.csv`` (:func:`pneumo.training.data.check_source_runs`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pneumo.data.records import DatasetError, Record, synthetic_prefix
from pneumo.data.splits import held_out_patients
from pneumo.utils.atomic import write_json

PROVENANCE_SUFFIX = ".provenance.json"


def provenance_file(image: Path) -> Path:
    """``<train>/synthetic-<runid>.provenance.json`` for ``<train>/<CLASS>/synthetic-<runid>-<class>-<i>.png``."""
    return image.parent.parent / f"{synthetic_prefix(image.name)}{PROVENANCE_SUFFIX}"


def write_provenance(train_dir: Path, prefix: str, gan_run: Path, patients: Iterable[str]) -> Path:
    path = train_dir / f"{prefix}{PROVENANCE_SUFFIX}"
    write_json(path, {"gan_run": str(gan_run.resolve()), "patients_trained_on": sorted(set(patients))})
    return path


def read_provenance_run(path: Path) -> str | None:
    """The GAN run recorded in ``path``, None when there is no readable record."""
    try:
        return str(json.loads(path.read_text())["gan_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_trained_patients(path: Path, example: Path) -> set[str]:
    """The patients the GAN behind the images of ``path`` trained on; a clear error when that is not known."""
    try:
        patients = json.loads(path.read_text())["patients_trained_on"]
    except FileNotFoundError:
        raise DatasetError(
            f"{example}: generated image without {path.name} beside its class folder, so the patients its GAN trained "
            "on are unknown and cannot be checked against this run's validation and test splits. Write the images "
            "again with `pneumo gan synth --into-dataset` (it records them), or move them out of the dataset and "
            "train with --synthetic-from GAN_RUN"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: unreadable provenance of generated images ({type(exc).__name__}: {exc})") from exc
    if not isinstance(patients, list) or not all(isinstance(p, str) for p in patients):
        raise DatasetError(f"{path}: 'patients_trained_on' must be a list of patient ids")
    return set(patients)


def check_generated_images(records: Sequence[Record]) -> None:
    """Refuse generated images (``synthetic-*``) whose GAN trained on patients this split validates or tests on."""
    by_file: dict[Path, list[Record]] = defaultdict(list)
    for r in records:
        if synthetic_prefix(r.name):
            by_file[provenance_file(r.path)].append(r)
    if not by_file:
        return
    held_out = held_out_patients(records)
    for path, images in sorted(by_file.items()):
        leaked = read_trained_patients(path, images[0].path) & held_out
        if leaked:
            raise DatasetError(
                f"{len(images)} generated images (e.g. {images[0].path}) come from a GAN that trained on {len(leaked)} "
                f"patients this run holds out for validation or test (e.g. {', '.join(sorted(leaked)[:3])}; "
                f"{path.name}). Carve the GAN's split (same split seed and settings) or move the images out"
            )

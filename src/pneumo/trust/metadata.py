"""Per-image cues that say how an image was acquired rather than what it shows.

Three sources, each cue NaN where its source does not cover an image:

* **manifests** joined by file name (names are unique in the Kermany set): ``orig_bytes`` (the original JPEG's byte
  size) from the dataset's ``MANIFEST.csv``; ``orig_width``/``orig_height``/``orig_aspect``/``orig_megapixels`` from
  a manifest with ``orig_width``/``orig_height`` columns (the originals subset's, or the dataset's own);
* **the stored files**: byte size and header (width, height, aspect, channels, bit depth), read without decoding;
* **the pixels at the model size**, from the decode-once image cache (fast: no JPEG decoding after the first run):
  intensity mean/spread, border band vs centre statistics, corner brightness (text markers sit there) and the
  spread of a Laplacian (fine texture: noise, resampling and JPEG traces).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.data.cache import CachedImages
from pneumo.data.records import Record
from pneumo.trust.regions import regions

MANIFEST = "MANIFEST.csv"
ORIGINALS_FOLDER = "chest_xray_originals_subset"
_CHUNK = 256

# name -> (what it is, where it comes from)
CUES: dict[str, tuple[str, str]] = {
    "orig_bytes": ("original JPEG size in bytes", "manifest"),
    "orig_width": ("original width in pixels", "originals manifest"),
    "orig_height": ("original height in pixels", "originals manifest"),
    "orig_aspect": ("original width / height", "originals manifest"),
    "orig_megapixels": ("original width x height / 1e6", "originals manifest"),
    "stored_bytes": ("stored file size in bytes", "file"),
    "stored_width": ("stored width in pixels", "file header"),
    "stored_height": ("stored height in pixels", "file header"),
    "stored_aspect": ("stored width / height", "file header"),
    "stored_channels": ("stored channels (mode)", "file header"),
    "stored_bit_depth": ("stored bits per sample", "file header"),
    "mean": ("mean intensity", "pixels at model size"),
    "std": ("intensity standard deviation", "pixels at model size"),
    "border_mean": ("mean of the outer 10 % band", "pixels at model size"),
    "border_std": ("std of the outer 10 % band", "pixels at model size"),
    "centre_mean": ("mean of the central box (area of the band)", "pixels at model size"),
    "centre_std": ("std of the central box", "pixels at model size"),
    "border_minus_centre": ("border mean - centre mean", "pixels at model size"),
    "corner_mean": ("mean of the four 10 % corners", "pixels at model size"),
    "corner_p99": ("99th percentile of the corners (bright markers)", "pixels at model size"),
    "laplacian_std": ("std of the 3x3 Laplacian (noise, resampling, JPEG texture)", "pixels at model size"),
}
FILE_CUES = tuple(k for k, (_, src) in CUES.items() if src != "pixels at model size")
PIXEL_CUES = tuple(k for k, (_, src) in CUES.items() if src == "pixels at model size")


@dataclass
class CueTable:
    """Cue values (float arrays aligned with ``records``, NaN = unknown) and where each came from."""

    records: list[Record]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def subset(self, index: Sequence[int] | np.ndarray) -> CueTable:
        idx = np.asarray(index, dtype=np.int64)
        return CueTable([self.records[i] for i in idx], {k: v[idx] for k, v in self.values.items()}, self.sources)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        return np.column_stack([self.values[n] for n in names]) if names else np.empty((len(self.records), 0))


# --- manifests ---------------------------------------------------------------------------------------------------


def read_manifest_by_name(path: Path, columns: Iterable[str]) -> dict[str, dict[str, float]]:
    """``{file name: {column: float}}`` for the wanted columns a CSV manifest has (empty cells and others skipped)."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        present = [c for c in columns if c in (reader.fieldnames or ())]
        out: dict[str, dict[str, float]] = {}
        if not present or "path" not in (reader.fieldnames or ()):
            return out
        for row in reader:
            values = {}
            for c in present:
                try:
                    values[c] = float(row[c])
                except (TypeError, ValueError):
                    continue
            out[Path(row["path"]).name] = values
    return out


def resolve_originals(originals: str | Path | None, dataset_root: Path) -> tuple[Path | None, Path | None]:
    """``(folder, manifest)`` of the originals copy: ``"auto"`` looks for ``../chest_xray_originals_subset`` next to
    the dataset; a folder may lack a manifest (then only its images are usable); a CSV names its folder."""
    if originals is None:
        return None, None
    if originals == "auto":
        folder = Path(dataset_root).resolve().parent / ORIGINALS_FOLDER
        return (folder, originals_manifest_near(dataset_root)) if folder.is_dir() else (None, None)
    path = Path(originals).expanduser()
    if path.is_file():
        return path.parent, path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such originals folder or manifest")
    return path, (path / MANIFEST if (path / MANIFEST).is_file() else None)


def originals_manifest_near(dataset_root: Path) -> Path | None:
    """The originals subset's manifest next to the dataset folder (``../chest_xray_originals_subset``), if any."""
    candidate = Path(dataset_root).resolve().parent / ORIGINALS_FOLDER / MANIFEST
    return candidate if candidate.is_file() else None


def manifest_of(originals: Path | None) -> Path | None:
    """Accept a folder holding ``MANIFEST.csv`` or the CSV itself."""
    if originals is None:
        return None
    originals = Path(originals)
    path = originals / MANIFEST if originals.is_dir() else originals
    if not path.is_file():
        raise FileNotFoundError(f"{originals}: no {MANIFEST} found")
    return path


# --- files -------------------------------------------------------------------------------------------------------


_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


def read_header(path: Path) -> tuple[float, float, float, float]:
    """``(width, height, channels, bits per sample)`` of an image file without decoding it; NaNs if unreadable."""
    try:
        if path.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return (
                float(ds.Columns),
                float(ds.Rows),
                float(getattr(ds, "SamplesPerPixel", 1)),
                float(getattr(ds, "BitsStored", 16)),
            )
        with Image.open(path) as img:
            width, height = img.size
            return float(width), float(height), float(len(img.getbands())), float(_BITS.get(img.mode, 8))
    except Exception:  # any unreadable header simply leaves the cue unknown for this file
        return (math.nan,) * 4


def file_cues(
    records: Sequence[Record], dataset_manifest: Path | None = None, originals_manifest: Path | None = None
) -> CueTable:
    """Manifest and file-header cues for ``records`` (no pixel is decoded)."""
    table = CueTable(list(records))
    names = [r.name for r in records]
    n = len(records)

    def column(lookup: Mapping[str, Mapping[str, float]], key: str) -> np.ndarray:
        return np.array([lookup.get(name, {}).get(key, math.nan) for name in names], dtype=np.float64)

    own = (
        read_manifest_by_name(dataset_manifest, ("orig_bytes", "orig_width", "orig_height")) if dataset_manifest else {}
    )
    orig = read_manifest_by_name(originals_manifest, ("orig_width", "orig_height")) if originals_manifest else {}
    table.values["orig_bytes"] = column(own, "orig_bytes")
    table.sources["orig_bytes"] = f"{dataset_manifest} (orig_bytes)" if own else "unavailable"
    width, height = column(own, "orig_width"), column(own, "orig_height")
    source = f"{dataset_manifest} (orig_width, orig_height)" if np.isfinite(width).any() else "unavailable"
    if orig:  # the originals manifest fills what the dataset's own manifest lacks
        missing = ~np.isfinite(width)
        width[missing], height[missing] = column(orig, "orig_width")[missing], column(orig, "orig_height")[missing]
        source = f"{originals_manifest} joined by file name"
    with np.errstate(invalid="ignore", divide="ignore"):
        geometry = {
            "orig_width": width,
            "orig_height": height,
            "orig_aspect": width / height,
            "orig_megapixels": width * height / 1e6,
        }
    for key, values in geometry.items():
        table.values[key] = values
        table.sources[key] = source

    headers = np.array([read_header(r.path) for r in records], dtype=np.float64).reshape(n, 4)
    sizes = np.array([_file_size(r.path) for r in records], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        stored = {
            "stored_bytes": sizes,
            "stored_width": headers[:, 0],
            "stored_height": headers[:, 1],
            "stored_aspect": headers[:, 0] / headers[:, 1],
            "stored_channels": headers[:, 2],
            "stored_bit_depth": headers[:, 3],
        }
    for key, values in stored.items():
        table.values[key] = values
        table.sources[key] = "the stored files"
    return table


def _file_size(path: Path) -> float:
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return math.nan


# --- pixels ------------------------------------------------------------------------------------------------------


def pixel_cues(images: CachedImages | np.ndarray) -> dict[str, np.ndarray]:
    """Intensity, border/centre/corner and texture statistics of uint8 ``N x S x S`` images, on the [0, 1] scale."""
    n = len(images)
    out = {name: np.full(n, math.nan) for name in PIXEL_CUES}
    if n == 0:
        return out
    size = images[0].shape[-1]
    reg = regions(size)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        if isinstance(images, CachedImages):
            batch = np.asarray(images.array[images.rows[start:stop]], dtype=np.float32) / 255.0
        else:
            batch = np.asarray(images[start:stop], dtype=np.float32) / 255.0
        flat = batch.reshape(len(batch), -1)
        border, centre, corners = (batch[:, m] for m in (reg.border, reg.centre, reg.corners))
        # 4-neighbour Laplacian on the interior: high-frequency content (noise, JPEG blocks, resampling)
        lap = (
            batch[:, 1:-1, :-2]
            + batch[:, 1:-1, 2:]
            + batch[:, :-2, 1:-1]
            + batch[:, 2:, 1:-1]
            - 4 * batch[:, 1:-1, 1:-1]
        )
        chunk = {
            "mean": flat.mean(1),
            "std": flat.std(1),
            "border_mean": border.mean(1),
            "border_std": border.std(1),
            "centre_mean": centre.mean(1),
            "centre_std": centre.std(1),
            "border_minus_centre": border.mean(1) - centre.mean(1),
            "corner_mean": corners.mean(1),
            "corner_p99": np.percentile(corners, 99, axis=1),
            "laplacian_std": lap.reshape(len(batch), -1).std(1),
        }
        for name, values in chunk.items():
            out[name][start:stop] = values
    return out

"""``pneumo data inspect``: what a dataset holds, what is broken, and where it leaks."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumo.data.decode import ImageDecodeError, decode_bytes
from pneumo.data.records import Record, discover
from pneumo.data.splits import check_disjoint
from pneumo.utils.progress import progress_bar


def _group(records: list[Record]) -> dict[str, list[str]]:
    return {
        "paths": [str(r.path) for r in records],
        "splits": sorted({r.split for r in records}),
        "patients": sorted({r.patient_id for r in records}),
    }


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "median": float(np.median(a)),
        "mean": round(float(a.mean()), 2),
        "max": int(a.max()),
    }


# Near-duplicates: images compared as 32x32 thumbnails by Pearson correlation. Byte hashes miss a copy that was
# re-encoded or resized; this comparison does not. Measured on the shared data (docs/TRUST.md, "Duplicates"): the
# aspect-preserved originals against their squashed 224 px copies correlate at 0.9998 or more; the closest pair of
# different images in the Kaggle copy reaches 0.977. A crop of 2 % per side falls to 0.94-0.98: crops are not caught.
NEAR_DUPLICATE_SIZE = 32
NEAR_DUPLICATE_THRESHOLD = 0.99


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """A zero-mean, unit-norm ``NEAR_DUPLICATE_SIZE`` square thumbnail: dot products are correlations."""
    small = Image.fromarray(gray).resize((NEAR_DUPLICATE_SIZE, NEAR_DUPLICATE_SIZE), Image.Resampling.BILINEAR)
    v = np.asarray(small, dtype=np.float32).ravel()
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v  # a flat image correlates with nothing


def compare_thumbnails(
    thumbs: np.ndarray, splits: list[str], threshold: float, *, block: int = 512
) -> tuple[list[tuple[int, int, float]], tuple[int, int, float] | None]:
    """One blockwise pass over all pairs (memory ``block * n``): the index pairs ``i < j`` that correlate at
    ``threshold`` or more, and the most similar pair in different splits (None with a single split)."""
    labels = np.asarray(splits)
    pairs: list[tuple[int, int, float]] = []
    closest: tuple[int, int, float] | None = None
    for start in range(0, len(thumbs), block):
        sims = thumbs[start : start + block] @ thumbs.T
        for r, c in zip(*np.nonzero(sims >= threshold), strict=True):
            if start + r < c:
                pairs.append((start + int(r), int(c), float(sims[r, c])))
        sims[labels[start : start + block, None] == labels[None, :]] = -np.inf
        r, c = np.unravel_index(int(np.argmax(sims)), sims.shape)
        if np.isfinite(sims[r, c]) and (closest is None or sims[r, c] > closest[2]):
            closest = (start + int(r), int(c), float(sims[r, c]))
    return pairs, closest


def inspect_dataset(source: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Counts, patients, image sizes, unreadable files, exact and near duplicates, and cross-split patients."""
    records = discover(source)
    counts = Counter((r.split, r.label, r.subtype or "unknown") for r in records)
    per_patient = Counter(r.patient_id for r in records)
    widths, heights = [], []
    unreadable: list[dict[str, str]] = []
    by_hash: dict[str, list[Record]] = defaultdict(list)
    decoded: list[Record] = []
    digests: list[str] = []
    thumbs: list[np.ndarray] = []
    for r in progress_bar(records, desc="inspecting", unit="img", disable=not progress):
        try:
            data = r.path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            by_hash[digest].append(r)
            gray = decode_bytes(data, str(r.path))
        except (ImageDecodeError, OSError) as exc:
            unreadable.append({"path": str(r.path), "reason": getattr(exc, "reason", str(exc))})
            continue
        heights.append(gray.shape[0])
        widths.append(gray.shape[1])
        decoded.append(r)
        digests.append(digest)
        thumbs.append(thumbnail(gray))
    duplicates = [_group(group) for group in by_hash.values() if len(group) > 1]
    matrix = np.stack(thumbs) if thumbs else np.empty((0, NEAR_DUPLICATE_SIZE**2), np.float32)
    similar, closest = compare_thumbnails(matrix, [r.split for r in decoded], NEAR_DUPLICATE_THRESHOLD)
    near = [
        {**_group([decoded[i], decoded[j]]), "similarity": round(sim, 4)}
        for i, j, sim in similar
        if digests[i] != digests[j]
    ]
    cross = check_disjoint(records)
    return {
        "source": str(Path(source).resolve()),
        "n_images": len(records),
        "counts": [
            {"split": s, "label": lab, "subtype": sub, "images": n} for (s, lab, sub), n in sorted(counts.items())
        ],
        "patients": {
            "n_patients": len(per_patient),
            "images_per_patient": _stats(list(per_patient.values())),
        },
        "image_size": {"width": _stats(widths), "height": _stats(heights)},
        "unreadable": unreadable,
        "duplicates": {
            "groups": duplicates,
            "n_groups": len(duplicates),
            "n_cross_split_groups": sum(len(d["splits"]) > 1 for d in duplicates),
            "n_groups_several_patients": sum(len(d["patients"]) > 1 for d in duplicates),
        },
        "near_duplicates": {
            "thumbnail": NEAR_DUPLICATE_SIZE,
            "threshold": NEAR_DUPLICATE_THRESHOLD,
            "pairs": near,
            "n_pairs": len(near),
            "n_cross_split_pairs": sum(len(d["splits"]) > 1 for d in near),
            "closest_across_splits": None
            if closest is None
            else {**_group([decoded[closest[0]], decoded[closest[1]]]), "similarity": round(closest[2], 4)},
        },
        "patients_in_several_splits": {"n": len(cross), "patients": cross},
    }

"""``pneumo data inspect``: what a dataset holds, what is broken, and where it leaks."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.decode import ImageDecodeError, decode_bytes
from pneumo.data.records import discover
from pneumo.data.splits import check_disjoint
from pneumo.utils.progress import progress_bar


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


def inspect_dataset(source: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Counts, patients, image sizes, unreadable files, exact duplicates and cross-split patients."""
    records = discover(source)
    counts = Counter((r.split, r.label, r.subtype or "unknown") for r in records)
    per_patient = Counter(r.patient_id for r in records)
    widths, heights = [], []
    unreadable: list[dict[str, str]] = []
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in progress_bar(records, desc="inspecting", unit="img", disable=not progress):
        try:
            data = r.path.read_bytes()
            by_hash[hashlib.sha256(data).hexdigest()].append((str(r.path), r.split))
            gray = decode_bytes(data, str(r.path))
        except (ImageDecodeError, OSError) as exc:
            unreadable.append({"path": str(r.path), "reason": getattr(exc, "reason", str(exc))})
            continue
        heights.append(gray.shape[0])
        widths.append(gray.shape[1])
    duplicates = [
        {"paths": [p for p, _ in group], "splits": sorted({s for _, s in group})}
        for group in by_hash.values()
        if len(group) > 1
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
        },
        "patients_in_several_splits": {"n": len(cross), "patients": cross},
    }

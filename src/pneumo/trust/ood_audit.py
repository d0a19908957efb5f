"""``pneumo audit ood``: how many images of any folder or manifest a model's out-of-distribution check flags.

Images go through :class:`pneumo.inference.Predictor`, the path of ``pneumo predict`` and ``pneumo serve`` (run
folder or ONNX export alike), so the rate printed is the rate users will see.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pneumo.data.records import DatasetError

SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})


def image_files(data: str | Path) -> tuple[Path, list[Path]]:
    """``(root, files)``: every image of a CSV manifest (all splits), or every image file under a folder."""
    from pneumo.data.records import discover, is_junk

    source = Path(data).expanduser()
    if source.suffix.lower() == ".csv":
        return source.parent, [r.path for r in discover(source)]
    if not source.is_dir():
        raise DatasetError(f"{source}: neither a folder nor a CSV manifest")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    files = [p for p in files if not is_junk(p.relative_to(source))]
    return source, files


def audit_ood(model: str | Path, data: str | Path, *, device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """Flag rate of the model's check over ``data``, overall and per top-level sub-folder (e.g. a label)."""
    from pneumo.data.decode import ImageDecodeError
    from pneumo.inference import Predictor

    predictor = Predictor.load(model, device=device, batch_size=batch_size)
    if not predictor.model_card()["ood"]["active"]:
        raise ValueError(f"{model} carries no usable out-of-distribution check (fit one with `pneumo audit ood-fit`)")
    root, files = image_files(data)
    if not files:
        raise DatasetError(f"{data}: no image files found")
    flagged: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    unreadable: list[str] = []
    for start in range(0, len(files), batch_size):
        prepared = []
        for path in files[start : start + batch_size]:
            try:
                prepared.append(predictor.prepare(path, keep_original=False))
            except ImageDecodeError as exc:
                unreadable.append(str(exc))
        for result in predictor.predict_prepared(prepared):
            source = Path(result.source).resolve()
            rel = source.relative_to(root.resolve()) if source.is_relative_to(root.resolve()) else None
            group = (rel.parts[0] if len(rel.parts) > 1 else ".") if rel else source.parent.name
            seen[group] += 1
            flagged[group] += not result.in_distribution
    n, n_flagged = sum(seen.values()), sum(flagged.values())
    return {
        "model": str(model),
        "data": str(data),
        "method": predictor.meta.ood.get("method"),
        "threshold": predictor.meta.ood.get("threshold"),
        "n": n,
        "n_flagged": n_flagged,
        "flagged_rate": n_flagged / n if n else float("nan"),
        "n_unreadable": len(unreadable),
        "unreadable": unreadable[:20],
        "groups": {
            g: {"n": seen[g], "n_flagged": flagged[g], "flagged_rate": flagged[g] / seen[g]} for g in sorted(seen)
        },
    }

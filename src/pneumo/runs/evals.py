"""The evaluations a run folder holds (``eval-*/metrics.json``) and whether they describe the stored model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.runs.format import RunFolderError


def read_json_file(path: Path) -> Any:
    """A run folder's JSON file (``eval-*/metrics.json``...); a damaged one is a :class:`RunFolderError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); delete it and run the command that wrote it again") from None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` and the like; ``[]`` when absent, a :class:`RunFolderError` naming a damaged line."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunFolderError(f"{path}:{n} is damaged ({exc}); delete that line or restore the file") from None
    return rows


# Evaluation fields a model shows to its users (HTTP /v1/model, ONNX metadata): no file system paths.
_PRIVATE_EVAL_FIELDS = ("run_dir", "plots")


def evaluation_is_current(result: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Whether an evaluation's numbers hold for the model as the run stores it now (``meta``: checkpoint.json): scored
    with the same operating point (threshold, method, weights) and calibration temperature. A later ``pneumo evaluate``
    with another method, or a resume that changed the weights, leaves older evaluations describing another model."""
    temperature = (result.get("calibration") or {}).get("temperature")
    return result.get("operating_point") == meta.get("operating_point") and temperature == meta.get("temperature")


def read_eval_metrics(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"eval-chest-xray-test": {...}, ...}`` from the run's ``eval-*/metrics.json`` files, without paths.

    Only evaluations that hold for the stored model (:func:`evaluation_is_current`); unreadable files are left out."""
    out: dict[str, Any] = {}
    for path in sorted(run_dir.glob("eval-*/metrics.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(result, dict) or not evaluation_is_current(result, meta):
            continue
        public = {k: v for k, v in result.items() if k not in _PRIVATE_EVAL_FIELDS}
        if isinstance(result.get("dataset"), dict):
            public["dataset"] = {k: result["dataset"].get(k) for k in ("name", "own")}
        out[path.parent.name] = public
    return out

"""The run folder's format: its file names, ``checkpoint.json`` (reader and writer) and the weights' digest.

JSON only (no torch), so that an ONNX-only deployment reads it too. A run folder holds ``config.yaml split.csv
env.json metrics.jsonl best.safetensors last.safetensors checkpoint.json last.state.safetensors last.state.json``.
``checkpoint.json`` is the contract other packages read::

    {"format": 1, "pneumo_version", "task", "class_names" (task classes only),
     "model": {"name", "num_outputs" (incl. dummy), "in_chans", "kwargs"}, "dummy_class",
     "preprocess": PreprocessContract.to_dict(), "best": {"epoch", "val_auc"}, "last": {"epoch"},
     "operating_point": null, "temperature": null, "ood": null}

The last three are filled later by evaluation/trust code through :func:`update_run_meta`. The resumable training
state (``last.state.*``) is :mod:`pneumo.runs.state`.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pneumo.utils.atomic import write_json
from pneumo.utils.digest import file_sha256
from pneumo.utils.errors import PneumoError

FORMAT = 1
META_FILE = "checkpoint.json"
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
METRICS_FILE = "metrics.jsonl"
STATE_TENSORS = "last.state.safetensors"
STATE_JSON = "last.state.json"
WEIGHT_FILES = {"best": "best.safetensors", "last": "last.safetensors"}


class ModelLoadError(PneumoError, ValueError):
    """A run folder or ONNX file that cannot be used for prediction; the message says why."""


class RunFolderError(PneumoError, ValueError):
    """A run folder's file is missing or damaged; the message names the file and the way out."""


def weights_digest(run_dir: Path) -> str:
    """SHA-256 prefix of ``best.safetensors``: what is fitted on a run's weights after training (operating point,
    temperature, OOD detector) records it, and is used only while the weights are the same."""
    return file_sha256(run_dir / WEIGHT_FILES["best"])[:16]


@contextmanager
def _meta_lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".checkpoint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_run_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pneumo run folder (no {META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(
            f"{path} is damaged ({exc}); restore it from a copy of the run, or train the run again"
        ) from None
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path} is damaged (not a JSON object); restore it from a copy of the run")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def update_run_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level fields of ``checkpoint.json`` (read-modify-write under a lock, atomic); returns the new meta."""
    run_dir = Path(run_dir)
    with _meta_lock(run_dir):
        meta = read_run_meta(run_dir)
        meta.update(fields)
        write_json(run_dir / META_FILE, meta)
    return meta


def write_run_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Create or refresh ``checkpoint.json``; fields set by others are kept: the OOD parameters (refitted by
    training when the best epoch changed), and the operating point and temperature while the best weights they
    were fitted on stay the best ones (a resumed run that finds a better epoch drops them: evaluate it again)."""
    run_dir = Path(run_dir)
    with _meta_lock(run_dir):
        path = run_dir / META_FILE
        current = json.loads(path.read_text()) if path.is_file() else {}
        same_best = current.get("best") == meta.get("best")
        kept = ("operating_point", "temperature", "ood") if same_best else ("ood",)
        merged = {**meta, **{k: current[k] for k in kept if current.get(k)}}
        write_json(path, merged)

"""What a run was made with: ``env.json`` (versions, machine, git commit, command line) and ``metrics.jsonl``."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

import pneumo
from pneumo.utils.provenance import git_commit

log = logging.getLogger(__name__)


def environment(device: torch.device, command: list[str] | None = None, world_size: int = 1) -> dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pneumo": pneumo.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "world_size": world_size,
        "git_commit": git_commit(),
        "command": command if command is not None else sys.argv,
    }


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per epoch, flushed and fsynced (an append of one line is atomic enough for a log)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            rows.append(json.loads(lines[-1]))
        except json.JSONDecodeError:  # cut off mid-write (a full disk, a kill): the resume rewrites it from the state
            log.warning("%s: its last line is incomplete and is left out", path)
    return rows


def config_changes(
    saved: dict[str, Any] | None, current: dict[str, Any], free: frozenset[str] = frozenset()
) -> list[str]:
    """``key: saved -> current`` for each setting (dotted, nested ones too) that differs, outside ``free`` (the
    top-level settings a resume may change); empty for a state saved before the config was recorded in it (``saved``
    None). Settings a later pneumo added or dropped are not compared; ``model_kwargs`` is compared whole."""
    if saved is None:
        return []

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "model_kwargs" else {prefix + k: v})
        return out

    a, b = flat(saved), flat(current)
    # settings both know: one a later pneumo added (or dropped) is no edit of this run's
    keys = sorted(k for k in a.keys() & b.keys() if k.split(".")[0] not in free and a[k] != b[k])
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]

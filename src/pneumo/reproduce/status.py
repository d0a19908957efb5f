"""``runs/<row>/reproduce.json``: written when an experiment of a suite has finished and been evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATUS_FILE = "reproduce.json"
# written when a row starts: what it was started from, checked before it is resumed
STARTED_FILE = "reproduce.started.json"


def read_status(run_dir: Path, name: str = STATUS_FILE) -> dict[str, Any]:
    """``run_dir/reproduce.json``, written when the experiment finished (``{}`` before); with ``name=STARTED_FILE``
    what the row was started from (``{}`` for a row started by an earlier version, which wrote none)."""
    path = run_dir / name
    return json.loads(path.read_text()) if path.exists() else {}


def evaluated_run(run_dir: Path, status: dict[str, Any]) -> Path:
    """The classifier run that was evaluated: ``run_dir`` itself, or its ``classifier/`` for a GAN.

    Stored relative to ``run_dir``; statuses of earlier versions hold an absolute path, of which the part below the
    run folder is kept, so an out folder that was moved or copied reads its own runs, never the original's.
    """
    stored = Path(status.get("evaluated_run", "."))
    if not stored.is_absolute():
        return run_dir / stored
    parts = stored.parts
    if run_dir.name in parts:
        below = parts[len(parts) - parts[::-1].index(run_dir.name) :]
        return run_dir.joinpath(*below)
    return stored

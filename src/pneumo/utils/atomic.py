"""Atomic file writes: a temp file in the same folder, fsync, ``os.replace``, fsync of the folder; readers never see
half a file."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_UMASK_AT_IMPORT = os.umask(0)
os.umask(_UMASK_AT_IMPORT)


def _umask() -> int:
    """The process's umask now: Linux shows it in /proc (os.umask can only be read by setting it, which races with
    other threads creating files); elsewhere the one read at import."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


def _mode_for(path: Path) -> int:
    """The permissions of a file that replaces ``path``: those of the file it replaces, else the usual ones."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable: without it, after a power loss the renames of several files (the best weights, the
    training state, checkpoint.json) may reach the disk in any order. Where a folder cannot be opened (Windows),
    nothing is done."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and a writer may replace the file (safetensors does): the permissions are set last
        os.chmod(tmp, _mode_for(path))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str, allow_nan=True) + "\n")


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save, atomically (tensors made contiguous, shared storage cloned), with a canonical header.

    safetensors writes its metadata map in hash order, which varies between calls: identical weights got different
    file digests, and those digests name models and tie fitted thresholds and OOD detectors to weights. The header is
    therefore rewritten with sorted keys (same JSON content, padded to 8 bytes as the format does; the tensor data and
    its offsets are untouched), so the same tensors and metadata always give the same bytes.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    blob = memoryview(save(tensors, metadata=metadata))
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(bytes(blob[8 : 8 + n])), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with atomic_open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.write(blob[8 + n :])

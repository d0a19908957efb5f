"""SHA-256 of a file, read in blocks (weights files are tens of MB)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()

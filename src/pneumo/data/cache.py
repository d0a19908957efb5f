"""Decode-once image cache: uint8 S x S rows in one memory-mapped file per preprocessing contract.

Layout of ``<cache_root>/<contract fingerprint>-<decoder key>/``: ``images.u8`` (raw uint8, rows x S x S, grown in
place), ``index.json`` (``{path: {size, mtime_ns, ctime_ns, ino, row}}`` plus failures) and ``lock``. A file is
identified by its resolved path, byte size, modification and status-change times and inode (the ctime catches a
same-size replacement that kept the mtime, as ``cp -p`` or ``rsync -a`` do; a chmod also re-decodes, which costs
time, not correctness). A changed or added file is decoded into a new row: rows that other processes' open views
read are never rewritten (a changed file's old row is left unused). Corrupt or non-image files are recorded with the
reason and skipped; a file that could not be read (permissions, I/O) is tried again by the next build.

Hand-written because no maintained library offers an incremental, multi-process-safe uint8 image cache keyed by
file fingerprints and a preprocessing contract (torchvision datasets decode every epoch).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL

from pneumo.data.decode import ImageDecodeError
from pneumo.data.preprocess import PreprocessContract, preprocess_image
from pneumo.utils.atomic import write_json
from pneumo.utils.progress import progress_bar

log = logging.getLogger(__name__)

_FLUSH_EVERY = 512

# The pixels of a row depend on the contract and on the code that decodes and resizes (decode.py, preprocess.py) and
# Pillow's filters. Bump DECODER_REVISION with any change to those pixels: caches built by other code are then not
# reused (the file fingerprints alone would accept them).
# 2: letterbox resizes before padding (the bars' edges and the image's position moved by up to a pixel).
# 3: colour DICOM files decode (to luma) instead of failing (a cache remembers failures: they are tried again), and
#    multi-page TIFFs fail instead of giving their first page.
DECODER_REVISION = 3


def decoder_key() -> str:
    """The decoding code's revision and the libraries whose versions can change pixels: Pillow's filters and
    pydicom's pixel handling (its VOI LUT behaviour changed between 2.x and 3.x)."""
    return f"d{DECODER_REVISION}-pil{PIL.__version__}-pydicom{_version('pydicom')}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def default_cache_root() -> Path:
    env = os.environ.get("PNEUMO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pneumo" / "images"


@dataclass
class CachedImages:
    """A read-only view of cached rows for a list of files. Picklable: the memmap is reopened in each worker."""

    file: Path
    image_size: int
    rows: np.ndarray  # row in the cache file for each requested path, -1 where it failed
    failures: list[tuple[Path, str]] = field(default_factory=list)
    _array: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            n_rows = self.file.stat().st_size // (self.image_size * self.image_size)
            self._array = np.memmap(
                self.file, dtype=np.uint8, mode="r", shape=(n_rows, self.image_size, self.image_size)
            )
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        row = int(self.rows[i])
        if row < 0:
            raise IndexError(f"image {i} failed to decode and is not cached")
        return np.asarray(self.array[row])

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the requested paths that are cached."""
        return self.rows >= 0


def _decode_one(args: tuple[str, PreprocessContract]) -> tuple[np.ndarray | None, str | None, bool]:
    """``(pixels, failure reason, whether the failure was reading the file, which may pass)``."""
    path, contract = args
    try:
        return preprocess_image(path, contract), None, False
    except ImageDecodeError as exc:
        return None, exc.reason, isinstance(exc.__cause__, OSError)
    except Exception as exc:  # an unexpected decoder failure must not kill a whole build
        return None, f"{type(exc).__name__}: {exc}", False


def _fingerprint(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


# marks a failure to be tried again: no file has this fingerprint
_RETRY = {"size": -1, "mtime_ns": -1, "ctime_ns": -1, "ino": -1}


def _unchanged(known: dict, now: dict[str, int]) -> bool:
    """Whether ``known`` (an index entry) describes the file as it is ``now``. Entries of caches written before
    ctime and inode were recorded match on size and mtime, and take ctime and inode from ``now`` (trusted once)."""
    if "ctime_ns" not in known and known["size"] == now["size"] and known["mtime_ns"] == now["mtime_ns"]:
        known.update(now)
    return all(known.get(k) == v for k, v in now.items())


class ImageCache:
    """Cache for one preprocessing contract. ``build(paths)`` returns :class:`CachedImages` for those paths."""

    def __init__(self, contract: PreprocessContract, root: Path | None = None):
        self.contract = contract
        self.dir = (root or default_cache_root()) / f"{contract.fingerprint()}-{decoder_key()}"
        self.file = self.dir / "images.u8"
        self.index_file = self.dir / "index.json"
        self._row_bytes = contract.image_size * contract.image_size

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several ranks or processes may build at once
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_index(self) -> dict:
        """The folder's index, or a fresh one when it belongs to no other pixels than these.

        The folder is shared by every contract with this fingerprint (mean/std act after the cache), so only the
        fingerprinted fields must match: resetting on a mean/std difference would renumber rows that open views of
        another contract still read. An index whose pixel file is missing or shorter than its rows is stale (the
        file was deleted or truncated), and reading it would give black images: it is reset too.

        A new index numbers its rows after those already in the pixel file: processes may still read them through
        an index they loaded before (a damaged index restarted at row 0 and overwrote their pixels with others).
        """
        size = self.file.stat().st_size if self.file.exists() else -1
        if self.index_file.exists():
            try:
                index = json.loads(self.index_file.read_text())
                stored = PreprocessContract.from_dict(index.get("contract") or {})
                n_rows = _check_index(index)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a damaged index: start a new one
                log.warning("%s is unreadable (%s): the cache is rebuilt", self.index_file, exc)
            else:
                if stored.fingerprint() == self.contract.fingerprint() and size >= n_rows * self._row_bytes:
                    return index
        kept = max(size, 0) // self._row_bytes  # rows other processes may still read: never written again
        return {"contract": self.contract.to_dict(), "entries": {}, "failures": {}, "n_rows": kept}

    def _save_index(self, index: dict) -> None:
        write_json(self.index_file, index, indent=None)

    def build(self, paths: Sequence[Path | str], *, workers: int = 0, progress: bool = True) -> CachedImages:
        """Decode what is missing or changed, then return the view for ``paths`` (in order)."""
        resolved = [str(Path(p).resolve()) for p in paths]
        with self._locked():
            index = self._load_index()
            entries, failures = index["entries"], index["failures"]
            todo: list[tuple[str, dict[str, int]]] = []
            upgraded = 0  # entries of an older index given their ctime and inode
            for p in dict.fromkeys(resolved):
                try:
                    now = _fingerprint(os.stat(p))
                except OSError as exc:
                    failures[p] = {**_RETRY, "reason": f"cannot read file ({exc.strerror})"}
                    entries.pop(p, None)
                    continue
                known = entries.get(p) or failures.get(p)
                upgraded += bool(known) and "ctime_ns" not in known
                if not known or not _unchanged(known, now):
                    todo.append((p, now))
            if todo:
                self._decode_into(todo, index, workers=workers, progress=progress)
            elif upgraded:
                self._save_index(index)
            rows = np.array([entries[p]["row"] if p in entries else -1 for p in resolved], dtype=np.int64)
            failed = [(Path(p), failures[p]["reason"]) for p in dict.fromkeys(resolved) if p not in entries]
        return CachedImages(self.file, self.contract.image_size, rows, failed)

    def _decode_into(
        self, todo: list[tuple[str, dict[str, int]]], index: dict, *, workers: int, progress: bool
    ) -> None:
        entries, failures = index["entries"], index["failures"]
        out = self._open_for_writing(index["n_rows"] + len(todo))
        jobs = ((p, self.contract) for p, _ in todo)
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
        results = pool.map(_decode_one, jobs, chunksize=16) if pool else map(_decode_one, jobs)
        bar = progress_bar(
            total=len(todo), desc=f"caching {self.contract.image_size}px", unit="img", disable=not progress
        )
        try:
            for done, ((path, now), (pixels, reason, unreadable)) in enumerate(zip(todo, results, strict=True), 1):
                if pixels is None:
                    failures[path] = {**(_RETRY if unreadable else now), "reason": reason}
                    entries.pop(path, None)  # its old row, if any, is left unused
                else:
                    # always a new row: a running training may be reading the old one (left unused from now on)
                    row = index["n_rows"]
                    index["n_rows"] += 1
                    out[row] = pixels
                    entries[path] = {**now, "row": row}
                    failures.pop(path, None)
                bar.update()
                if done % _FLUSH_EVERY == 0:
                    self._commit(out, index)
            self._commit(out, index)
        finally:
            bar.close()
            if pool:
                pool.shutdown(cancel_futures=True)

    def _open_for_writing(self, n_rows: int) -> np.memmap:
        """Grow the file (in place: old rows and open readers stay valid) and map it for writing.

        The disk space is reserved first (``posix_fallocate``): a sparse file on a full disk let the first write
        through the map kill the process with SIGBUS, without a message; now the full disk is an ``OSError``."""
        needed = max(n_rows, 1) * self._row_bytes
        if not self.file.exists() or self.file.stat().st_size < needed:
            with open(self.file, "ab") as f:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, needed)
                else:  # no such call (macOS): sparse growth
                    f.truncate(needed)
        capacity = self.file.stat().st_size // self._row_bytes
        s = self.contract.image_size
        return np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(capacity, s, s))

    def _commit(self, out: np.memmap, index: dict) -> None:
        out.flush()  # pixels reach the file before the index that points at them
        self._save_index(index)


def _check_index(index: dict) -> int:
    """``n_rows`` of an index whose shape is sound; ``ValueError`` otherwise (valid JSON of another shape failed
    every later build with a KeyError)."""
    n_rows = index["n_rows"]
    entries, failures = index["entries"], index["failures"]
    if not isinstance(n_rows, int) or n_rows < 0 or not isinstance(entries, dict) or not isinstance(failures, dict):
        raise ValueError("n_rows, entries or failures of the wrong type")
    if any(not isinstance(e, dict) or not isinstance(e.get("row"), int) or not 0 <= e["row"] < n_rows
           for e in entries.values()):  # fmt: skip
        raise ValueError("an entry without a row of the file")
    return n_rows

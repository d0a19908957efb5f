"""Find, describe and check the shipped models (see :mod:`pneumo.zoo`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.runs.format import META_FILE, ModelLoadError
from pneumo.utils.digest import file_sha256

ZOO_DIR = Path(__file__).resolve().parent
INDEX_FILE = "index.json"
CHECKSUMS_FILE = "SHA256SUMS"
PREFIX = "pneumo/"
DEFAULT_ALIAS = "default"
_VERSIONED = re.compile(r"^(?P<base>[a-z0-9][a-z0-9-]*?)-v(?P<version>[0-9]+)$")


class ZooError(ModelLoadError):
    """An unknown shipped model name, or shipped files that do not match their checksum list."""


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its versioned ``name`` (``normal-pneumonia-v1``), folder and what ``pneumo models`` shows."""

    name: str
    path: Path
    description: str = ""
    default: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # the model's entry in index.json

    @property
    def alias(self) -> str:
        match = _VERSIONED.match(self.name)
        return match["base"] if match else self.name

    def checkpoint(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text(encoding="utf-8"))

    def test_metrics(self) -> dict[str, dict[str, float]]:
        """``{"roc_auc": {"point", "low", "high"}, "accuracy": ...}`` of the primary section of the official-test
        evaluation shipped with the model (empty when there is none)."""
        for path in sorted(self.path.glob("eval-*-test/metrics.json")):
            result = json.loads(path.read_text(encoding="utf-8"))
            if not (result.get("dataset") or {}).get("own"):
                continue
            ci = result["metrics"][result["primary"]]["ci"]
            return {k: ci[k] for k in ("roc_auc", "accuracy") if k in ci}
        return {}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict[str, Any]:
        """What ``pneumo models`` lists."""
        meta = self.checkpoint()
        return {
            "name": PREFIX + self.name,
            "alias": PREFIX + self.alias,
            "default": self.default,
            "task": meta["task"],
            "classes": meta["class_names"],
            "family": meta["model"]["name"],
            "image_size": meta["preprocess"]["image_size"],
            "test": self.test_metrics(),
            "size_bytes": self.size_bytes(),
            "description": self.description,
        }


def _index(zoo_dir: Path) -> dict[str, Any]:
    path = zoo_dir / INDEX_FILE
    if not path.is_file():
        return {"default": None, "models": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def list_models(zoo_dir: Path = ZOO_DIR) -> list[ShippedModel]:
    """Every shipped model, by name and version."""
    index = _index(zoo_dir)
    default = _latest(index, index.get("default"))
    models = [
        ShippedModel(name, zoo_dir / name, entry.get("description", ""), name == default, entry)
        for name, entry in index.get("models", {}).items()
    ]
    return sorted(models, key=lambda m: (_base(m.name), _version(m.name)))


def _base(name: str) -> str:
    match = _VERSIONED.match(name)
    return match["base"] if match else name


def _version(name: str) -> int:
    match = _VERSIONED.match(name)
    return int(match["version"]) if match else 0


def _latest(index: dict[str, Any], alias: str | None) -> str | None:
    """The versioned name ``alias`` stands for: itself when versioned, else its highest version."""
    names = list(index.get("models", {}))
    if alias in names:
        return alias
    versions = [n for n in names if _base(n) == alias]
    return max(versions, key=_version) if versions else None


def _lookup(index: dict[str, Any], ref: str) -> str | None:
    """The versioned name ``ref`` stands for (with or without ``pneumo/``; ``default``), or None."""
    wanted = ref.removeprefix(PREFIX)
    return _latest(index, index.get("default") if wanted == DEFAULT_ALIAS else wanted)


def is_model_name(ref: str | os.PathLike[str], zoo_dir: Path = ZOO_DIR) -> bool:
    """Whether ``ref`` names a shipped model (and is not a file or folder that exists)."""
    return not Path(ref).exists() and _lookup(_index(zoo_dir), str(ref)) is not None


def shipped_model(ref: str, zoo_dir: Path = ZOO_DIR, *, verify: bool = True) -> ShippedModel:
    """The shipped model ``ref`` names (``pneumo/normal-pneumonia``, ``normal-pneumonia-v1``, ``default``), its
    files checked against its checksum list; :class:`ZooError` naming the known models otherwise."""
    name = _lookup(_index(zoo_dir), ref)
    if name is None:
        known = ", ".join(PREFIX + m.name for m in list_models(zoo_dir)) or "none"
        raise ZooError(
            f"{ref}: neither a run folder nor an .onnx file, nor a shipped model (shipped: {known}; "
            "see `pneumo models`)"
        )
    model = next(m for m in list_models(zoo_dir) if m.name == name)
    if verify:
        verify_checksums(model.path)
    return model


def default_model(zoo_dir: Path = ZOO_DIR) -> ShippedModel:
    return shipped_model(DEFAULT_ALIAS, zoo_dir)


def resolve_model(ref: str | os.PathLike[str], zoo_dir: Path = ZOO_DIR) -> Path:
    """``ref`` itself when it exists (a run folder, ``checkpoint.json`` or ``.onnx`` file); otherwise the folder of
    the shipped model it names, after checking its checksums."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    return shipped_model(str(ref), zoo_dir).path


def read_checksums(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` from ``folder/SHA256SUMS``."""
    listed: dict[str, str] = {}
    path = folder / CHECKSUMS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ZooError(f"{path}: cannot read the checksum list ({exc.strerror or exc})") from exc
    for n, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or ".." in Path(name).parts:
            raise ZooError(f"{path}: line {n} is not '<sha256>  <file>'")
        listed[name] = digest
    return listed


def verify_checksums(folder: Path) -> None:
    """Every file in ``folder`` listed in its ``SHA256SUMS`` with the digest it has, and every listed file there."""
    listed = read_checksums(folder)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {CHECKSUMS_FILE}
    present = {p for p in present if "__pycache__" not in p}
    if missing := sorted(set(listed) - present):
        raise ZooError(f"{folder}: shipped file(s) missing: {', '.join(missing)} (reinstall pneumo)")
    if extra := sorted(present - set(listed)):
        raise ZooError(f"{folder}: file(s) not in {CHECKSUMS_FILE}: {', '.join(extra)} (reinstall pneumo)")
    for name, digest in listed.items():
        if file_sha256(folder / name) != digest:
            raise ZooError(
                f"{folder / name}: SHA-256 does not match {CHECKSUMS_FILE}; the shipped model was changed or is "
                "damaged (reinstall pneumo)"
            )


def write_checksums(folder: Path) -> Path:
    """Write ``folder/SHA256SUMS`` for every other file in it (sorted; ``sha256sum -c`` reads it)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    lines = [f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    out = folder / CHECKSUMS_FILE
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def cache_home() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pneumo" / "models"


def writable_copy(ref: str | os.PathLike[str], zoo_dir: Path = ZOO_DIR, dest: Path | None = None) -> Path:
    """``ref`` itself when it exists; for a shipped model, a copy of its folder under ``~/.cache/pneumo/models``
    that ``pneumo evaluate`` may write into (the installed package stays as shipped). The copy is made once, and
    again when its weights are not the shipped ones; evaluations written there stay."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    model = shipped_model(str(ref), zoo_dir)
    target = (dest or cache_home()) / model.name
    weights = "best.safetensors"
    shipped_digest = read_checksums(model.path).get(weights)
    if not (target / weights).is_file() or file_sha256(target / weights) != shipped_digest:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model.path, target)
    return target


def names_a_model(ref: str | os.PathLike[str]) -> bool:
    """Whether the first argument of ``pneumo predict`` names a model rather than an image: a run folder (with
    ``checkpoint.json``), ``checkpoint.json`` or an ``.onnx`` file; or a path that does not exist and has no image
    file's suffix (a shipped model's name, or a mistyped run folder, reported as such). Anything else is an image or
    a folder of images."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return (path / META_FILE).is_file()
    if path.exists():
        return path.name == META_FILE or path.suffix.lower() == ".onnx"
    return is_model_name(ref) or path.suffix.lower() in ("", ".onnx", ".json")


def describe(ref: str | os.PathLike[str], model_id: str) -> str:
    """How ``pneumo predict`` names the model it used: ``pneumo/normal-pneumonia-v1`` (a shipped one; ``default``
    says so) or the run's model id."""
    if not is_model_name(ref):
        return model_id
    model = shipped_model(str(ref), verify=False)
    return PREFIX + model.name + (" (the default shipped model)" if model.default else "")


def model_rows(summaries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``pneumo models``'s table: one row per :meth:`ShippedModel.summary`."""

    def ci(value: dict[str, float] | None) -> str:
        return f"{value['point']:.3f} [{value['low']:.3f}, {value['high']:.3f}]" if value else "n/a"

    return [
        {
            "name": s["name"] + (" (default)" if s["default"] else ""),
            "task": s["task"],
            "family": s["family"],
            "image size": f"{s['image_size']} px",
            "test ROC AUC": ci(s["test"].get("roc_auc")),
            "test accuracy": ci(s["test"].get("accuracy")),
            "files": f"{s['size_bytes'] / 1e6:.1f} MB",
        }
        for s in summaries
    ]

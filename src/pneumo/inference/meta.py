"""What a trained model carries besides its weights, read from a run folder or from ONNX metadata.

One :class:`ModelMeta` serves both sources, so a run and its ONNX export predict with the same contract, labels,
operating point, temperature and OOD parameters. The run folder's format is :mod:`pneumo.runs`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.data.preprocess import PreprocessContract
from pneumo.runs.evals import read_eval_metrics
from pneumo.runs.format import FORMAT as CHECKPOINT_FORMAT
from pneumo.runs.format import META_FILE, WEIGHT_FILES, ModelLoadError
from pneumo.utils.digest import file_sha256

log = logging.getLogger(__name__)

WEIGHTS_FILE = WEIGHT_FILES["best"]
ONNX_PREFIX = "pneumo."  # ONNX metadata_props keys: "pneumo.<field>", values are JSON strings
DISCLAIMER = "Research use only, not a medical device. Not for diagnosis or treatment."


@dataclass(frozen=True)
class ModelMeta:
    """Everything prediction needs besides the network itself."""

    task: str
    class_names: tuple[str, ...]
    contract: PreprocessContract
    model: dict[str, Any]  # {"name", "num_outputs", "in_chans", "kwargs"}
    dummy_class: bool = False
    operating_point: dict[str, Any] | None = None  # {"threshold", "method", "positive_class"}
    temperature: float | None = None
    ood: dict[str, Any] | None = None
    pneumo_version: str = ""
    model_id: str = ""
    best: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # eval folder name -> its metrics.json

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ModelLoadError(f"need at least 2 class names, got {list(self.class_names)}")
        if self.temperature is not None and not self.temperature > 0:
            raise ModelLoadError(f"temperature must be > 0, got {self.temperature}")
        if self.operating_point is not None and len(self.class_names) == 2:
            threshold = self.operating_point.get("threshold") if isinstance(self.operating_point, dict) else None
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise ModelLoadError(f"operating_point needs a threshold in [0, 1], got {self.operating_point!r}")

    @property
    def n_task(self) -> int:
        return len(self.class_names)

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class of a binary task (``class_names[1]`` unless the operating point names one)."""
        if self.n_task != 2:
            return None
        named = (self.operating_point or {}).get("positive_class")
        return self.class_names.index(named) if named in self.class_names else 1

    @property
    def threshold(self) -> float | None:
        if self.n_task != 2:
            return None
        return float(self.operating_point["threshold"]) if self.operating_point else 0.5

    # --- run folders ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        meta: dict[str, Any],
        run_dir: Path,
        weights_sha256: str | None = None,
        contract: PreprocessContract | None = None,
    ) -> ModelMeta:
        """``weights_sha256``: the digest of the weights actually loaded (default: hash the file now); ``contract``:
        the one :func:`pneumo.runs.checkpoint.load_run` parsed already (default: parse ``meta["preprocess"]``)."""
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ModelLoadError(f"{run_dir / META_FILE}: unsupported format {meta.get('format')!r}")
        weights = run_dir / WEIGHTS_FILE
        digest = weights_sha256 or (file_sha256(weights) if weights.is_file() else "")
        fitted_on = (meta.get("operating_point") or {}).get("weights_sha256")
        if fitted_on and digest and not digest.startswith(fitted_on):
            raise ModelLoadError(
                f"{run_dir / META_FILE}: the threshold and temperature were fitted on other weights than "
                f"{WEIGHTS_FILE} (sha256 {fitted_on}... vs {digest[:16]}...); fit them again with `pneumo evaluate "
                f"{run_dir}`"
            )
        ood = meta.get("ood")
        ood_on = (ood or {}).get("weights_sha256")
        if ood_on and digest and not digest.startswith(ood_on):
            log.warning(
                "%s: the out-of-distribution detector was fitted on other weights than %s; predictions carry no OOD "
                "check until it is fitted again (`pneumo audit ood-fit %s`)",
                run_dir / META_FILE, WEIGHTS_FILE, run_dir,
            )  # fmt: skip
            ood = None
        try:
            return cls(
                task=str(meta["task"]),
                class_names=tuple(meta["class_names"]),
                contract=contract or PreprocessContract.from_dict(meta["preprocess"]),
                model=dict(meta["model"]),
                dummy_class=bool(meta.get("dummy_class", False)),
                operating_point=meta.get("operating_point"),
                temperature=meta.get("temperature"),
                ood=ood,
                pneumo_version=str(meta.get("pneumo_version", "")),
                model_id=f"{run_dir.resolve().name}-{digest[:12] or 'noweights'}",
                best=dict(meta.get("best") or {}),
                metrics=read_eval_metrics(run_dir, meta),
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{run_dir / META_FILE}: {exc}") from exc
        except KeyError as exc:
            raise ModelLoadError(f"{run_dir / META_FILE}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:  # e.g. PreprocessContract.from_dict on an unknown geometry
            raise ModelLoadError(f"{run_dir / META_FILE}: malformed field ({exc})") from exc

    # --- ONNX metadata_props ----------------------------------------------------------------------------------
    def to_onnx_props(self) -> dict[str, str]:
        fields = {
            "task": self.task,
            "class_names": list(self.class_names),
            "preprocess": self.contract.to_dict(),
            "model": self.model,
            "dummy_class": self.dummy_class,
            "operating_point": self.operating_point,
            "temperature": self.temperature,
            "ood": self.ood,
            "pneumo_version": self.pneumo_version,
            "model_id": self.model_id,
            "best": self.best,
            "metrics": self.metrics,
        }
        return {ONNX_PREFIX + k: json.dumps(v) for k, v in fields.items()}

    @classmethod
    def from_onnx_props(cls, props: dict[str, str], path: Path) -> ModelMeta:
        values = {k.removeprefix(ONNX_PREFIX): v for k, v in props.items() if k.startswith(ONNX_PREFIX)}
        try:
            d = {k: json.loads(v) for k, v in values.items()}
            return cls(
                task=d["task"],
                class_names=tuple(d["class_names"]),
                contract=PreprocessContract.from_dict(d["preprocess"]),
                model=d.get("model") or {},
                dummy_class=bool(d.get("dummy_class", False)),
                operating_point=d.get("operating_point"),
                temperature=d.get("temperature"),
                ood=d.get("ood"),
                pneumo_version=d.get("pneumo_version", ""),
                model_id=d.get("model_id") or f"{path.stem}-{file_sha256(path)[:12]}",
                best=d.get("best") or {},
                metrics=d.get("metrics") or {},
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        except KeyError as exc:
            raise ModelLoadError(f"{path}: not a pneumo ONNX export (metadata {exc} missing)") from exc
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise ModelLoadError(f"{path}: malformed pneumo metadata ({exc})") from exc

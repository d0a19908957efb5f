"""``Predictor``: a trained model (run folder or ONNX export) that turns image files into decisions.

Preprocessing always comes from the model's own contract. Probabilities are a softmax over the task logits (dummy
class dropped) divided by the run's temperature when it has one. Binary labels use the run's validated operating
point (``p[positive] >= threshold``), else 0.5; 3-class labels are the argmax.

PyTorch loads only for run folders and Grad-CAM: an ONNX export predicts with NumPy, Pillow, SciPy and onnxruntime
alone (the deployment the export is for).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image
from scipy.special import softmax

import pneumo
from pneumo.data.decode import DEFAULT_MAX_PIXELS, ImageInput, decode_bytes, decode_image
from pneumo.data.preprocess import normalize_array, resize_gray
from pneumo.inference.backends import ONNX_DEPTH_OUTPUT, OnnxBackend, Outputs
from pneumo.inference.meta import DISCLAIMER, META_FILE, ModelLoadError, ModelMeta
from pneumo.inference.ood import needs_depth, ood_reason, ood_verdicts, resolve_scorer
from pneumo.inference.result import Explanation, PredictionResult
from pneumo.utils.errors import PneumoError

if TYPE_CHECKING:
    from torch import nn

    from pneumo.inference.torch_backend import TorchBackend

log = logging.getLogger(__name__)


class ExplainUnavailable(PneumoError, RuntimeError):
    """Grad-CAM needs the PyTorch model: an ONNX-only predictor cannot explain."""


@dataclass(frozen=True)
class PreparedImage:
    """One decoded input: the grayscale original (for overlays) and its model-size version (for the network)."""

    source: str
    original: np.ndarray  # uint8 H x W
    resized: np.ndarray  # uint8 S x S


def _source_name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return "<bytes>"


class Predictor:
    """Predict and explain with one trained model. Build it with :meth:`load` (or ``pneumo.load``)."""

    def __init__(
        self,
        backend: TorchBackend | OnnxBackend,
        meta: ModelMeta,
        path: Path,
        *,
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")  # -1 dropped every input
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")
        self.backend = backend
        self.meta = meta
        self.path = path
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self._ood_scorer = resolve_scorer(meta.ood)
        self._ood_depth = self._ood_scorer is not None and needs_depth(meta.ood)
        old_export = isinstance(backend, OnnxBackend) and ONNX_DEPTH_OUTPUT not in backend.outputs
        if self._ood_depth and old_export:
            log.warning("%s lacks the %s output its OOD check needs: OOD fields stay empty", path, ONNX_DEPTH_OUTPUT)
            self._ood_scorer = None
        self._cam_lock = threading.Lock()
        self._cam_model: nn.Module | None = None
        if meta.n_task == 2 and not meta.operating_point:
            log.warning(
                "%s has no threshold or temperature validated on its validation split (run `pneumo evaluate` on the "
                "run first): labels use 0.5 on uncalibrated probabilities",
                path,
            )

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | Path, *, device: str = "cpu", **kwargs: Any) -> Predictor:
        """A run folder, or a shipped model's name (:mod:`pneumo.zoo`)."""
        from pneumo.zoo import resolve_model

        run_dir = resolve_model(run_dir)
        try:
            from pneumo.inference.torch_backend import TorchBackend, load_run
            from pneumo.utils.device import resolve_device
        except ImportError as exc:  # a slim ONNX-only install
            raise ModelLoadError(
                f"{run_dir}: a run folder needs PyTorch ({exc}); install it, or export the run with `pneumo export` "
                "and use the .onnx file"
            ) from exc

        try:
            device = str(resolve_device(device))
        except ValueError as exc:
            raise ModelLoadError(f"{run_dir}: {exc}") from exc
        model, raw_meta = load_run(run_dir, device=device)
        meta = ModelMeta.from_checkpoint(
            raw_meta, run_dir, getattr(model, "weights_sha256", None), getattr(model, "preprocess_contract", None)
        )
        return cls(TorchBackend(model, meta.n_task, device), meta, run_dir, **kwargs)

    @classmethod
    def from_onnx(cls, path: str | Path, *, threads: int | None = None, **kwargs: Any) -> Predictor:
        """``threads``: onnxruntime's intra-op threads; default ``OMP_NUM_THREADS`` when set (onnxruntime itself
        ignores it and starts a thread per physical core, which oversubscribes a shared machine or ``serve
        --workers``), else onnxruntime's choice."""
        path = Path(path)
        if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(os.environ["OMP_NUM_THREADS"]) or None
        backend = OnnxBackend(path, threads=threads)
        return cls(backend, backend.meta(path), path, **kwargs)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """A run folder (or its ``checkpoint.json``), an ``.onnx`` file or a shipped model's name (``pneumo models``:
        ``normal-pneumonia``, ``pneumo/normal-pneumonia-v1``; its files checked against its checksum list)."""
        from pneumo.zoo import resolve_model

        path = resolve_model(path)
        if path.is_dir():
            return cls.from_run(path, **kwargs)
        if path.name == META_FILE:
            return cls.from_run(path.parent, **kwargs)
        if path.suffix.lower() == ".onnx" and path.is_file():
            device = str(kwargs.pop("device", "cpu"))
            if device not in ("cpu", "auto"):  # pneumo's ONNX backend runs ONNX Runtime's CPU provider only
                raise ModelLoadError(f"{path}: ONNX models run on the CPU; load the run folder for device={device!r}")
            return cls.from_onnx(path, **kwargs)
        raise ModelLoadError(f"{path}: neither a run folder nor an .onnx file")

    # --- properties -------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    @property
    def can_explain(self) -> bool:
        return self.explain_unavailable is None

    @functools.cached_property
    def explain_unavailable(self) -> str | None:
        """Why :meth:`explain` cannot give a heatmap for this model, or None when it can."""
        if isinstance(self.backend, OnnxBackend):
            return "Grad-CAM needs the PyTorch run folder; this model was loaded from ONNX"
        from pneumo.inference.gradcam import cam_unavailable_reason

        return cam_unavailable_reason(self.backend.model, self.meta.contract.image_size)

    # --- prediction -------------------------------------------------------------------------------------------
    def prepare(self, source: ImageInput, name: str | None = None, *, keep_original: bool = True) -> PreparedImage:
        """Decode and resize one input by the model's contract; raises ``ImageDecodeError`` naming the input.

        ``keep_original=False``: the full-size image is let go (a 7-megapixel original is 7 MB, the model's copy 50
        KB); an overlay is then drawn at the model's size. Prediction alone needs only the model's copy."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            gray = decode_bytes(bytes(source), name or "<bytes>", max_pixels=self.max_pixels)
        else:
            gray = decode_image(source, max_pixels=self.max_pixels)
        resized = resize_gray(gray, self.meta.contract)
        return PreparedImage(name or _source_name(source), gray if keep_original else resized, resized)

    def model_input(self, resized: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 ``(N, S, S)`` -> normalised float32 ``(N, 1, S, S)``, exactly as the model was trained."""
        return normalize_array(np.stack(list(resized)), self.meta.contract)

    def run(self, x: np.ndarray) -> Outputs:
        """Raw outputs (dummy included) and pooled features for a normalised batch (an array or a CPU tensor)."""
        return self.backend(x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Task logits ``(N, n_task)`` for a normalised batch (before temperature)."""
        return self.run(x).raw_logits[:, : self.meta.n_task]

    def probabilities(self, task_logits: np.ndarray) -> np.ndarray:
        scaled = np.asarray(task_logits, dtype=np.float64) / (self.meta.temperature or 1.0)
        return softmax(scaled, axis=1)

    def decide(self, probs: np.ndarray) -> str:
        """The label for one row of probabilities (operating point for binary tasks, argmax otherwise)."""
        pos = self.meta.positive_index
        if pos is None:
            return self.class_names[int(np.argmax(probs))]
        return self.class_names[pos] if probs[pos] >= self.meta.threshold else self.class_names[1 - pos]

    def predict_prepared(self, images: Sequence[PreparedImage]) -> list[PredictionResult]:
        results: list[PredictionResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out = self.run(self.model_input([im.resized for im in chunk]))
            if not np.isfinite(out.raw_logits).all():  # NaN would compare False against the threshold: a silent label
                bad = [im.source for im, row in zip(chunk, out.raw_logits, strict=True) if not np.isfinite(row).all()]
                raise FloatingPointError(f"the model gave non-finite outputs for {', '.join(map(str, bad))}")
            probs = self.probabilities(out.raw_logits[:, : self.meta.n_task])
            depth = out.depth_features if self._ood_depth else None
            verdicts = ood_verdicts(self._ood_scorer, self.meta.ood, out.raw_logits, out.features, depth)
            for im, p, (score, inside) in zip(chunk, probs, verdicts, strict=True):
                results.append(
                    PredictionResult(
                        probabilities={c: float(v) for c, v in zip(self.class_names, p, strict=True)},
                        label=self.decide(p),
                        threshold=self.meta.threshold,
                        in_distribution=inside,
                        ood_score=score,
                        source=im.source,
                        reason=ood_reason(self.meta.ood, score, inside),
                    )
                )
        return results

    @overload
    def predict(self, inputs: list[ImageInput] | tuple[ImageInput, ...]) -> list[PredictionResult]: ...
    @overload
    def predict(self, inputs: ImageInput) -> PredictionResult: ...

    def predict(self, inputs: Any) -> PredictionResult | list[PredictionResult]:
        """One input -> one result; a list or tuple of inputs -> a list of results (batched internally)."""
        if isinstance(inputs, (list, tuple)):  # one batch decoded at a time, without the full-size originals
            results: list[PredictionResult] = []
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start : start + self.batch_size]
                results.extend(self.predict_prepared([self.prepare(src, keep_original=False) for src in chunk]))
            return results
        return self.predict_prepared([self.prepare(inputs, keep_original=False)])[0]

    # --- explanation ------------------------------------------------------------------------------------------
    def explain(self, source: ImageInput, *, target: str | None = None) -> Explanation:
        """Grad-CAM for the predicted label (or ``target``): model-size heatmap + overlay PNG at the original size."""
        return self.explain_prepared(self.prepare(source), target=target)

    def explain_prepared(self, image: PreparedImage, *, target: str | None = None) -> Explanation:
        if self.explain_unavailable is not None:
            raise ExplainUnavailable(self.explain_unavailable)
        import torch

        from pneumo.inference.gradcam import (  # pulls in matplotlib
            grad_cam,
            heatmap_to_original,
            overlay_png,
            shrink_for_overlay,
        )
        from pneumo.models import match_channels

        if target is None:
            target = self.predict_prepared([image])[0].label
        if target not in self.class_names:
            raise ValueError(f"unknown class {target!r}; classes are {list(self.class_names)}")
        x = torch.from_numpy(self.model_input([image.resized])).to(self.backend.device)
        # Grad-CAM hooks the model; a private copy keeps those hooks away from concurrent predictions, and the
        # lock keeps two explanations from sharing one set of hooks. Outside inference mode: the copy must be able
        # to take gradients even when the caller runs under ``torch.inference_mode``.
        with self._cam_lock, torch.inference_mode(False):
            if self._cam_model is None:
                self._cam_model = copy.deepcopy(self.backend.model).to(memory_format=torch.contiguous_format)
                # no weight gradients: Grad-CAM needs the gradient at one layer only, which the input's carries
                # (measured 1.4x faster for ResNet-18 at 224 px on a CPU thread, the same heatmap)
                self._cam_model.requires_grad_(False)
            model = self._cam_model
            heat = grad_cam(model, match_channels(x, model), self.class_names.index(target))
        original = shrink_for_overlay(image.original)
        h, w = original.shape
        overlay = overlay_png(original, heatmap_to_original(heat, h, w, self.meta.contract))
        return Explanation(heat, overlay)

    # --- description ------------------------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        """What the model is, how it decides and how it was evaluated (JSON-serialisable)."""
        m = self.meta
        ood = {"enabled": bool(m.ood), "method": (m.ood or {}).get("method"), "active": self._ood_scorer is not None}
        return {
            "model_id": m.model_id,
            "format": "onnx" if isinstance(self.backend, OnnxBackend) else "pytorch",
            "architecture": m.model.get("name"),
            "task": m.task,
            "class_names": list(m.class_names),
            "dummy_class": m.dummy_class,
            "preprocessing": m.contract.to_dict(),
            "operating_point": m.operating_point,
            "threshold": m.threshold,
            "temperature": m.temperature,
            "ood": ood,
            "best": m.best,
            "metrics": m.metrics,
            "trained_with_pneumo": m.pneumo_version,
            "pneumo_version": pneumo.__version__,
            "disclaimer": DISCLAIMER,
        }

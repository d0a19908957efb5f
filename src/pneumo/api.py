"""The Python entry point: ``pneumo.load(path_or_name)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pneumo.inference.predictor import Predictor


def load(path: str | Path, *, device: str = "cpu", **kwargs: Any) -> Predictor:
    """A :class:`~pneumo.inference.Predictor` for a run folder (PyTorch), a ``.onnx`` export (onnxruntime) or a
    model shipped with pneumo by name (``pneumo.load("normal-pneumonia")``; ``pneumo models`` lists them).

    ``kwargs``: ``batch_size`` (default 32), ``max_pixels`` (decompression-bomb guard); for ``.onnx`` files also
    ``threads`` (onnxruntime's intra-op threads; default ``OMP_NUM_THREADS`` when set).
    Research use only, not a medical device.
    """
    return Predictor.load(path, device=device, **kwargs)

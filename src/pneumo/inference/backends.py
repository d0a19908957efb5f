"""Two ways to run a network on a normalised batch: PyTorch (run folders) and onnxruntime (ONNX exports).

Both return the raw outputs (dummy class included) and the pooled penultimate features, so probabilities, labels
and OOD verdicts are computed once, in :mod:`pneumo.inference.predictor`, whatever ran the network. This module
holds what the ONNX side needs and imports no PyTorch; the PyTorch backend lives in
:mod:`pneumo.inference.torch_backend` and loads only for run folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from pneumo.inference.meta import ModelLoadError, ModelMeta

ONNX_INPUT = "input"
ONNX_OUTPUTS = ("logits", "raw_logits", "features")  # task logits (dummy dropped), all outputs, pooled features
# every stage's pooled mean and std (pneumo.models.depth_features), for the multi-depth OOD check; absent in old exports
ONNX_DEPTH_OUTPUT = "depth_features"


class Outputs(NamedTuple):
    raw_logits: np.ndarray  # (N, num_outputs), float32
    features: np.ndarray  # (N, num_features), float32
    depth_features: np.ndarray | None = None  # (N, sum of 2 x stage widths), float32; None from older exports


class OnnxBackend:
    """An exported graph run by onnxruntime (CPU unless told otherwise); needs neither PyTorch nor the model code."""

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        """``threads``: onnxruntime's intra-op threads (default: its own choice, one per physical core)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        names = [o.name for o in self.session.get_outputs()]
        if names[: len(ONNX_OUTPUTS)] != list(ONNX_OUTPUTS):
            raise ModelLoadError(f"{path}: expected outputs {list(ONNX_OUTPUTS)}, found {names}")
        self.outputs = [*ONNX_OUTPUTS, ONNX_DEPTH_OUTPUT] if ONNX_DEPTH_OUTPUT in names else list(ONNX_OUTPUTS)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def meta(self, path: Path) -> ModelMeta:
        return ModelMeta.from_onnx_props(self.metadata, path)

    def __call__(self, x: np.ndarray) -> Outputs:
        """``x``: a float32 ``(N, 1, S, S)`` array (a CPU tensor also works: it converts without a copy)."""
        _, raw, pooled, *depth = self.session.run(self.outputs, {ONNX_INPUT: np.asarray(x, dtype=np.float32)})
        return Outputs(raw, pooled, depth[0] if depth else None)

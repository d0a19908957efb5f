"""Two ways to run a network on a normalised batch: PyTorch (run folders) and onnxruntime (ONNX exports).

Both return the raw outputs (dummy class included) and the pooled penultimate features, so probabilities, labels
and OOD verdicts are computed once, in :mod:`pneumo.inference.predictor`, whatever ran the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pneumo.inference.meta import ModelLoadError, ModelMeta

ONNX_INPUT = "input"
ONNX_OUTPUTS = ("logits", "raw_logits", "features")  # task logits (dummy dropped), all outputs, pooled features


class Outputs(NamedTuple):
    raw_logits: np.ndarray  # (N, num_outputs), float32
    features: np.ndarray  # (N, num_features), float32


def match_channels(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The contract yields 1-channel input; a model built with ``in_chans=3`` gets it replicated to (g, g, g)."""
    in_chans = int(getattr(model, "in_chans", 1))  # a Python int, so ONNX tracing sees no data-dependent branch
    return x if in_chans == 1 else x.expand(-1, in_chans, -1, -1)


class FeatureHead(nn.Module):
    """``x -> (task logits, raw logits, pooled features)``: the graph that ONNX export traces."""

    def __init__(self, model: nn.Module, n_task: int) -> None:
        super().__init__()
        self.model = model
        self.n_task = n_task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(match_channels(x, self.model))
        raw = self.model.forward_head(feats)
        pooled = self.model.forward_head(feats, pre_logits=True)
        return raw[:, : self.n_task], raw, pooled


def load_run(run_dir: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The best model of a run folder and its ``checkpoint.json`` (via ``pneumo.training.checkpoint.load_run``,
    which owns the format); any failure becomes a :class:`ModelLoadError` that names the folder."""
    from safetensors import SafetensorError

    from pneumo.training.checkpoint import load_run as training_load_run

    try:
        return training_load_run(run_dir, which="best", device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"{run_dir}: cannot load the run ({reason})") from exc


class TorchBackend:
    """A PyTorch network in eval mode, channels_last, run under ``torch.inference_mode``."""

    def __init__(self, model: nn.Module, n_task: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.graph = FeatureHead(self.model, n_task)

    def __call__(self, x: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            _, raw, pooled = self.graph(x.to(self.device).contiguous(memory_format=torch.channels_last))
        return Outputs(raw.float().cpu().numpy(), pooled.float().cpu().numpy())


class OnnxBackend:
    """An exported graph run by onnxruntime (CPU unless told otherwise); needs no PyTorch model."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        names = [o.name for o in self.session.get_outputs()]
        if names[: len(ONNX_OUTPUTS)] != list(ONNX_OUTPUTS):
            raise ModelLoadError(f"{path}: expected outputs {list(ONNX_OUTPUTS)}, found {names}")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def meta(self, path: Path) -> ModelMeta:
        return ModelMeta.from_onnx_props(self.metadata, path)

    def __call__(self, x: torch.Tensor) -> Outputs:
        _, raw, pooled = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x.numpy().astype(np.float32, copy=False)})
        return Outputs(raw, pooled)

"""The PyTorch backend: a run folder's network in eval mode, and the graph that ONNX export traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from pneumo.inference.backends import Outputs
from pneumo.inference.meta import ModelLoadError
from pneumo.models.depth_features import DepthFeatureHead
from pneumo.runs.checkpoint import load_run as runs_load_run


class FeatureHead(DepthFeatureHead):
    """``x -> (task logits, raw logits, pooled features, multi-depth features)``: the graph that ONNX export traces
    (multi-depth features: :mod:`pneumo.models.depth_features`, for the out-of-distribution check)."""


def load_run(run_dir: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The best model of a run folder and its ``checkpoint.json`` (via :func:`pneumo.runs.checkpoint.load_run`);
    any failure becomes a :class:`ModelLoadError` that names the folder."""
    try:
        return runs_load_run(run_dir, which="best", device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"{run_dir}: cannot load the run ({reason})") from exc


class TorchBackend:
    """A PyTorch network in eval mode, channels_last, run under ``torch.inference_mode``."""

    def __init__(self, model: nn.Module, n_task: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.graph = FeatureHead(self.model, n_task)

    def __call__(self, x: np.ndarray | torch.Tensor) -> Outputs:
        """``x``: a float32 ``(N, 1, S, S)`` array or tensor."""
        with torch.inference_mode():
            x = torch.as_tensor(x).to(self.device).contiguous(memory_format=torch.channels_last)
            _, raw, pooled, depth = self.graph(x)
        return Outputs(raw.float().cpu().numpy(), pooled.float().cpu().numpy(), depth.float().cpu().numpy())

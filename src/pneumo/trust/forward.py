"""Run a model over in-memory uint8 images: raw outputs and, on request, pooled penultimate features.

The audits feed perturbed or foreign images that are not in any cache, so :func:`pneumo.training.predict_logits`
(which reads a cached split) does not fit; this is the same walk (contract normalisation, eval mode, no autocast)
over an array. Features are ``forward_head(forward_features(x), pre_logits=True)``, what predict/serve/ONNX return.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.models import match_channels, task_probs


@torch.inference_mode()
def forward_arrays(
    model: nn.Module,
    images: np.ndarray,
    contract: PreprocessContract,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    features: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(raw outputs N x num_outputs, features N x num_features or None)`` as float64, model in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    outs, feats = [], []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            x = match_channels(normalize(batch.to(device), contract), model)
            f = model.forward_features(x)
            outs.append(model.forward_head(f).float().cpu())
            if features:
                feats.append(model.forward_head(f, pre_logits=True).float().cpu())
    finally:
        model.train(was_training)
    n_out = int(getattr(model, "num_classes", 0))
    raw = torch.cat(outs).numpy().astype(np.float64) if outs else np.empty((0, n_out))
    pooled = None
    if features:
        pooled = torch.cat(feats).numpy().astype(np.float64) if feats else np.empty((0, model.num_features))
    return raw, pooled


def task_probabilities(raw: np.ndarray, n_task: int) -> np.ndarray:
    """Softmax over the task classes only (a dummy class's column dropped), as evaluation does."""
    return task_probs(torch.from_numpy(np.asarray(raw, dtype=np.float64)), n_task).numpy()

"""Inference over a cached split and the validation metrics training selects on (task classes only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from pneumo.data.dataset import BatchedSplit, SplitData
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.models.heads import match_channels, task_logits


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast when ``enabled``, on CUDA or on the CPU (callers enable it on a CPU only where it is native:
    ``pneumo.training.engine.uses_amp``)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _uses_channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.ndim == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last)


def _contract_of(model: nn.Module) -> PreprocessContract:
    contract = getattr(model, "preprocess_contract", None)
    if contract is None:
        raise ValueError("the model carries no preprocessing contract (load it from its run folder) and none was given")
    return contract


@torch.inference_mode()
def predict_rows(
    model: nn.Module,
    dataset: BatchedSplit,
    indices: Sequence[int],
    *,
    contract: PreprocessContract,
    n_task: int,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> torch.Tensor:
    """Task logits (float32, on ``device``) for ``indices`` of ``dataset``, in that order; the model in eval mode."""
    was_training = model.training
    model.eval()
    channels_last = _uses_channels_last(model)
    out = []
    try:
        for start in range(0, len(indices), batch_size):
            images, _, _ = dataset.__getitems__(list(indices[start : start + batch_size]))
            x = match_channels(normalize(images.to(device, non_blocking=True), contract), model)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp):
                logits = model(x)
            out.append(task_logits(logits.float(), n_task))
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, n_task, device=device)
    return torch.cat(out)


def predict_logits(
    model: nn.Module,
    split: SplitData,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    contract: PreprocessContract | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Task logits (N x K float32) for every image of ``split``, in order, under ``torch.inference_mode()``.

    ``K`` is ``num_classes`` if given, else the model's ``num_task_classes`` attribute (set by
    :func:`pneumo.runs.checkpoint.load_run` and by training), else all outputs. ``contract`` defaults to the model's
    ``preprocess_contract`` attribute (set likewise); a model without one needs it given. The model
    is moved to ``device``; ``amp=True`` runs bf16 autocast on CUDA (faster, about 3 significant digits of logits;
    off by default so that calibration and thresholds see float32 logits).
    """
    device = torch.device(device)
    model = model.to(device)
    n_task = num_classes or getattr(model, "num_task_classes", None) or _n_outputs(model)
    rows = predict_rows(
        model,
        BatchedSplit(split),
        range(len(split)),
        contract=contract or _contract_of(model),
        n_task=n_task,
        batch_size=batch_size,
        device=device,
        amp=amp,
    )
    return rows.cpu().numpy()


def _n_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        raise ValueError("cannot tell the model's number of classes; pass num_classes")
    return int(n)


def val_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Loss, accuracy and ROC AUC (binary, or macro one-vs-rest for 3+ classes) from task logits."""
    t_logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    t_targets = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    loss = float(F.cross_entropy(t_logits, t_targets))
    if not torch.isfinite(t_logits).all():  # a diverged model: every metric is undefined (the engine stops)
        return {"val_loss": math.nan, "val_auc": math.nan, "val_accuracy": math.nan}
    probs = torch.softmax(t_logits, dim=1).numpy().astype(np.float64)
    accuracy = float((probs.argmax(1) == targets).mean())
    return {"val_loss": loss, "val_auc": roc_auc(targets, probs), "val_accuracy": accuracy}


def roc_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (macro OvR for 3+ classes); NaN when a class is absent, as it is undefined there."""
    k = probs.shape[1]
    if len(np.unique(targets)) < k:
        return math.nan
    if k == 2:
        return float(roc_auc_score(targets, probs[:, 1]))
    return float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=list(range(k))))

"""Weights files of a run folder (safetensors, no pickle) and the model they build: :func:`load_run`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from torch import nn

from pneumo.data.preprocess import PreprocessContract
from pneumo.models import PneumoNet, get_model
from pneumo.runs.format import WEIGHT_FILES, RunFolderError, read_run_meta
from pneumo.utils.atomic import save_safetensors


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Write the model's weights as safetensors (atomic); ``meta`` is stored as JSON in the file's metadata."""
    metadata = {"format": "pneumo", "meta": json.dumps(meta or {})}
    save_safetensors(path, model_state(model), metadata=metadata)


def weights_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` that :func:`save_weights` stored in a weights file; ``{}`` when the file is missing or has none."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("meta") or "{}")
    except (OSError, SafetensorError, json.JSONDecodeError):
        return {}


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[PneumoNet, dict]:
    """Build the run's model from ``checkpoint.json`` and load ``best`` or ``last`` weights; eval mode, no pickle."""
    run_dir = Path(run_dir)
    if which not in WEIGHT_FILES:
        raise ValueError(f"which must be one of {sorted(WEIGHT_FILES)}, got {which!r}")
    meta = read_run_meta(run_dir)
    path = run_dir / WEIGHT_FILES[which]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (has the run finished an epoch?)")
    spec = meta["model"]
    model = get_model(
        spec["name"], num_classes=spec["num_outputs"], in_chans=spec["in_chans"], weights=None, **spec["kwargs"]
    )
    # One read for the weights and their digest: a training that replaces the file in between would otherwise pair
    # these weights with the digest (and so the threshold and model id) of others.
    data = path.read_bytes()
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:  # truncated or overwritten
        raise RunFolderError(
            f"{path} is damaged ({exc}); restore it from a copy of the run, or train the run again"
            + (f" (its last epoch's weights are in {run_dir / WEIGHT_FILES['last']})" if which == "best" else "")
        ) from None
    model.load_state_dict(state, strict=True)
    model.weights_sha256 = hashlib.sha256(data).hexdigest()
    # Read by predict_logits (and anyone else) so that callers need not thread these through.
    model.num_task_classes = len(meta["class_names"])
    model.preprocess_contract = PreprocessContract.from_dict(meta["preprocess"])
    return model.to(device).eval(), meta

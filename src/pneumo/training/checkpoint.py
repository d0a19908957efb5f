"""Run folders and checkpoints: safetensors weights, JSON metadata, resumable training state. No pickle anywhere.

A run folder holds ``config.yaml split.csv env.json metrics.jsonl best.safetensors last.safetensors checkpoint.json
last.state.safetensors last.state.json``. ``checkpoint.json`` is the contract other packages read::

    {"format": 1, "pneumo_version", "task", "class_names" (task classes only),
     "model": {"name", "num_outputs" (incl. dummy), "in_chans", "kwargs"}, "dummy_class",
     "preprocess": PreprocessContract.to_dict(), "best": {"epoch", "val_auc"}, "last": {"epoch"},
     "operating_point": null, "temperature": null, "ood": null}

The last three are filled later by evaluation/trust code through :func:`update_run_meta`.

Resume state: tensors (model, optimizer state, torch RNG states) in ``last.state.safetensors``; everything else
(epoch, step, scheduler, numpy/python RNG, best metric, early-stopping counter) as JSON, embedded in that file's
metadata so that one atomic write holds a consistent state, and copied to ``last.state.json`` for people to read.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from torch import nn

from pneumo.data.preprocess import PreprocessContract
from pneumo.models import PneumoNet, get_model
from pneumo.utils.atomic import save_safetensors, write_json
from pneumo.utils.digest import file_sha256

FORMAT = 1
META_FILE = "checkpoint.json"
STATE_TENSORS = "last.state.safetensors"
STATE_JSON = "last.state.json"
WEIGHT_FILES = {"best": "best.safetensors", "last": "last.safetensors"}


def weights_digest(run_dir: Path) -> str:
    """SHA-256 prefix of ``best.safetensors``: what is fitted on a run's weights after training (operating point,
    temperature, OOD detector) records it, and is used only while the weights are the same."""
    return file_sha256(run_dir / WEIGHT_FILES["best"])[:16]


_STATE_KEY = "pneumo.state"


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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("meta") or "{}")
    except (OSError, SafetensorError, json.JSONDecodeError):
        return {}


# --- checkpoint.json --------------------------------------------------------------------------------------------


@contextmanager
def _meta_lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".checkpoint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_run_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pneumo run folder (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def update_run_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level fields of ``checkpoint.json`` (read-modify-write under a lock, atomic); returns the new meta."""
    run_dir = Path(run_dir)
    with _meta_lock(run_dir):
        meta = read_run_meta(run_dir)
        meta.update(fields)
        write_json(run_dir / META_FILE, meta)
    return meta


def write_run_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Create or refresh ``checkpoint.json``; fields set by others are kept: the OOD parameters (refitted by
    training when the best epoch changed), and the operating point and temperature while the best weights they
    were fitted on stay the best ones (a resumed run that finds a better epoch drops them: evaluate it again)."""
    run_dir = Path(run_dir)
    with _meta_lock(run_dir):
        path = run_dir / META_FILE
        current = json.loads(path.read_text()) if path.is_file() else {}
        same_best = current.get("best") == meta.get("best")
        kept = ("operating_point", "temperature", "ood") if same_best else ("ood",)
        merged = {**meta, **{k: current[k] for k in kept if current.get(k)}}
        write_json(path, merged)


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
    model.load_state_dict(load_safetensors(data), strict=True)
    model.weights_sha256 = hashlib.sha256(data).hexdigest()
    # Read by predict_logits (and anyone else) so that callers need not thread these through.
    model.num_task_classes = len(meta["class_names"])
    model.preprocess_contract = PreprocessContract.from_dict(meta["preprocess"])
    return model.to(device).eval(), meta


# --- resumable state --------------------------------------------------------------------------------------------


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = torch_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    info = {
        "numpy": {"kind": kind, "keys": _b64(keys), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, info


def torch_rng_state() -> dict[str, torch.Tensor]:
    """torch's CPU generator and, once CUDA is in use, the generator of the device this process trains on.

    Only that device: under torchrun each rank trains on its own GPU, and the states of devices other ranks use were
    never drawn from in this process (restoring them would reset those ranks' dropout streams).
    """
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return tensors


def rank_rng_tensors(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The torch RNG states of ranks 1..N-1 (from :func:`torch_rng_state` on each), keyed ``rng.torch.rank1``..."""
    return {f"{k}.rank{r}": v for r, state in enumerate(states) if r for k, v in state.items()}


def restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any], rank: int = 0) -> bool:
    """Restore the RNG states of ``rank``; False when the checkpoint holds no torch state for that rank.

    Rank 0's state has the plain keys (the only state of a single-process run); other ranks' carry a ``.rankN``
    suffix. Every rank restores rank 0's NumPy and Python states (no rank-specific draws come from them).
    """
    suffix = f".rank{rank}" if rank else ""
    cpu = tensors.get(f"rng.torch{suffix}")
    if cpu is not None:
        torch.set_rng_state(cpu)
    # "rng.cuda.0": checkpoints written before the per-device state (single-GPU runs restore the same way).
    cuda = tensors.get(f"rng.cuda{suffix}", None if rank else tensors.get("rng.cuda.0"))
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())
    n = info["numpy"]
    keys = np.frombuffer(base64.b64decode(n["keys"]), dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = info["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    return cpu is not None


def optimizer_to_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_parts(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, extra in info["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Saved tensors come back contiguous; give moments the memory format of their parameter (e.g. channels_last),
    # as when they were created: kernels over mixed layouts round differently, which would break exact resume.
    for group in optimizer.param_groups:
        for param in group["params"]:
            slots = optimizer.state.get(param, {})
            for key, value in slots.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_state(run_dir: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """One atomic file with tensors + JSON info (in its metadata), then the readable JSON copy."""
    run_dir = Path(run_dir)
    save_safetensors(run_dir / STATE_TENSORS, tensors, metadata={_STATE_KEY: json.dumps(info)})
    write_json(run_dir / STATE_JSON, info)


def read_state_info(run_dir: str | Path) -> dict[str, Any]:
    """The JSON part of the resumable state (progress, config, image digests), without reading its tensors."""
    path = Path(run_dir) / STATE_TENSORS
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {STATE_TENSORS}; nothing to resume")
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})[_STATE_KEY])


def load_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    info = read_state_info(run_dir)
    return load_file(Path(run_dir) / STATE_TENSORS, device="cpu"), info

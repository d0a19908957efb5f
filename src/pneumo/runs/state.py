"""Resumable training state (classifier and GAN runs): ``last.state.safetensors`` and ``last.state.json``.

Tensors (model, optimizer state, torch RNG states) in ``last.state.safetensors``; everything else (epoch, step,
scheduler, numpy/python RNG, best metric, early-stopping counter) as JSON, embedded in that file's metadata so that
one atomic write holds a consistent state, and copied to ``last.state.json`` for people to read.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pneumo.runs.format import CONFIG_FILE, STATE_JSON, STATE_TENSORS, WEIGHT_FILES, RunFolderError
from pneumo.utils.atomic import save_safetensors, write_json

_STATE_KEY = "pneumo.state"


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
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_STATE_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise _damaged(Path(run_dir), exc) from None


def load_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    info = read_state_info(run_dir)
    try:
        return load_file(Path(run_dir) / STATE_TENSORS, device="cpu"), info
    except (SafetensorError, OSError) as exc:
        raise _damaged(Path(run_dir), exc) from None


def _damaged(run_dir: Path, exc: BaseException) -> RunFolderError:
    reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
    return RunFolderError(
        f"{run_dir / STATE_TENSORS} is damaged ({reason}); the run cannot continue from it. Start it again with "
        f"`pneumo train --config {run_dir / CONFIG_FILE} --out NEW_FOLDER`, or from its last weights with "
        f"`--set weights={run_dir / WEIGHT_FILES['last']}` added"
    )

"""One meaning of ``device=`` everywhere: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device, *, cuda_index: int | None = None) -> torch.device:
    """The torch device for ``name``; a clear ``ValueError`` for an unknown name or for CUDA without a GPU.

    ``cuda_index`` picks the GPU for a bare ``cuda`` (a distributed worker's local rank).
    """
    text = str(name)
    kind = text.split(":", 1)[0]
    if kind not in ("auto", "cpu", "cuda") or (kind != "cuda" and ":" in text):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if kind == "auto":
        kind = text = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {text!r} was asked for, but CUDA is not available")
    if text == "cuda" and cuda_index is not None:
        return torch.device("cuda", cuda_index)
    return torch.device(text)

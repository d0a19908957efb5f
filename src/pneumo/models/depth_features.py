"""Multi-depth features for the out-of-distribution check (:mod:`pneumo.runs.ood_depth`): every backbone stage's
output, pooled per channel.

A foreign image (an adult's X-ray, another modality, a photograph) often differs first in texture, contrast and
scale, which the early stages see and the last stage, trained to separate the task's classes, has learnt to ignore.
So each stage's output ``N x C x H x W`` is summarised by the spatial mean and standard deviation of each channel,
``2C`` numbers per stage (Sastry & Oore 2020 and Lee et al. 2018 use such statistics of several depths).

:class:`DepthFeatureHead` is the one graph that computes them (prediction, fitting, ONNX export), so a detector
fitted on a run scores the same numbers everywhere. Stage outputs are read with forward hooks on the last module of
each stage of :meth:`PneumoNet.stages`; hooks store into thread-local slots, so concurrent predictions on one model
(the service's pool) do not mix their features.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.models.heads import match_channels


def stage_outputs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(stage name, module whose output is the stage's output)`` for every backbone stage, input side first."""
    return [(name, modules[-1]) for name, modules in model.stages().items()]


def pool_mean_std(x: Tensor) -> Tensor:
    """``N x C x H x W`` -> ``N x 2C``: per-channel spatial mean, then per-channel spatial standard deviation."""
    flat = x.float().flatten(2)
    mean = flat.mean(dim=2)
    # two passes, plain ops (traceable to ONNX): E[x^2] - E[x]^2 cancels where the spread is small beside the mean
    std = (flat - mean.unsqueeze(2)).square().mean(dim=2).sqrt()
    return torch.cat([mean, std], dim=1)


class DepthFeatureHead(nn.Module):
    """``x -> (task logits, raw logits, pooled penultimate features, multi-depth features)``.

    The first three are :class:`pneumo.inference.torch_backend.FeatureHead`'s; the fourth concatenates
    :func:`pool_mean_std` of every stage's output (``depth_dims`` gives each stage's width)."""

    def __init__(self, model: nn.Module, n_task: int) -> None:
        super().__init__()
        self.model = model
        self.n_task = n_task
        self.stage_names = [name for name, _ in stage_outputs(model)]
        self._local = threading.local()
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(stage_outputs(model))]
        self.depth_dims: list[int] = []

    def _hook(self, index: int):
        def store(_: nn.Module, __: object, output: Tensor) -> None:
            slots = getattr(self._local, "slots", None)
            if slots is not None:
                slots[index] = output

        return store

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._local.slots = [None] * len(self.stage_names)
        try:
            feats = self.model.forward_features(match_channels(x, self.model))
            outputs = list(self._local.slots)
        finally:
            self._local.slots = None
        if any(o is None for o in outputs):
            missing = [n for n, o in zip(self.stage_names, outputs, strict=True) if o is None]
            raise RuntimeError(f"stage(s) {missing} of {type(self.model).__name__} did not run in forward_features")
        pooled_stages = [pool_mean_std(o) for o in outputs]
        if not self.depth_dims and not torch.jit.is_tracing():
            self.depth_dims = [int(p.shape[1]) for p in pooled_stages]
        raw = self.model.forward_head(feats)
        pooled = self.model.forward_head(feats, pre_logits=True)
        return raw[:, : self.n_task], raw, pooled, torch.cat(pooled_stages, dim=1)

    def remove(self) -> None:
        """Detach the hooks from the wrapped model."""
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.inference_mode()
def depth_features(
    model: nn.Module,
    images: np.ndarray,
    contract: PreprocessContract,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """``(raw outputs, penultimate features, multi-depth features, per-stage widths)`` of uint8 ``N x S x S``
    images, float64, model in eval mode (the walk of :func:`pneumo.trust.forward.forward_arrays`)."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    head = DepthFeatureHead(model, int(getattr(model, "num_classes", 1)))
    raws: list[Tensor] = []
    pens: list[Tensor] = []
    deps: list[Tensor] = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            _, raw, pen, dep = head(normalize(batch.to(device), contract))
            raws.append(raw.float().cpu())
            pens.append(pen.float().cpu())
            deps.append(dep.float().cpu())
    finally:
        head.remove()
        model.train(was_training)
    if not raws:
        raise ValueError("no images to compute features of")
    cat = lambda parts: torch.cat(parts).numpy().astype(np.float64)  # noqa: E731
    return cat(raws), cat(pens), cat(deps), list(head.depth_dims)


def split_depths(features: np.ndarray, dims: Sequence[int]) -> list[np.ndarray]:
    """The concatenated multi-depth features cut back into one block per stage."""
    edges = np.cumsum([0, *dims])
    if features.shape[1] != edges[-1]:
        raise ValueError(f"expected {edges[-1]} multi-depth features, got {features.shape[1]}")
    return [features[:, a:b] for a, b in itertools.pairwise(edges)]

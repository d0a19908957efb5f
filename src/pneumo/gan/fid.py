"""Sample quality without internet: Frechet distance and KID on pneumo-classifier features, and class agreement.

**Not the Inception FID.** Published FID/KID values use Inception-v3 ImageNet features, which cannot be downloaded
here and were never trained on radiographs. These functions use the penultimate features
(``forward_head(forward_features(x), pre_logits=True)``) of a pneumo classifier trained on *real* images, so the
numbers depend on that classifier and are comparable only between GAN runs scored with the same classifier and the
same real images, never with published FIDs.

Both feature sets should go through the same preprocessing: :func:`extract_features` resizes uint8 images to the
classifier's contract size with the contract's interpolation (so generated and real images at the GAN size are
upsampled alike) and normalises them.

- Frechet distance (Heusel et al. 2017): ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians
  fitted to the two feature sets; the matrix square root is ``scipy.linalg.sqrtm`` (tiny imaginary parts from
  rounding are discarded; a large one is an error), as in pytorch-fid.
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; unbiased, so about 0 (possibly slightly negative) for
  two samples of the same distribution, and usable with few images, where the Frechet distance is biased upwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from pneumo.data.preprocess import PreprocessContract, normalize, resize_gray
from pneumo.models.heads import task_logits


def model_input(images: Tensor, contract: PreprocessContract) -> Tensor:
    """uint8 ``(N, 1, S, S)`` -> normalised float ``(N, 1, size, size)`` at the contract's size."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.shape[-1] != contract.image_size or images.shape[-2] != contract.image_size:
        resized = [resize_gray(img[0].numpy(), contract) for img in images.cpu()]
        images = torch.from_numpy(np.stack(resized)).unsqueeze(1)
    return normalize(images, contract)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _batched(fn: Any, model: nn.Module, images: Tensor, contract: PreprocessContract, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    out = [
        fn(model_input(images[i : i + batch_size], contract).to(_device(model))).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


def extract_features(
    model: nn.Module, images: Tensor, contract: PreprocessContract | None = None, *, batch_size: int = 256
) -> np.ndarray:
    """Penultimate (pooled, pre-logits) features ``(N, num_features)`` of a pneumo classifier for uint8 images.

    ``contract``: the classifier's preprocessing contract (default: the one its run stored, ``preprocess_contract``).
    """
    contract = _contract_of(model, contract)
    feats = _batched(
        lambda x: model.forward_head(model.forward_features(x), pre_logits=True), model, images, contract, batch_size
    )
    return feats.double().numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` (see the module docstring)."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature arrays of equal D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product (few samples): regularise as pytorch-fid does
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diag - 2.0 * k_xy.mean())


def kid(
    feats_a: np.ndarray, feats_b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance (KID formula, on pneumo features): ``(mean, std)`` of the unbiased MMD^2 over subsets."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature arrays of equal D, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if m == len(a) == len(b):
        subsets = 1  # every subset would be the whole set
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


@dataclass
class ClassAgreement:
    """How often a classifier assigns generated images to the class they were requested for."""

    overall: float
    per_class: dict[int, float]
    confusion: np.ndarray  # rows: requested class, columns: predicted class

    def as_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        names = class_names or [str(c) for c in range(len(self.confusion))]
        return {
            "overall": self.overall,
            "per_class": {names[c]: v for c, v in self.per_class.items()},
            "confusion": self.confusion.tolist(),
        }


def _contract_of(model: nn.Module, contract: PreprocessContract | None) -> PreprocessContract:
    contract = contract or getattr(model, "preprocess_contract", None)
    if contract is None:
        raise ValueError(
            "the classifier carries no preprocessing contract (load it from its run folder) and none was given"
        )
    return contract


def class_agreement(
    classifier: nn.Module,
    images: Tensor,
    requested_labels: Tensor | np.ndarray | list[int],
    *,
    contract: PreprocessContract | None = None,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> ClassAgreement:
    """Agreement of an independent classifier with the requested classes of generated uint8 images.

    ``num_classes``: the task's classes (default: all outputs); trailing dummy outputs are dropped first.
    """
    labels = np.asarray(requested_labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} requested labels")
    logits = _batched(classifier, classifier, images, _contract_of(classifier, contract), batch_size)
    n = num_classes or logits.shape[1]
    predicted = task_logits(logits, n).argmax(1).numpy()
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {c: float(confusion[c, c] / confusion[c].sum()) for c in range(n) if confusion[c].sum()}
    return ClassAgreement(float((predicted == labels).mean()), per_class, confusion)

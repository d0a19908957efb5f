"""Frechet distance, KID and class agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from pneumo.gan import class_agreement, extract_features, frechet_distance, kid
from pneumo.models import PneumoCNN

from .conftest import toy_image


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    rng = np.random.default_rng(0)
    n, d = 20000, 3
    a = rng.normal(0.0, 1.0, (n, d))
    b = rng.normal([1.0, 0.0, 0.0], [1.0, 2.0, 0.5], (n, d))
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = 1 + 0 + 1 + 0.25
    assert frechet_distance(a, b) == pytest.approx(2.25, abs=0.06)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :2])


def _noisy_sets(levels: list[float]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    classes = ("normal", "bacteria", "virus")
    images = torch.from_numpy(np.stack([toy_image(classes[i % 3], rng) for i in range(120)])).unsqueeze(1)
    gen = torch.Generator().manual_seed(0)
    noisy = []
    for level in levels:
        noise = torch.randn(images.shape, generator=gen) * 255 * level
        noisy.append((images.float() + noise).round().clamp(0, 255).to(torch.uint8))
    return images, noisy


def test_feature_distances_are_zero_for_the_same_set_and_grow_with_noise() -> None:
    from pneumo.data.preprocess import PreprocessContract

    torch.manual_seed(0)
    model = PneumoCNN(3, widths=(8, 16), depths=(1, 1)).eval()
    levels = [0.05, 0.15, 0.3, 0.5]
    images, noisy = _noisy_sets(levels)
    model.preprocess_contract = PreprocessContract(image_size=images.shape[-1])  # as load_run sets it
    ref = extract_features(model, images)
    assert ref.shape == (120, 16)
    assert frechet_distance(ref, extract_features(model, images)) == pytest.approx(0.0, abs=1e-6)
    fds = [frechet_distance(ref, extract_features(model, x)) for x in noisy]
    kids = [kid(ref, extract_features(model, x), subsets=20, subset_size=60)[0] for x in noisy]
    assert all(x < y for x, y in itertools.pairwise(fds)), fds
    assert all(x < y for x, y in itertools.pairwise(kids)), kids
    assert fds[0] > 0 and kids[0] > 0
    # KID is unbiased: two samples of the same distribution give about 0, far below the noisy sets
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 16)), rng.normal(size=(500, 16))
    same = kid(x, y, subsets=20, subset_size=200)[0]
    assert abs(same) < 0.05 * kid(x, y + 0.5, subsets=20, subset_size=200)[0]


def test_features_are_resized_to_the_classifier_contract() -> None:
    from pneumo.data.preprocess import PreprocessContract

    torch.manual_seed(0)
    model = PneumoCNN(3, widths=(8, 16), depths=(1, 1)).eval()
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    feats = extract_features(model, images, PreprocessContract(image_size=32))
    assert feats.shape == (4, 16)
    with pytest.raises(TypeError, match="uint8"):
        extract_features(model, images.float(), PreprocessContract(image_size=32))
    # no contract given and none carried: an error, not a guess at the normalisation from the images' size
    with pytest.raises(ValueError, match="carries no preprocessing contract"):
        extract_features(model, images)


class _FixedClassifier(nn.Module):
    """Predicts class = mean pixel bucket (0-85, 85-170, 170-255); has a dummy fourth output that must be ignored."""

    def __init__(self) -> None:
        from pneumo.data.preprocess import PreprocessContract

        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.preprocess_contract = PreprocessContract(image_size=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pneumo.data.preprocess import GRAY_MEAN, GRAY_STD

        mean = ((x * GRAY_STD + GRAY_MEAN) * 255).mean((1, 2, 3))
        bucket = (mean // 85.4).long().clamp(0, 2)
        logits = torch.nn.functional.one_hot(bucket, 4).float() * self.scale
        logits[:, 3] = 5.0  # a dummy output larger than every task logit
        return logits


def test_class_agreement_counts_requested_vs_predicted() -> None:
    values = [10, 10, 120, 200, 200, 200]  # predicted 0, 0, 1, 2, 2, 2
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    requested = [0, 1, 1, 2, 2, 0]
    result = class_agreement(_FixedClassifier(), images, requested, num_classes=3)
    assert result.overall == pytest.approx(4 / 6)
    assert result.per_class == {0: 0.5, 1: 0.5, 2: 1.0}
    assert result.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert result.as_dict(["normal", "bacteria", "virus"])["per_class"]["virus"] == 1.0
    with pytest.raises(ValueError, match="requested labels"):
        class_agreement(_FixedClassifier(), images, requested[:3])

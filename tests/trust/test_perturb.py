"""Perturbations: deterministic with a seed, per image independent of the batch, and doing what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.trust import perturb
from pneumo.trust.regions import regions


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:48]
    base = (60 + 2 * xx + yy).astype(np.float64)
    return np.stack([np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(6)])


@pytest.mark.parametrize("name", list(perturb.default_perturbations()))
def test_every_perturbation_is_deterministic_and_batch_independent(images: np.ndarray, name: str) -> None:
    p = perturb.default_perturbations()[name]
    a = perturb.apply(images, p, seed=5)
    b = perturb.apply(images, p, seed=5)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, b)
    # Image i gets the same result alone or in a batch, so results do not depend on batching.
    np.testing.assert_array_equal(perturb.apply(images[:3], p, seed=5), a[:3])
    assert not np.array_equal(a, images), f"{name} left the images unchanged"


def test_seed_changes_only_random_perturbations(images: np.ndarray) -> None:
    noise = perturb.default_perturbations()["noise"]
    assert not np.array_equal(perturb.apply(images, noise, seed=0), perturb.apply(images, noise, seed=1))
    blur = perturb.default_perturbations()["blur"]
    np.testing.assert_array_equal(perturb.apply(images, blur, seed=0), perturb.apply(images, blur, seed=1))


def test_masks_touch_only_their_region(images: np.ndarray) -> None:
    reg = regions(48)
    for name, region in (("mask border", reg.border), ("mask centre", reg.centre)):
        out = perturb.apply(images, perturb.default_perturbations()[name])
        np.testing.assert_array_equal(out[:, ~region], images[:, ~region])
        for img, o in zip(images, out, strict=True):
            assert np.all(o[region] == round(float(img.mean())))
    assert reg.area("border") == pytest.approx(reg.area("centre"), abs=0.03)  # equal areas by design


def test_identity_strengths_and_effects(images: np.ndarray) -> None:
    np.testing.assert_array_equal(perturb.apply(images, perturb.stretch(1.0, 1.0)), images)
    np.testing.assert_array_equal(perturb.apply(images, perturb.gamma(1.0)), images)
    brighter = perturb.apply(images, perturb.gamma(0.7))
    assert brighter.astype(int).mean() > images.astype(int).mean()
    blurred = perturb.apply(images, perturb.blur(0.02))
    assert np.abs(np.diff(blurred.astype(int), axis=2)).mean() < np.abs(np.diff(images.astype(int), axis=2)).mean()


def test_select_rejects_unknown_names() -> None:
    assert [p.name for p in perturb.select(["blur", "noise"])] == ["blur", "noise"]
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb.select(["blurr"])

from __future__ import annotations

import torch

from pneumo.data.augment import BatchAugmenter, gaussian_blur, shuffled_patches
from pneumo.training.config import AcquisitionAugmentConfig, AugmentConfig

OFF = AcquisitionAugmentConfig()


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_generator_same_images_and_per_sample_parameters() -> None:
    aug = BatchAugmenter(AugmentConfig(), OFF)
    same = _images(1).repeat(6, 1, 1, 1)
    a, b = aug(same, _gen(1)), aug(same, _gen(1))
    assert a.dtype == torch.uint8 and a.shape == same.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(same, _gen(2)))
    assert len({tuple(img.flatten().tolist()) for img in a}) == 6  # each sample drew its own parameters


def test_identity_parameters_leave_images_unchanged() -> None:
    identity = AugmentConfig(rotation=0, translate=0, scale=(1, 1), brightness=0, contrast=0)
    images = _images()
    assert torch.equal(BatchAugmenter(identity, OFF)(images, _gen(0)), images)
    assert BatchAugmenter(AugmentConfig(enabled=False), OFF)(images, _gen(0)) is images


def test_scale_shrinks_about_the_centre() -> None:
    half = AugmentConfig(rotation=0, translate=0, scale=(0.5, 0.5), brightness=0, contrast=0)
    white = torch.full((1, 1, 32, 32), 255, dtype=torch.uint8)
    out = BatchAugmenter(half, OFF)(white, _gen(0))[0, 0]
    assert out[16, 16] == 255 and out[0, 0] == 0 and out[31, 31] == 0
    assert abs(int((out > 127).sum()) - 16 * 16) <= 2 * 16  # a 16 x 16 square, give or take its edge


def test_acquisition_effects_change_images_reproducibly() -> None:
    always = AcquisitionAugmentConfig(
        enabled=True, p_resample=1, p_blur=1, p_sharpen=1, p_noise=1, p_jpeg=1, p_aspect=1, p_border=1
    )
    aug = BatchAugmenter(AugmentConfig(enabled=False), always)
    images = _images(4, 48)
    out = aug(images, _gen(3))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, aug(images, _gen(3)))
    assert (out.float() - images.float()).abs().mean() > 5


def test_blur_uses_each_images_own_sigma() -> None:
    impulse = torch.zeros(2, 1, 21, 21)
    impulse[:, :, 10, 10] = 1.0
    out = gaussian_blur(impulse, torch.tensor([0.5, 2.0]))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert out[0, 0, 10, 10] > 2 * out[1, 0, 10, 10]


def test_shuffled_patches_permute_whole_tiles() -> None:
    images = _images(3, 32)
    out = shuffled_patches(images, _gen(0), grid=4)
    assert not torch.equal(out, images)

    def tiles(x: torch.Tensor) -> list[tuple[int, ...]]:
        return sorted(
            tuple(x[0, i : i + 8, j : j + 8].flatten().tolist()) for i in range(0, 32, 8) for j in range(0, 32, 8)
        )

    for before, after in zip(images, out, strict=True):
        assert tiles(before) == tiles(after)
    assert torch.equal(out, shuffled_patches(images, _gen(0), grid=4))

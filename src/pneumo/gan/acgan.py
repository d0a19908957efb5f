"""ACGAN networks (Odena, Olah, Shlens 2017, "Conditional image synthesis with auxiliary classifier GANs").

Generator: noise ``z`` and a label embedding, concatenated, -> linear -> 4 x 4 feature map -> blocks of
nearest-neighbour 2x upsampling + 3x3 conv + BatchNorm + ReLU -> 3x3 conv -> tanh, one channel in ``[-1, 1]``.
Upsample+conv rather than transposed convolutions avoids checkerboard artefacts (Odena, Dumoulin, Olah 2016).

Discriminator: the trunk of :mod:`pneumo.models.acgan_discriminator` with spectral normalisation on every conv, two
heads on its final 1 x 1 features: real/fake (one spectrally normalised linear logit) and class (a
:class:`~pneumo.models.heads.ClassifierHead`, kept as is so it exports unchanged as a pneumo classifier).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from pneumo.models.acgan_discriminator import ACGANDiscriminatorNet, discriminator_trunk, trunk_channels
from pneumo.models.heads import ClassifierHead


def _check_size(image_size: int) -> int:
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return int(math.log2(image_size // 4))


class Generator(nn.Module):
    def __init__(
        self,
        num_classes: int = 3,
        z_dim: int = 128,
        image_size: int = 64,
        base_channels: int = 64,
        max_channels: int = 512,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        n_blocks = _check_size(image_size)
        self.num_classes, self.z_dim, self.image_size = num_classes, z_dim, image_size
        widths = [min(base_channels * 2 ** (n_blocks - i), max_channels) for i in range(n_blocks + 1)]
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Sequential(
            nn.Linear(z_dim + embed_dim, widths[0] * 16, bias=False),
            nn.Unflatten(1, (widths[0], 4, 4)),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
                for c_in, c_out in pairwise(widths)
            )
        )
        self.to_image = nn.Sequential(nn.Conv2d(widths[-1], 1, kernel_size=3, padding=1), nn.Tanh())

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.to_image(self.blocks(h))


class Discriminator(nn.Module):
    """``forward(x)`` -> ``(adversarial logit (N,), class logits (N, num_classes))`` for ``x`` in ``[-1, 1]``."""

    def __init__(
        self, num_classes: int = 3, image_size: int = 64, base_channels: int = 64, max_channels: int = 512
    ) -> None:
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        self.base_channels, self.max_channels = base_channels, max_channels
        self.trunk = discriminator_trunk(image_size, base_channels, max_channels)
        for block in self.trunk:
            spectral_norm(block[0])
        width = trunk_channels(image_size, base_channels, max_channels)[-1]
        self.adv = spectral_norm(nn.Linear(width, 1))
        self.head = ClassifierHead(width, num_classes, drop_rate=0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.head(self.trunk(x), pre_logits=True)
        return self.adv(pooled).squeeze(1), self.head.fc(pooled)

    def classifier_kwargs(self, mean: float, std: float) -> dict[str, Any]:
        """``get_model("acgan_discriminator", **kwargs)`` arguments of the exported classifier."""
        return {
            "image_size": self.image_size,
            "base_channels": self.base_channels,
            "max_channels": self.max_channels,
            "mean": mean,
            "std": std,
        }

    @torch.no_grad()
    def export_classifier(self, mean: float, std: float) -> ACGANDiscriminatorNet:
        """The trunk + class head as a plain :class:`ACGANDiscriminatorNet` (spectral norm baked into the weights).

        The effective weights are read in eval mode, where the parametrisation divides by the stored spectral norm
        estimate without a power-iteration step, so the export has exactly the discriminator's class logits.
        """
        was_training = self.training
        self.eval()
        net = ACGANDiscriminatorNet(self.num_classes, 1, 0.0, **self.classifier_kwargs(mean, std))
        for src, dst in zip(self.trunk, net.trunk, strict=True):
            dst[0].weight.copy_(src[0].weight)
            dst[0].bias.copy_(src[0].bias)
        net.head.load_state_dict(self.head.state_dict())
        net.arch = "acgan_discriminator"
        self.train(was_training)
        return net.eval()

"""The ACGAN discriminator's trunk and class head as an ordinary pneumo classifier (``"acgan_discriminator"``).

``pneumo.gan`` trains a discriminator made of this trunk (with spectral normalisation) plus two heads. Its class head
is a three-class chest X-ray classifier in its own right; exported as an :class:`ACGANDiscriminatorNet` it evaluates,
predicts and explains (Grad-CAM) like any other model of the zoo.

Input range: like every pneumo model this one takes the *normalised* input of the preprocessing contract,
``x = (pixels / 255 - mean) / std`` (:func:`pneumo.data.preprocess.normalize`). The GAN was trained on pixels scaled
to ``[-1, 1]`` (``2 * pixels / 255 - 1``, the range of the generator's tanh), so :meth:`forward_features` first maps
``x`` back: ``2 * (x * std + mean) - 1``. ``mean``/``std`` are constructor arguments (recorded in the checkpoint's
model kwargs) and must be those of the contract the model is used with.

Spectral normalisation: the exported trunk holds plain convolutions whose weights are the discriminator's effective
(already divided by the spectral norm, as in eval mode) weights, so the classifier has no parametrisations, exports
to ONNX as is, and gives the same logits as the discriminator's class head.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from pneumo.data.preprocess import GRAY_MEAN, GRAY_STD

from .base import PneumoNet
from .registry import register_model
from .spec import ModelSpec

LEAKY_SLOPE = 0.2


def trunk_channels(image_size: int, base_channels: int, max_channels: int) -> list[int]:
    """Output channels of each stride-2 block, from ``image_size`` down to 4 x 4 (``final`` keeps the last)."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    n_blocks = int(math.log2(image_size // 4))
    return [min(base_channels * 2**i, max_channels) for i in range(n_blocks)]


def discriminator_trunk(
    image_size: int, base_channels: int = 64, max_channels: int = 512, in_chans: int = 1
) -> nn.Sequential:
    """DCGAN-style trunk: blocks of a 4x4 stride-2 convolution + LeakyReLU(0.2), ``image_size`` -> 4 x 4, then
    ``final``: a 4x4 convolution without padding, 4 x 4 -> 1 x 1 (DCGAN's last layer).

    The final convolution keeps *where* things are for both heads; global average pooling straight after the 4 x 4
    map discards it, and in experiments on toy and synthetic data the class head then learned several times slower.
    No BatchNorm: the discriminator is regularised by spectral normalisation (applied by ``pneumo.gan``), which
    also keeps the exported classifier free of batch statistics.
    """
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_chans
    for i, width in enumerate(trunk_channels(image_size, base_channels, max_channels)):
        blocks[f"block{i + 1}"] = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        channels = width
    blocks["final"] = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=4), nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(blocks)


class ACGANDiscriminatorNet(PneumoNet):
    """Discriminator trunk + class head behind the :class:`PneumoNet` interface (see the module docstring)."""

    first_conv = "trunk.block1.0"

    def __init__(
        self,
        num_classes: int = 3,
        in_chans: int = 1,
        drop_rate: float = 0.0,
        image_size: int = 64,
        base_channels: int = 64,
        max_channels: int = 512,
        mean: float = GRAY_MEAN,
        std: float = GRAY_STD,
    ) -> None:
        channels = trunk_channels(image_size, base_channels, max_channels)
        super().__init__(channels[-1], num_classes, in_chans, drop_rate)
        self.image_size = image_size
        self.mean, self.std = float(mean), float(std)
        self.trunk = discriminator_trunk(image_size, base_channels, max_channels, in_chans)

    def to_gan_range(self, x: Tensor) -> Tensor:
        """Normalised input -> the ``[-1, 1]`` pixel range the discriminator was trained on."""
        return (x * self.std + self.mean) * 2.0 - 1.0

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk(self.to_gan_range(x))

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        return {name: (block,) for name, block in self.trunk.named_children()}

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.trunk[-2]  # the last block with a spatial (4 x 4) map; ``final`` is 1 x 1


@register_model("acgan_discriminator", ModelSpec(image_size=64, trainable=False))
def _acgan_discriminator(
    *, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, **kwargs: Any
) -> PneumoNet:
    if pretrained:
        raise ValueError("'acgan_discriminator' has no ImageNet weights; load a GAN run's classifier/ folder")
    return ACGANDiscriminatorNet(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs)

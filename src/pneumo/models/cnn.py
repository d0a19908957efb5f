"""A small from-scratch CNN: stages of conv-BatchNorm-ReLU blocks with max pooling, sized for a 2-core CPU.

Block ``i`` starts with a 2x2 max pool (except block 1, which starts with a stride-2 convolution so that no layer
runs at full input resolution) followed by ``depths[i]`` 3x3 conv-BN-ReLU layers of ``widths[i]`` channels. The
default (24, 48, 96, 192) x (1, 2, 2, 2) (0.66 M parameters) reduces a 128 px image to 8 x 8 x 192
features.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from .base import PneumoNet


class PneumoCNN(PneumoNet):
    first_conv = "features.block1.0.0"

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        drop_rate: float = 0.2,
        widths: Sequence[int] = (24, 48, 96, 192),
        depths: Sequence[int] = (1, 2, 2, 2),
    ) -> None:
        if len(widths) != len(depths) or not widths or min(depths) < 1:
            raise ValueError(f"widths {widths} and depths {depths} must be non-empty, same length, depths >= 1")
        super().__init__(widths[-1], num_classes, in_chans, drop_rate)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            layers: list[nn.Module] = [] if i == 0 else [nn.MaxPool2d(2)]
            for j in range(depth):
                stride = 2 if i == 0 and j == 0 else 1
                layers.append(Conv2dNormActivation(channels, width, kernel_size=3, stride=stride))
                channels = width
            blocks[f"block{i + 1}"] = nn.Sequential(*layers)
        self.features = nn.Sequential(blocks)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        return {name: (block,) for name, block in self.features.named_children()}

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.features[-1]

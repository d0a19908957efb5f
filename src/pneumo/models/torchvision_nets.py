"""ResNet-18/50 and DenseNet-121 from ``torchvision.models`` behind the :class:`PneumoNet` interface.

The torchvision modules are kept under their torchvision names (``conv1``, ``layer1``.., ``features.denseblock1``..),
so torchvision state dicts load key for key; only the classifier moves to ``head.fc``.

Grayscale: the models take ``in_chans`` (default 1) input channels. With ImageNet weights the first convolution's
RGB kernel is summed over its input channels by :func:`pneumo.models.weights.adapt_first_conv` -- mathematically
the same as replicating the gray image to 3 channels, but cheaper. ``in_chans=3`` keeps the RGB kernel.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

from .base import PneumoNet
from .weights import imagenet_state_dict, load_weights


def _input_conv(conv: nn.Conv2d, in_chans: int, fan_mode: str) -> nn.Conv2d:
    """A fresh input conv for ``in_chans``, initialised as torchvision initialises its own (Kaiming normal)."""
    if in_chans == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    nn.init.kaiming_normal_(new.weight, mode=fan_mode, nonlinearity="relu")
    return new


class TorchvisionResNet(PneumoNet):
    first_conv = "conv1"
    classifier = "fc"

    def __init__(self, net: tvm.ResNet, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__(net.fc.in_features, num_classes, in_chans, drop_rate)
        self.conv1 = _input_conv(net.conv1, in_chans, fan_mode="fan_out")
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        return {
            "stem": (self.conv1, self.bn1),
            "layer1": (self.layer1,),
            "layer2": (self.layer2,),
            "layer3": (self.layer3,),
            "layer4": (self.layer4,),
        }

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.layer4[-1]  # pytorch-grad-cam's recommendation for ResNets


class TorchvisionDenseNet(PneumoNet):
    first_conv = "features.conv0"
    classifier = "classifier"

    def __init__(self, net: tvm.DenseNet, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__(net.classifier.in_features, num_classes, in_chans, drop_rate)
        net.features.conv0 = _input_conv(net.features.conv0, in_chans, fan_mode="fan_in")
        self.features = net.features

    def forward_features(self, x: Tensor) -> Tensor:
        # Not in place (torchvision uses inplace=True): Grad-CAM hooks norm5's output, which must stay intact.
        return F.relu(self.features(x))

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        f = self.features
        stages: dict[str, tuple[nn.Module, ...]] = {"stem": (f.conv0, f.norm0)}
        stages.update((name, (module,)) for name, module in f.named_children() if name[:-1] in _DENSE_STAGES)
        stages["norm5"] = (f.norm5,)
        return stages

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.features.norm5  # = features[-1], pytorch-grad-cam's recommendation for DenseNets


_DENSE_STAGES = ("denseblock", "transition")


def build_torchvision(
    arch: str, *, num_classes: int, in_chans: int = 1, drop_rate: float = 0.2, pretrained: bool = False, **kwargs
) -> PneumoNet:
    """Build ``arch`` (a ``torchvision.models`` name); ``pretrained`` loads torchvision's default ImageNet weights.

    ``kwargs`` go to the torchvision builder (e.g. ``memory_efficient=True`` for DenseNet).
    """
    net = tvm.get_model(arch, weights=None, **kwargs)
    if isinstance(net, tvm.ResNet):
        model: PneumoNet = TorchvisionResNet(net, num_classes, in_chans, drop_rate)
    elif isinstance(net, tvm.DenseNet):
        model = TorchvisionDenseNet(net, num_classes, in_chans, drop_rate)
    else:
        raise ValueError(f"{arch} is neither a ResNet nor a DenseNet")
    if pretrained:
        # From the torch hub cache, downloaded there on first use (needs internet). The 1000-class head is skipped.
        load_weights(model, imagenet_state_dict(arch))
    return model

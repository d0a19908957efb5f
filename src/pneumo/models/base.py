"""``PneumoNet``: the one interface every network in the zoo exposes (timm-style).

Grad-CAM, feature extraction (FID, out-of-distribution scores), freezing and the dummy-class head rely on it, so no
caller needs per-architecture special cases.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .heads import ClassifierHead


class PneumoNet(nn.Module):
    """Backbone (``forward_features``) + shared :class:`ClassifierHead` (``forward_head``).

    Subclasses implement ``forward_features``, ``stages`` and ``cam_target_layer`` and set ``first_conv`` (the
    state-dict key prefix of the input convolution, used to adapt 1 <-> 3 channel weights) and, for wrapped
    torchvision networks, ``classifier`` (torchvision's name of the final linear layer).
    """

    first_conv: str = ""
    classifier: str = ""  # torchvision's key prefix of the classifier, loaded as ``head.fc``

    def __init__(self, num_features: int, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__()
        self.num_features = num_features
        self.in_chans = in_chans
        self.arch = type(self).__name__  # overwritten by the registry with the registered name
        self.head = ClassifierHead(num_features, num_classes, drop_rate)
        # Names of backbone stages frozen by pneumo.models.freeze; their BatchNorm layers stay in eval mode.
        self.frozen_stages: set[str] = set()

    @property
    def num_classes(self) -> int:
        return self.head.fc.out_features

    # --- to implement -------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone output, ``N x num_features x H' x W'`` (post-activation)."""
        raise NotImplementedError

    def stages(self) -> dict[str, tuple[nn.Module, ...]]:
        """Ordered backbone stages (input side first) -> the modules that hold their parameters/buffers."""
        raise NotImplementedError

    @property
    def cam_target_layer(self) -> nn.Module:
        """Default Grad-CAM layer (as recommended by pytorch-grad-cam for the architecture)."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------------------
    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool -> dropout -> linear; with ``pre_logits=True`` the pooled ``N x num_features`` vector."""
        return self.head(feats, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def layer_names(self) -> list[str]:
        """Ordered backbone stage names used by the freeze policy (``until:<name>``)."""
        return list(self.stages())

    def reset_classifier(self, num_classes: int, drop_rate: float | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` outputs."""
        rate = self.head.drop.p if drop_rate is None else drop_rate
        device = self.head.fc.weight.device
        self.head = ClassifierHead(self.num_features, num_classes, rate).to(device)

    def frozen_batchnorms(self) -> Iterator[_BatchNorm]:
        stages = self.stages()
        for name in self.frozen_stages:
            for module in stages[name]:
                for sub in module.modules():
                    if isinstance(sub, _BatchNorm):
                        yield sub

    def train(self, mode: bool = True) -> PneumoNet:
        # Frozen means frozen: BatchNorm of frozen stages keeps its running statistics even in train mode.
        # Overriding train() (rather than patching each BN) keeps this true whatever calls model.train().
        super().train(mode)
        if mode:
            for bn in self.frozen_batchnorms():
                bn.eval()
        return self

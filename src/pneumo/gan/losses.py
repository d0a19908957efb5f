"""ACGAN losses: an adversarial term (hinge or non-saturating) plus the auxiliary class cross-entropy.

As in the paper, the discriminator minimises ``L_adv + w * (CE(real) + CE(fake))`` (it learns to classify generated
images as their requested class too) and the generator minimises ``L_adv_G + w * CE(fake)``.

One-sided label smoothing (Salimans et al. 2016) replaces the discriminator's target 1 for real images by
``1 - smoothing`` in the non-saturating (binary cross-entropy) loss; it has no meaning for the hinge loss, whose
margin already bounds the real logits, so the config refuses it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AdversarialLoss = Literal["hinge", "nonsaturating"]


def d_adversarial(real: Tensor, fake: Tensor, kind: AdversarialLoss, smoothing: float = 0.0) -> Tensor:
    """Discriminator adversarial loss on real and generated logits."""
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    target_real = torch.full_like(real, 1.0 - smoothing)
    return F.binary_cross_entropy_with_logits(real, target_real) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def g_adversarial(fake: Tensor, kind: AdversarialLoss) -> Tensor:
    """Generator adversarial loss (the non-saturating ``-log D(G(z))`` form for the BCE loss)."""
    if kind == "hinge":
        return -fake.mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


@dataclass
class DiscriminatorLoss:
    total: Tensor
    adversarial: Tensor
    aux_real: Tensor
    aux_fake: Tensor


def discriminator_loss(
    real_adv: Tensor,
    real_cls: Tensor,
    real_labels: Tensor,
    fake_adv: Tensor,
    fake_cls: Tensor,
    fake_labels: Tensor,
    *,
    kind: AdversarialLoss,
    aux_weight: float = 1.0,
    smoothing: float = 0.0,
) -> DiscriminatorLoss:
    adversarial = d_adversarial(real_adv, fake_adv, kind, smoothing)
    aux_real = F.cross_entropy(real_cls, real_labels)
    aux_fake = F.cross_entropy(fake_cls, fake_labels)
    return DiscriminatorLoss(adversarial + aux_weight * (aux_real + aux_fake), adversarial, aux_real, aux_fake)


def generator_loss(
    fake_adv: Tensor, fake_cls: Tensor, fake_labels: Tensor, *, kind: AdversarialLoss, aux_weight: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, adversarial, auxiliary)``."""
    adversarial = g_adversarial(fake_adv, kind)
    aux = F.cross_entropy(fake_cls, fake_labels)
    return adversarial + aux_weight * aux, adversarial, aux

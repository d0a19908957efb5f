"""Loss values and a few ACGAN steps on real (toy) images."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pneumo.gan import load_config
from pneumo.gan.losses import d_adversarial, discriminator_loss, g_adversarial
from pneumo.gan.synth import to_gan_range
from pneumo.gan.train import ACGANSteps, label_distribution, load_data

from .conftest import TINY, TOY_SIZE


def test_adversarial_losses() -> None:
    confident_real, confident_fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert d_adversarial(confident_real, confident_fake, "hinge") == 0  # outside the margin: no loss
    assert d_adversarial(torch.zeros(4), torch.zeros(4), "hinge") == 2
    assert math.isclose(
        float(d_adversarial(torch.zeros(4), torch.zeros(4), "nonsaturating")), 2 * math.log(2), rel_tol=1e-6
    )
    # one-sided smoothing: a confident real logit is now penalised, fakes are not affected
    smoothed = d_adversarial(confident_real, confident_fake, "nonsaturating", smoothing=0.1)
    plain = d_adversarial(confident_real, confident_fake, "nonsaturating")
    assert smoothed > plain + 0.2
    assert g_adversarial(torch.full((4,), 2.0), "hinge") == -2
    assert g_adversarial(torch.full((4,), 10.0), "nonsaturating") < 1e-3


def test_discriminator_loss_adds_weighted_aux_terms() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1])
    adv = torch.zeros(2)
    loss = discriminator_loss(adv, logits, labels, adv, logits, labels.flip(0), kind="hinge", aux_weight=0.5)
    ce_real, ce_fake = F.cross_entropy(logits, labels), F.cross_entropy(logits, labels.flip(0))
    assert torch.isclose(loss.aux_real, ce_real) and torch.isclose(loss.aux_fake, ce_fake)
    assert torch.isclose(loss.total, 2 + 0.5 * (ce_real + ce_fake))


def test_a_few_steps_lower_the_auxiliary_losses(toy_data: Path) -> None:
    """30 steps: the class head learns real classes and the generator learns to make its classes recognisable."""
    config = load_config(None, [*TINY, f"image_size={TOY_SIZE}"], data=str(toy_data))
    data = load_data(config, progress=False)
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    steps = ACGANSteps(config, label_distribution(data.train_y, 3, "data"), torch.device("cpu"), rng)
    x, y = to_gan_range(data.train_x), data.train_y

    def aux_loss_on_real() -> float:
        steps.discriminator.eval()
        with torch.no_grad():
            loss = F.cross_entropy(steps.discriminator(x)[1], y).item()
        steps.discriminator.train()
        return loss

    before = aux_loss_on_real()
    g_aux = []
    for _ in range(30):
        idx = torch.randint(0, len(x), (32,), generator=rng)
        steps.d_step(x[idx], y[idx])
        g_aux.append(steps.g_step(32)["g_aux"].item())
    after = aux_loss_on_real()
    assert before > 1.0  # about ln 3 for balanced classes at initialisation
    assert after < before - 0.3, (before, after)
    assert sum(g_aux[-5:]) / 5 < sum(g_aux[:5]) / 5 - 0.3, g_aux

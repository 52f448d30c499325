"""FGSM and PGD stay inside their L∞ ball and the pixel range, and raise the loss of the true labels."""
import pytest
import torch
import torch.nn.functional as F

from workloads.adversarial import fgsm, pgd, robust_accuracy


def test_pgd_stays_in_the_ball_and_raises_the_loss(digits_victim):
    model, x, y = digits_victim.model, digits_victim.data.x_test[:200], digits_victim.data.y_test[:200]
    gen = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.02, steps=10, generator=gen)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    noise = (x + (torch.rand(x.shape, generator=gen) * 0.2 - 0.1)).clamp(0, 1)
    with torch.no_grad():
        clean, random, adv = (F.cross_entropy(model(v), y).item() for v in (x, noise, x_adv))
    assert adv > clean + 0.5 and adv > random + 0.5


def test_fgsm_moves_every_pixel_by_eps_or_to_the_range_edge(digits_victim):
    model, x, y = digits_victim.model, digits_victim.data.x_test[:100], digits_victim.data.y_test[:100]
    x_adv = fgsm(model, x, y, eps=0.05)
    moved = (x_adv - x).abs()
    assert moved.max() <= 0.05 + 1e-6
    at_edge = (x_adv == 0) | (x_adv == 1)
    assert torch.all((moved > 0.05 - 1e-6) | at_edge | (moved == 0))
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_robust_accuracy_falls_with_epsilon_and_equals_clean_accuracy_at_zero(digits_victim):
    model, x, y = digits_victim.model, digits_victim.data.x_test, digits_victim.data.y_test
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert robust_accuracy(model, x, y, 0.0, 0.0, 5) == pytest.approx(clean)
    assert robust_accuracy(model, x, y, 0.2, 0.05, 10) < clean - 0.3

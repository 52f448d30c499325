"""L∞ evasion attacks on images in [0, 1]: FGSM and PGD, and robust accuracy under PGD.

FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015),
x' = clip(x + ε·sign(∇ₓ L(f(x), y))). PGD: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks" (ICLR 2018), eq. (2): from a uniform random start in the ε-ball, `steps` signed-gradient
steps of size α, each projected back onto the ε-ball around x and onto the pixel range [0, 1].
Adversarial training (workloads.hardening.adversarial_training) and watermark crafting
(workloads.ownership.watermark) both use them. The model is put in eval mode while an attack runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, targeted: bool = False) -> torch.Tensor:
    """One signed-gradient step of size `eps` that raises the loss of labels y (Goodfellow et al., eq. 3), or,
    `targeted`, lowers the loss of target labels y."""
    was_training = model.training
    model.eval()
    x_adv = (x + (-eps if targeted else eps) * _grad_sign(model, x, y)).clamp(0.0, 1.0).detach()
    model.train(was_training)
    return x_adv


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        random_start: bool = True, generator: torch.Generator | None = None, targeted: bool = False) -> torch.Tensor:
    """Madry's PGD: maximise the loss of labels y within the L∞ ball of radius `eps` around x, in [0, 1]
    (`targeted`: minimise the loss of target labels y). The random start is drawn from `generator` (on CPU,
    so it is the same on every device)."""
    was_training = model.training
    model.eval()
    x_adv = x.detach()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 * eps - eps
        x_adv = (x + noise).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + (-alpha if targeted else alpha) * _grad_sign(model, x_adv, y)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0).detach()
    model.train(was_training)
    return x_adv


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                    seed: int = 0, batch_size: int = 512) -> float:
    """Accuracy on PGD(eps, alpha, steps, random start seeded by `seed`) adversarial examples of (x, y)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb, yb = xb.to(device), yb.to(device)
        x_adv = pgd(model, xb, yb, eps, alpha, steps, generator=gen)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == yb).sum().item()
    return correct / max(1, len(x))

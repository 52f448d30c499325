"""Training: the distillation loss on soft labels, and that soft targets are really used (not their argmax)."""
import math

import pytest
import torch

from workloads.models import build_model
from workloads.training import TrainConfig, fit, predict_proba, soft_cross_entropy


def test_soft_cross_entropy_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    z = math.log(math.exp(2) + 1 + math.exp(-1))
    row0 = -(0.7 * (2 - z) + 0.2 * (0 - z) + 0.1 * (-1 - z))
    row1 = math.log(3)
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_a_substitute_trained_on_soft_labels_learns_the_probabilities_not_only_the_argmax():
    """Targets that all share one argmax but differ in their second class: a soft-label learner reproduces the
    second class's mass per input; an argmax learner would put (almost) nothing there."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=gen)
    second = (x.flatten(1).mean(1) > 0.5).long() + 1          # class 1 or 2, readable from the input
    targets = torch.full((200, 3), 0.0)
    targets[:, 0] = 0.6
    targets[torch.arange(200), second] = 0.4
    model = build_model("lenet5", (1, 8, 8), 3, seed=1)
    fit(model, x, targets, TrainConfig(epochs=60, batch_size=50, lr=1e-2), seed=2, device=torch.device("cpu"))
    probs = predict_proba(model, x)
    assert (probs.argmax(1) == 0).all()
    assert probs[torch.arange(200), second].mean() > 0.3

"""Metrics with the names Heist logs everywhere (MLflow, Tune, Parquet); see docs/DESIGN.md's metric table."""
from __future__ import annotations

import torch


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label (victim_accuracy, defended_accuracy, stolen_accuracy)."""
    return (probs.argmax(1) == labels).float().mean().item()


def fidelity(substitute_probs: torch.Tensor, victim_probs: torch.Tensor) -> float:
    """Agreement of substitute and victim argmax on the same inputs (fidelity/<attack>)."""
    return (substitute_probs.argmax(1) == victim_probs.argmax(1)).float().mean().item()


def perturbation_l1(defended: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean L1 distance between defended and clean posteriors (perturbation_l1)."""
    return (defended - clean).abs().sum(1).mean().item()


def relative_accuracy(stolen_accuracy: float, victim_accuracy: float) -> float:
    """stolen_accuracy / victim_accuracy, the normalised figure MAZE and InI report ("0.97x")."""
    return stolen_accuracy / victim_accuracy if victim_accuracy > 0 else 0.0

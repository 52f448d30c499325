"""White-box watermark removal on a leaked copy of the victim: fine-tuning on clean data, magnitude pruning.

Thakkar, Zizzo, Maffeis (AAAI'24 workshop) attack the watermark of a stolen white-box model by fine-tuning
and by pruning. Fine-tuning: the thief trains the copy further on its own clean labelled data (Heist: the
attacker's pool split with its true labels). Pruning: global magnitude pruning (Han et al. 2015) — the
`rate` fraction of all conv and linear weights with the smallest |w| set to zero, biases kept, no re-training.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from workloads.config import ConfigError, above, positive
from workloads.training import TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning removal: epochs and learning rate on the thief's clean data (Adam, cosine schedule)."""

    epochs: int = 5
    lr: float = 5e-4
    batch_size: int = 128

    def __post_init__(self):
        positive("epochs", self.epochs)
        above("lr", self.lr)
        positive("batch_size", self.batch_size)


def check_rate(rate: float, path: str = "rate") -> None:
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"{path}: expected a pruning rate in (0, 1), got {rate!r}")


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig, seed: int) -> nn.Module:
    """A fine-tuned copy of `model` (the original is untouched)."""
    train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    return fit(copy.deepcopy(model), x, y, train, seed=seed).cpu().eval()


def prunable(model: nn.Module) -> list[torch.Tensor]:
    """The weights global magnitude pruning ranks: every Conv and Linear weight tensor."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def prune(model: nn.Module, rate: float) -> nn.Module:
    """A copy of `model` with the round(rate·n) smallest-magnitude of its n prunable weights set to zero."""
    check_rate(rate)
    pruned = copy.deepcopy(model)
    weights = prunable(pruned)
    flat = torch.cat([w.abs().flatten() for w in weights])
    drop = torch.zeros(len(flat), dtype=torch.bool)
    drop[flat.argsort()[:round(rate * len(flat))]] = True
    start = 0
    for w in weights:
        w[drop[start:start + w.numel()].view_as(w)] = 0.0
        start += w.numel()
    return pruned.eval()

"""Seeded training and batched inference for classifiers and substitutes.

`fit` trains on hard labels (cross-entropy) or on probability vectors (soft cross-entropy, i.e. KL to
the targets up to a constant — the distillation loss of Knockoff Nets), on CUDA when available.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.config import above, positive

EPOCH_DONE: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("epoch_done",
                                                                                              default=None)


@contextlib.contextmanager
def reporting_epochs(callback: Callable[[int, int], None]):
    """While inside, every `fit` calls `callback(epochs_done, epochs)` after each epoch (progress display)."""
    token = EPOCH_DONE.set(callback)
    try:
        yield
    finally:
        EPOCH_DONE.reset(token)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a classifier (victim or substitute) is trained."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["none", "cosine"] = "cosine"

    def __post_init__(self):
        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        above("lr", self.lr)


def fit(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig, *, seed: int = 0,
        device: torch.device | None = None) -> nn.Module:
    """Train `model` in place on (x, targets); targets are int labels (N,) or probabilities (N, K)."""
    device = device or default_device()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train(model, x, targets, cfg, gen, device)


def _train(model, x, targets, cfg: TrainConfig, gen: torch.Generator, device) -> nn.Module:
    model.to(device).train()
    opt, sched = optimizer_for(model, cfg, len(x))
    soft = targets.ndim == 2
    report = EPOCH_DONE.get()
    for epoch in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            xb, tb = x[idx].to(device), targets[idx].to(device)
            logits = model(xb)
            loss = soft_cross_entropy(logits, tb) if soft else F.cross_entropy(logits, tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        if report:
            report(epoch + 1, cfg.epochs)
    return model.eval()


def optimizer_for(model: nn.Module, cfg: TrainConfig, n: int):
    """The optimizer and (optional) per-step LR schedule `cfg` asks for, for `cfg.epochs` passes over n images."""
    params = model.parameters()
    opt = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    steps = cfg.epochs * max(1, -(-n // cfg.batch_size))
    return opt, (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cfg.schedule == "cosine" else None)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Distillation loss on probability targets: mean over rows of −Σ_k t_k log softmax(z)_k, which is
    KL(t ‖ softmax z) up to the targets' entropy (Knockoff Nets' soft-label training)."""
    return -(targets * F.log_softmax(logits, 1)).sum(1).mean()


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax posteriors of `model` on x, computed in batches on the model's device, returned on CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([F.softmax(model(b.to(device)), 1).cpu() for b in x.split(batch_size)])

"""The transfer-set attack loop shared by Knockoff Nets and CopycatCNN: sample, query, train."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from workloads.models import build_model
from workloads.seeds import derive_seed
from workloads.training import fit


def sample_queries(pool: torch.Tensor, budget: int, seed: int) -> torch.Tensor:
    """`budget` images drawn from `pool` without replacement, cycling through fresh permutations when the
    budget exceeds the pool (as Knockoff Nets' `transfer.py` repeats its query set). `seed` is the attack's
    seed; the draw uses its own stream ("attack/sampling")."""
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", seed))
    rounds = -(-budget // len(pool))
    idx = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(rounds)])[:budget]
    return pool[idx]


def train_on_answers(x: torch.Tensor, answers: np.ndarray, labels: str, arch: str, victim, train_cfg,
                     seed: int) -> nn.Module:
    """Train a fresh substitute on (x, answers): soft targets, or the answers' argmax when labels='hard'.
    Its initial weights and batch order come from the attack seed's own streams, never the victim's."""
    y = torch.from_numpy(np.asarray(answers, dtype=np.float32))
    targets = y.argmax(1) if labels == "hard" else y
    return fit(new_substitute(arch, victim, seed), x, targets, train_cfg, seed=derive_seed("substitute/train", seed))


def new_substitute(arch: str, victim, seed: int) -> nn.Module:
    """A freshly initialised substitute from the attack seed's "substitute/init" stream."""
    return build_model(arch, victim.shape, victim.num_classes, seed=derive_seed("substitute/init", seed))


def query_and_train(cfg, client, x: torch.Tensor, victim, checkpoint=None) -> nn.Module:
    """Query `x` through the client, then train the substitute on the answers.

    With a `checkpoint` callback, the budget curve is measured the way mebench's "retrain" track does:
    at each of `cfg.checkpoints` below the number of answers, a fresh substitute is trained on the first
    answers alone (the same seed, so points differ only by data)."""
    answers = client.query(x.numpy())
    arch = cfg.substitute_arch or victim.arch
    if checkpoint is not None:
        for n in (c for c in cfg.checkpoints if c < len(x)):
            checkpoint(n, train_on_answers(x[:n], answers[:n], cfg.labels, arch, victim, cfg.train, cfg.seed))
    substitute = train_on_answers(x, answers, cfg.labels, arch, victim, cfg.train, cfg.seed)
    if checkpoint is not None:
        checkpoint(len(x), substitute)
    return substitute

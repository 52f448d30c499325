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
                     seed: int, model: nn.Module | None = None) -> nn.Module:
    """Train a substitute on (x, answers): soft targets, or the answers' argmax when labels='hard'. A fresh one
    (initial weights from the attack seed's own stream, never the victim's) unless `model` is given to train on.
    The batch order comes from the attack seed's "substitute/train" stream."""
    y = torch.from_numpy(np.asarray(answers, dtype=np.float32))
    targets = y.argmax(1) if labels == "hard" else y
    model = model if model is not None else new_substitute(arch, victim, seed)
    return fit(model, x, targets, train_cfg, seed=derive_seed("substitute/train", seed))


def new_substitute(arch: str, victim, seed: int) -> nn.Module:
    """A freshly initialised substitute from the attack seed's "substitute/init" stream."""
    return build_model(arch, victim.shape, victim.num_classes, seed=derive_seed("substitute/init", seed))


def query_and_train(cfg, client, x: torch.Tensor, victim, checkpoint=None) -> nn.Module:
    """Query `x` through the client and train the substitute on the answers, measuring the budget curve.

    `curve: retrain`: all of x goes in one query (split across the workers), then one fresh substitute is trained;
    the CurveClient retrains fresh ones on the first c answers for the checkpoints below. `curve: online`: x is
    queried in segments ending at the checkpoints, and after each segment the same substitute goes on training
    (`cfg.train`) on every answer so far — an attacker that trains as answers arrive."""
    from workloads.attacks.curve import CurveClient

    client = CurveClient(client, cfg, victim, checkpoint)
    arch = cfg.substitute_arch or victim.arch
    if cfg.curve == "retrain":
        answers = client.query(x)
        substitute = train_on_answers(x, answers, cfg.labels, arch, victim, cfg.train, cfg.seed)
        client.finish(substitute, from_scratch=True)
        return substitute
    substitute, answers, lo = None, [], 0
    for hi in [c for c in cfg.checkpoints if c < len(x)] + [len(x)]:
        answers.append(client.query(x[lo:hi]))
        substitute = train_on_answers(x[:hi], np.concatenate(answers), cfg.labels, arch, victim, cfg.train,
                                      cfg.seed, model=substitute)
        client.online(substitute)
        lo = hi
    client.finish(substitute)
    return substitute

"""The round loop of the adaptive attackers of Dziedzic et al. (ICLR 2022, Sec. 4.3; official
`model_extraction/main_model_extraction.py`): query the pool in rounds of `step` images, each round
choosing the not-yet-queried images the attacker scores lowest, so the queries look as cheap (as benign)
as possible to the defender's leakage accounting.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from workloads.config import ConfigError, knob, positive
from workloads.seeds import derive_seed
from workloads.attacks.transfer import train_on_answers


@dataclasses.dataclass(frozen=True)
class AdaptiveParams:
    step: int = knob(1000, "images queried per round, chosen by the round's criterion (the paper's 1,000)", '>= 1')
    warmup: float = knob(0.0, 'fraction of the budget first queried at random, before the adaptive rounds', '[0, 1)')
    round_epochs: int | None = knob(None, 'substitute epochs after an intermediate round; null = train.epochs', '>= 1 or null')

    def __post_init__(self):
        positive("step", self.step)
        if not 0.0 <= self.warmup <= 1.0:
            raise ConfigError(f"warmup: expected a fraction in [0, 1], got {self.warmup!r}")
        if self.round_epochs is not None:
            positive("round_epochs", self.round_epochs)


Score = Callable[[torch.Tensor, "torch.nn.Module | None"], np.ndarray]   # (pool indices, substitute) -> scores


def steal_in_rounds(cfg, params: AdaptiveParams, client, pool: torch.Tensor, victim, score: Score,
                    checkpoint=None, retrain: bool = True, on_query: Callable | None = None):
    """Query min(budget, pool) images in rounds, lowest `score(pool indices, substitute)` first (ties in a
    random order), train the substitute on every answer; returns the final substitute.

    `retrain`: train a substitute after each intermediate round (for scores that use it); `on_query(idx)`
    is told the pool indices each round queried."""
    budget = min(cfg.budget, len(pool))
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", cfg.seed))
    remaining = torch.randperm(len(pool), generator=gen)
    arch = cfg.substitute_arch or victim.arch
    round_train = dataclasses.replace(cfg.train, epochs=params.round_epochs or cfg.train.epochs)
    xs, answers, substitute = [], [], None
    used, warmup = 0, int(round(params.warmup * budget))
    while used < budget:
        take = min(params.step if used >= warmup else warmup - used, budget - used)
        if used < warmup:
            chosen, remaining = remaining[:take], remaining[take:]
        else:
            order = np.argsort(score(remaining, substitute), kind="stable")[:take]
            keep = np.ones(len(remaining), dtype=bool)
            keep[order] = False
            chosen, remaining = remaining[torch.from_numpy(order)], remaining[torch.from_numpy(keep)]
        x = pool[chosen]
        answers.append(client.query(x.numpy()))
        xs.append(x)
        used += len(x)
        if on_query is not None:
            on_query(chosen)
        if used < budget and retrain:
            substitute = train_on_answers(torch.cat(xs), np.concatenate(answers), cfg.labels, arch, victim,
                                          round_train, cfg.seed)
            if checkpoint is not None:
                checkpoint(used, substitute)
    return train_on_answers(torch.cat(xs), np.concatenate(answers), cfg.labels, arch, victim, cfg.train, cfg.seed)

"""ActiveThief (Pal, Gupta, Shukla, Kanade, Shevade, Ganapathy, AAAI 2020): pool-based active learning in rounds.

The attacker labels a random seed set S_0 of its pool (`seed_size`; default 10 % of the budget, as mebench's
spec), trains a fresh substitute, then for `rounds` rounds selects k new pool images with the current
substitute, queries them in one `client.query` and retrains a fresh substitute on everything labelled so far
(the official code retrains every round; here from the same initialisation, `cfg.train`). The budget minus the
seed set is split over the rounds as evenly as possible, so the queries equal the budget exactly; each pool
image is queried at most once. Strategies (the substitute's softmax p on the unlabelled pool):
  random; entropy ("uncertainty": the k largest H(p) = −Σ p log p); kcenter (greedy k-center core-set on p, Sener
  & Savarese 2018: repeatedly take the point farthest from every labelled point and every point already taken;
  distances are computed batched, one (N × chunk) block at a time, and updated with one row per pick).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from workloads.attacks import register
from workloads.attacks.curve import CurveClient
from workloads.attacks.transfer import train_on_answers
from workloads.config import ConfigError, knob, positive
from workloads.seeds import derive_seed
from workloads.training import predict_proba

STRATEGIES = ("random", "entropy", "kcenter")


@dataclasses.dataclass(frozen=True)
class ActiveThiefParams:
    strategy: Literal["random", "entropy", "kcenter"] = knob("entropy", "subset selection each round: uncertainty (entropy of the substitute's answer), k-center coverage, or random")
    seed_size: int | None = knob(None, 'random seed set S_0 queried first; null = 10 % of the budget (mebench)', '>= 1 or null')
    rounds: int = knob(5, "selection rounds after the seed round, the rest of the budget split evenly (ActiveThief's num_iter)", '>= 1')

    def __post_init__(self):
        if self.seed_size is not None:
            positive("seed_size", self.seed_size)
        positive("rounds", self.rounds)

    def initial(self, budget: int) -> int:
        return self.seed_size if self.seed_size is not None else max(1, budget // 10)

    def check(self, cfg) -> None:
        seed = self.initial(cfg.budget)
        if cfg.budget < seed:
            raise ConfigError(f"budget: {cfg.budget} is smaller than the first round (params.seed_size = {seed})")
        if cfg.budget - seed < self.rounds:
            raise ConfigError(f"budget: {cfg.budget} leaves {cfg.budget - seed} images after the seed set for "
                              f"params.rounds = {self.rounds} rounds (at least one each)")

    def check_pool(self, cfg, pool_size: int) -> None:
        if cfg.budget > pool_size:
            raise ConfigError(f"budget: {cfg.budget} exceeds the attacker's pool ({pool_size} images, surrogate.kind "
                              f"{cfg.surrogate.kind!r}); ActiveThief queries each pool image at most once")


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def kcenter(candidates: torch.Tensor, centers: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (into `candidates`) of k greedy k-center picks given the labelled `centers` (rows are features)."""
    nearest = torch.full((len(candidates),), float("inf"))
    for block in centers.split(chunk):
        nearest = torch.minimum(nearest, torch.cdist(candidates, block).min(1).values)
    picks = []
    for _ in range(k):
        i = int(nearest.argmax())
        picks.append(i)
        nearest = torch.minimum(nearest, (candidates - candidates[i]).norm(dim=1))
        nearest[i] = -1.0
    return torch.tensor(picks, dtype=torch.long)


def select(strategy: str, substitute, pool: torch.Tensor, labelled: torch.Tensor, k: int,
           gen: torch.Generator) -> torch.Tensor:
    """Pool indices of the k images to query next (never one already labelled)."""
    free = torch.ones(len(pool), dtype=torch.bool)
    free[labelled] = False
    candidates = torch.nonzero(free).flatten()
    if strategy == "random":
        return candidates[torch.randperm(len(candidates), generator=gen)[:k]]
    p = predict_proba(substitute, pool)
    if strategy == "entropy":
        return candidates[torch.topk(entropy(p[candidates]), k).indices]
    return candidates[kcenter(p[candidates], p[labelled], k)]


@register("activethief", ActiveThiefParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    client = CurveClient(client, cfg, victim, checkpoint)
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", cfg.seed))
    arch = cfg.substitute_arch or victim.arch
    seed = params.initial(cfg.budget)
    sizes = [seed] + [len(s) for s in np.array_split(np.arange(cfg.budget - seed), params.rounds)]
    labelled = torch.randperm(len(pool), generator=gen)[:seed]
    answers = client.query(pool[labelled])
    substitute = train_on_answers(pool[labelled], answers, cfg.labels, arch, victim, cfg.train, cfg.seed)
    client.online(substitute)
    for k in sizes[1:]:
        picked = select(params.strategy, substitute, pool, labelled, k, gen)
        answers = np.concatenate([answers, client.query(pool[picked])])
        labelled = torch.cat([labelled, picked])
        substitute = train_on_answers(pool[labelled], answers, cfg.labels, arch, victim, cfg.train, cfg.seed)
        client.online(substitute)
    client.finish(substitute, from_scratch=True)
    return substitute

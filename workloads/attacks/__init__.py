"""Model-extraction attacks, a registry by name.

An attack never holds the victim: it talks to a `QueryClient`, which answers `query(x)` with the
(defended) posteriors and counts every image against the attack's budget. In-process tests use
`LocalQueryClient`; trials use a client that fans queries out over Ray attacker workers.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Literal, Protocol

import numpy as np
import torch
import torch.nn as nn

from workloads.config import ConfigError, check_choice, positive
from workloads.data import SURROGATE_KINDS
from workloads.training import TrainConfig


class BudgetExceeded(RuntimeError):
    """A query would take a client past its image budget."""


class QueryClient(Protocol):
    budget: int
    used: int

    def query(self, x: np.ndarray) -> np.ndarray:
        """Posteriors (N, K) for images x (N, C, H, W), float32; charges N images to the budget."""


class LocalQueryClient:
    """A QueryClient over an in-process answer function (a model plus defense), for tests and debugging."""

    def __init__(self, answer: Callable[[torch.Tensor], torch.Tensor], budget: int):
        self.answer, self.budget, self.used = answer, budget, 0

    def query(self, x: np.ndarray) -> np.ndarray:
        if self.used + len(x) > self.budget:
            raise BudgetExceeded(f"query of {len(x)} images exceeds budget ({self.used}/{self.budget} used)")
        self.used += len(x)
        with torch.inference_mode():
            return self.answer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """Where the attacker's query images come from (see workloads.data.surrogate_pool)."""

    kind: Literal["split", "dataset", "noise"] = "split"
    name: str | None = None
    size: int | None = None

    def __post_init__(self):
        check_choice("kind", self.kind, SURROGATE_KINDS)
        if self.kind == "dataset" and not self.name:
            raise ConfigError("name: required when kind is 'dataset'")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One extraction attack: which, with what budget (images), labels, query data and substitute."""

    name: str = "knockoff"
    budget: int = 1000
    labels: Literal["soft", "hard"] | None = None
    surrogate: SurrogateConfig = SurrogateConfig()
    workers: int = 1
    query_batch: int = 256
    substitute_arch: str | None = None
    train: TrainConfig = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
    seed: int = 0
    id: str | None = None

    def __post_init__(self):
        check_choice("name", self.name, ATTACKS)
        positive("budget", self.budget)
        positive("workers", self.workers)
        positive("query_batch", self.query_batch)
        if self.labels is None:
            object.__setattr__(self, "labels", DEFAULT_LABELS[self.name])

    @property
    def key(self) -> str:
        """The name metrics use for this attack: stolen_accuracy/<key>."""
        return self.id or f"{self.name}_{self.labels}_{self.surrogate.name or self.surrogate.kind}"


@dataclasses.dataclass
class VictimInfo:
    """What an attacker knows about the victim's interface (public: input shape and classes)."""

    shape: tuple[int, int, int]
    num_classes: int
    arch: str


ATTACKS = ("knockoff", "copycat")
DEFAULT_LABELS = {"knockoff": "soft", "copycat": "hard"}  # each paper's own label mode


def steal(cfg: AttackConfig, client: QueryClient, pool: torch.Tensor, victim: VictimInfo) -> nn.Module:
    """Run attack `cfg` through `client` with query pool `pool`; return the trained substitute."""
    module = importlib.import_module(f"workloads.attacks.{cfg.name}")
    return module.steal(cfg, client, pool, victim)

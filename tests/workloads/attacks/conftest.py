"""Helpers for the attack tests: a counting in-process client on the digits victim, tiny training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
from workloads.training import TrainConfig, predict_proba

TINY = TrainConfig(epochs=2, batch_size=32, lr=0.003)


class RecordingClient(LocalQueryClient):
    """A LocalQueryClient that also keeps every query it answered (its images)."""

    def __init__(self, answer, budget):
        super().__init__(answer, budget)
        self.queries: list[np.ndarray] = []

    def query(self, x):
        out = super().query(x)
        self.queries.append(np.array(x))
        return out


@pytest.fixture(scope="session")
def run_attack(digits_victim):
    """run_attack(checkpoint=None, pool=None, **AttackConfig kwargs) -> (substitute, client)."""
    victim = digits_victim
    info = VictimInfo(victim.data.shape, victim.data.num_classes, "lenet5")

    def run(checkpoint=None, pool=None, pool_labels=None, **kw):
        cfg = AttackConfig(**({"train": TINY} | kw))
        client = RecordingClient(lambda x: predict_proba(victim.model, x), cfg.budget)
        pool = victim.data.x_pool if pool is None else pool
        labels = victim.data.y_pool if pool_labels is None and pool is victim.data.x_pool else pool_labels
        return steal(cfg, client, pool, info, checkpoint, pool_labels=labels), client

    return run


@pytest.fixture(scope="session")
def same_weights():
    """same_weights(a, b): whether two modules hold identical tensors."""
    return lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

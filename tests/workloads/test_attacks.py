"""Knockoff Nets and CopycatCNN steal the digits victim through a budget-counting QueryClient."""
import numpy as np
import pytest

from workloads.attacks import AttackConfig, BudgetExceeded, LocalQueryClient, VictimInfo, steal
from workloads.attacks.transfer import sample_queries
from workloads.metrics import accuracy, relative_accuracy
from workloads.training import predict_proba


def run_attack(victim, **kw):
    cfg = AttackConfig(**kw)
    client = LocalQueryClient(lambda x: predict_proba(victim.model, x), cfg.budget)
    info = VictimInfo(victim.data.shape, victim.data.num_classes, victim.config.arch)
    substitute = steal(cfg, client, victim.data.x_pool, info)
    stolen = accuracy(predict_proba(substitute, victim.data.x_test), victim.data.y_test)
    return relative_accuracy(stolen, victim.accuracy), client.used


@pytest.mark.parametrize("name,labels", [("knockoff", "soft"), ("knockoff", "hard"), ("copycat", "hard")])
def test_attack_reaches_075_relative_accuracy_at_1000_queries(digits_victim, name, labels):
    """From an independent initialisation (not the victim's), 30 epochs on <= 1000 answers."""
    rel, used = run_attack(digits_victim, name=name, labels=labels, budget=1000)
    assert rel >= 0.75
    assert used == (1000 if name == "knockoff" else len(digits_victim.data.x_pool))


def test_knockoff_repeats_the_pool_only_after_using_every_image():
    pool = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    import torch

    x = sample_queries(torch.from_numpy(pool), 25, seed=0).flatten().tolist()
    assert sorted(x[:10]) == list(range(10)) and sorted(x[10:20]) == list(range(10))


def test_client_refuses_queries_past_the_budget():
    client = LocalQueryClient(lambda x: x.flatten(1), budget=5)
    client.query(np.zeros((4, 1, 1, 1), np.float32))
    with pytest.raises(BudgetExceeded, match="4/5 used"):
        client.query(np.zeros((2, 1, 1, 1), np.float32))
    assert client.used == 4

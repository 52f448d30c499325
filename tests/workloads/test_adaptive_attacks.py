"""The adaptive attackers of calibrated PoW choose cheap-looking queries: worst-case by the defender's own
leakage cost, entropy-reversed by its substitute's confidence."""
import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
from workloads.config import ConfigError, parse
from workloads.pow.pate_knn import EntropyCost, PateKnn, train_representations


def run(victim, name, oracle=None, **params):
    sent = []

    def answer(x):
        sent.append(x.clone())
        with torch.inference_mode():
            return torch.softmax(victim.model(x), 1)

    cfg = parse(AttackConfig, {"name": name, "budget": 200, "params": params, "train": {"epochs": 2}})
    client = LocalQueryClient(answer, 200)
    steal(cfg, client, victim.data.x_pool, VictimInfo(victim.data.shape, 10, "lenet5", leakage=oracle))
    return torch.cat(sent), client


def test_worst_case_spends_less_leakage_than_random_queries(digits_victim):
    data = digits_victim.data
    oracle = PateKnn(digits_victim.model, train_representations(digits_victim.model, data.x_train), data.y_train, 10,
                     k=30, sigma=2.8)
    chosen, client = run(digits_victim, "worst_case", oracle, step=50)
    random, _ = run(digits_victim, "knockoff")
    assert client.used == 200 and len(chosen) == 200
    assert len({tuple(x.flatten().tolist()) for x in chosen}) == 200          # no image twice
    cost = lambda x: float(oracle.cost(oracle.increments(x).sum(0)))
    assert cost(chosen) < 0.5 * cost(random)
    with pytest.raises(ConfigError, match="worst_case needs the defender's leakage estimator"):
        run(digits_victim, "worst_case")


def test_rounds_query_the_lowest_scores_first_and_entropy_rev_spends_its_budget(digits_victim):
    from workloads.attacks.adaptive import AdaptiveParams, steal_in_rounds

    pool = digits_victim.data.x_pool
    entropy = EntropyCost(digits_victim.model)
    scores = entropy.increments(pool)[:, 0]
    seen = []
    cfg = parse(AttackConfig, {"name": "entropy_rev", "budget": 200, "train": {"epochs": 1}})
    steal_in_rounds(cfg, AdaptiveParams(step=50, warmup=0.25), LocalQueryClient(lambda x: torch.full((len(x), 10), 0.1), 200),
                    pool, VictimInfo(digits_victim.data.shape, 10, "lenet5"), lambda idx, sub: scores[idx.numpy()],
                    retrain=False, on_query=lambda idx: seen.append(idx.numpy()))
    warm, rounds = seen[0], np.concatenate(seen[1:])
    assert len(warm) == 50 and len(rounds) == 150 and len(set(np.concatenate(seen))) == 200
    rest = np.setdiff1d(np.arange(len(pool)), warm)
    assert np.array_equal(np.sort(scores[rounds]), np.sort(scores[rest])[:150])     # the 150 lowest left
    chosen, client = run(digits_victim, "entropy_rev", step=50, warmup=0.25)
    assert client.used == 200 and len(chosen) == 200

"""ActiveThief selection: greedy k-center and entropy picks, exact budgets, no image twice, seeding, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig
from workloads.attacks.activethief import entropy, kcenter
from workloads.config import ConfigError, parse


def test_kcenter_is_the_greedy_farthest_point_rule():
    rng = torch.Generator().manual_seed(0)
    candidates, centers = torch.rand(300, 5, generator=rng), torch.rand(7, 5, generator=rng)
    picks = kcenter(candidates, centers, 12, chunk=3)
    chosen = [c for c in centers]
    for i in picks.tolist():                   # brute force: farthest from everything chosen so far
        dist = torch.stack([(candidates - c).norm(dim=1) for c in chosen]).min(0).values
        assert i == int(dist.argmax())
        chosen.append(candidates[i])
    assert len(set(picks.tolist())) == 12


def test_entropy_is_largest_for_the_uniform_posterior_and_finite_at_zero():
    p = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert entropy(p).tolist() == pytest.approx([np.log(4), 0.0, np.log(2)])


@pytest.mark.parametrize("strategy", ["random", "entropy", "kcenter"])
def test_budget_spent_exactly_in_rounds_each_pool_image_once(run_attack, strategy):
    _, client = run_attack(name="activethief", budget=103, params={"strategy": strategy, "seed_size": 20, "rounds": 4})
    assert client.used == 103 and [len(q) for q in client.queries] == [20, 21, 21, 21, 20]
    sent = np.concatenate(client.queries).reshape(103, -1)
    assert len(np.unique(sent, axis=0)) == 103


def test_entropy_queries_what_the_substitute_is_least_sure_of(run_attack, digits_victim):
    """Round 1's picks are the pool's highest-entropy images under the round-0 substitute (rebuilt here: the same
    seed set, answers, training and seed)."""
    from workloads.attacks import VictimInfo
    from workloads.attacks.transfer import train_on_answers
    from workloads.training import TrainConfig, predict_proba

    _, client = run_attack(name="activethief", budget=40, params={"strategy": "entropy", "seed_size": 20,
                                                                     "rounds": 1})
    seeds, picks = (torch.from_numpy(q) for q in client.queries)
    first = train_on_answers(seeds, predict_proba(digits_victim.model, seeds).numpy(), "hard", "lenet5",
                             VictimInfo((1, 8, 8), 10, "lenet5"), TrainConfig(epochs=2, batch_size=32, lr=0.003), 0)
    pool = digits_victim.data.x_pool
    h_picks = entropy(predict_proba(first, picks))
    h_pool = entropy(predict_proba(first, pool))
    assert h_picks.min() >= torch.sort(h_pool, descending=True).values[40] - 1e-6


def test_same_seed_same_thief(run_attack, same_weights):
    kw = dict(name="activethief", budget=60, params={"strategy": "kcenter", "rounds": 2})
    (a, ca), (b, cb) = run_attack(**kw), run_attack(**kw)
    assert same_weights(a, b) and all(np.array_equal(p, q) for p, q in zip(ca.queries, cb.queries))


def test_bad_input_is_one_line_naming_the_field(run_attack):
    with pytest.raises(ConfigError, match=r"^params.strategy: expected one of \['random', 'entropy', 'kcenter'\], "
                                          r"got 'margin'"):
        parse(AttackConfig, {"name": "activethief", "params": {"strategy": "margin"}})
    with pytest.raises(ConfigError, match=r"^budget: 50 is smaller than the first round \(params.seed_size = 80\)"):
        AttackConfig(name="activethief", budget=50, params={"seed_size": 80})
    with pytest.raises(ConfigError, match=r"^budget: 500 exceeds the attacker's pool \(100 images"):
        run_attack(name="activethief", budget=500, pool=torch.rand(100, 1, 8, 8))

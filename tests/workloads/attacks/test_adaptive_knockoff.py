"""Adaptive Knockoff Nets: a stable gradient bandit, finite rewards, exact budgets, seeding, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig, VictimInfo, steal
from workloads.attacks.adaptive_knockoff import GradientBandit, Rewards
from workloads.config import ConfigError, parse


@pytest.mark.parametrize("lr", [0.0, 1.0])
def test_bandit_probabilities_stay_finite_and_sum_to_one_over_10k_steps(lr):
    """Rewards of order 1e6 (an unnormalised loss reward on a poisoned answer) drive the preferences far beyond
    exp()'s range (709): a softmax without the max shift gives nan within two steps."""
    rng = np.random.default_rng(0)
    bandit = GradientBandit(10, lr)
    for t in range(10_000):
        p = bandit.probs()
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
        a = int(rng.choice(10, p=p))
        bandit.update(a, 1e6 * (rng.random() + (a == 3)))
    assert np.isfinite(bandit.h).all() and np.abs(bandit.h).max() > 1e3


def test_bandit_learns_the_best_arm_with_the_paper_update():
    rng = np.random.default_rng(1)
    bandit = GradientBandit(4, 0.1)
    for _ in range(2000):
        a = int(rng.choice(4, p=bandit.probs()))
        bandit.update(a, rng.normal([0.1, 0.2, 0.9, 0.3][a], 0.1))
    assert bandit.probs()[2] > 0.9


def test_rewards_follow_the_paper_and_stay_finite_on_zero_probabilities_and_extreme_logits():
    y = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, -1e4, -1e4, 0.0]])
    cert = Rewards("cert", 4)(y, logits)
    assert cert == pytest.approx([0.5, 1.0])
    div = Rewards("div", 4)(y, logits)
    assert div == pytest.approx([0.0, 1.0 - 0.1])          # the first answer has no past; ȳ = y_0 for the second
    loss = Rewards("loss", 4)(y, logits)
    assert loss[0] == pytest.approx(np.log(4)) and loss[1] == pytest.approx(2e4)
    every = Rewards("all", 4)
    out = np.concatenate([every(y, logits), every(y[:1], logits[:1]), every(y[:1], logits[:1])])
    assert np.isfinite(out).all()                          # zero variance (repeated rewards) stays finite


def test_the_budget_is_spent_exactly_in_batches_and_the_same_seed_gives_the_same_thief(run_attack, same_weights):
    kw = dict(name="adaptive_knockoff", budget=70, params={"batch": 16, "reward": "all"})
    (a, ca), (b, cb) = run_attack(**kw), run_attack(**kw)
    assert ca.used == 70 and [len(q) for q in ca.queries] == [16, 16, 16, 16, 6]
    assert same_weights(a, b) and all(np.array_equal(p, q) for p, q in zip(ca.queries, cb.queries))
    _, cc = run_attack(**kw, seed=3)
    assert not np.array_equal(ca.queries[0], cc.queries[0])


def test_images_are_drawn_by_class_without_repeats(run_attack, digits_victim):
    """One class only (a label set with a single class): the bandit must draw each of its images once first."""
    pool = digits_victim.data.x_pool[:30]
    _, client = run_attack(name="adaptive_knockoff", budget=30, params={"batch": 8}, pool=pool,
                           pool_labels=torch.zeros(30, dtype=torch.long))
    sent = np.concatenate(client.queries).reshape(30, -1)
    assert len(np.unique(sent, axis=0)) == len(np.unique(pool.numpy().reshape(30, -1), axis=0))


def test_bad_input_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"^surrogate.kind: adaptive_knockoff samples the pool by class"):
        parse(AttackConfig, {"name": "adaptive_knockoff", "surrogate": {"kind": "noise"}})
    with pytest.raises(ConfigError, match=r"^params.reward: expected one of \['cert', 'div', 'loss', 'all'\]"):
        parse(AttackConfig, {"name": "adaptive_knockoff", "params": {"reward": "entropy"}})
    with pytest.raises(ConfigError, match=r"^params.batch: expected >= 1, got 0"):
        parse(AttackConfig, {"name": "adaptive_knockoff", "params": {"batch": 0}})
    with pytest.raises(ConfigError, match=r"^surrogate: adaptive_knockoff needs the class label of every pool image"):
        steal(AttackConfig(name="adaptive_knockoff", budget=10), None, torch.rand(20, 1, 8, 8),
              VictimInfo((1, 8, 8), 10, "lenet5"))

"""JBDA / JBDA-TR: batched Jacobians, exact query charging in both re-label modes, seeding, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig
from workloads.attacks.jbda import jacobian_rows, loss_gradients
from workloads.config import ConfigError, parse
from workloads.models import build_model


def test_the_batched_jacobian_rows_equal_the_per_sample_jacobians():
    model = build_model("lenet5", (1, 8, 8), 10, seed=0).eval()
    x = torch.rand(13, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    classes = torch.randint(0, 10, (13,), generator=torch.Generator().manual_seed(1))
    batched = jacobian_rows(model, x, classes, batch=5)
    for i in range(len(x)):
        full = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i])     # (10, 1, 8, 8)
        assert torch.allclose(batched[i], full[classes[i]], atol=1e-6)
    targets = (classes + 3) % 10
    grads = loss_gradients(model, x, targets, batch=5)
    for i in (0, 6, 12):
        xi = x[i:i + 1].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), targets[i:i + 1]).backward()
        assert torch.allclose(grads[i], xi.grad[0], atol=1e-6)


@pytest.mark.parametrize("name", ["jbda", "jbda_tr"])
@pytest.mark.parametrize("relabel,budget,rounds,expected", [
    ("new", 1000, 4, 20 + 20 + 40 + 80),        # the whole schedule: each point once
    ("all", 1000, 4, 20 + 40 + 80 + 160),       # the reference code: every point again each round
    ("new", 100, 4, 100),                       # last round trimmed to the budget
    ("all", 120, 4, 120),                       # 20 + 40, then 40 old + 20 of the 40 new points
])
def test_queries_charged_are_the_schedule_or_the_budget_exactly(run_attack, name, relabel, budget, rounds, expected):
    _, client = run_attack(name=name, budget=budget, params={"seed_size": 20, "rounds": rounds, "relabel": relabel})
    assert client.used == expected == sum(len(q) for q in client.queries)
    if relabel == "all":        # round ρ re-sends every earlier point, in order, then the new ones
        assert all(np.array_equal(later[:len(earlier)], earlier)
                   for earlier, later in zip(client.queries, client.queries[1:]))
    else:                       # no image is sent twice
        sent = np.concatenate(client.queries).reshape(expected, -1)
        assert len(np.unique(sent, axis=0)) == expected


def test_seeds_come_from_the_pool_and_augmentations_are_lambda_steps_inside_the_image_range(run_attack, digits_victim):
    _, client = run_attack(name="jbda", budget=1000, params={"seed_size": 20, "rounds": 2, "step": 0.1})
    seeds, new = client.queries
    pool = digits_victim.data.x_pool.numpy().reshape(len(digits_victim.data.x_pool), -1)
    assert all((pool == s.reshape(-1)).all(1).any() for s in seeds)
    moved = np.abs(new - seeds)
    assert new.min() >= 0 and new.max() <= 1 and np.isclose(moved.max(), 0.1)
    assert np.all(np.isclose(moved, 0.1) | np.isclose(new, 0) | np.isclose(new, 1) | (moved == 0))


def test_same_seed_same_thief_other_seed_other_thief(run_attack, same_weights):
    kw = dict(name="jbda_tr", budget=160, params={"seed_size": 20, "rounds": 3})
    (a, ca), (b, cb), (c, cc) = run_attack(**kw), run_attack(**kw), run_attack(**kw, seed=1)
    assert same_weights(a, b) and all(np.array_equal(p, q) for p, q in zip(ca.queries, cb.queries))
    assert not np.array_equal(ca.queries[0], cc.queries[0])


def test_bad_input_is_one_line_naming_the_field(run_attack):
    with pytest.raises(ConfigError, match=r"^budget: 100 is smaller than the first round \(params.seed_size = 150"):
        AttackConfig(name="jbda", budget=100)
    with pytest.raises(ConfigError, match=r"^attacks\[0\].budget: 10 is smaller"):
        from orchestrator.config import trial_config
        trial_config({"attacks": [{"name": "jbda_tr", "budget": 10, "params": {"seed_size": 20}}]})
    with pytest.raises(ConfigError, match=r"^params.relabel: expected one of \['new', 'all'\]"):
        parse(AttackConfig, {"name": "jbda", "params": {"relabel": "some"}})
    with pytest.raises(ConfigError, match=r"^params.seed_size: 50 seed images exceed the attacker's pool \(40 images"):
        run_attack(name="jbda", budget=100, params={"seed_size": 50}, pool=torch.rand(40, 1, 8, 8))


def test_jbda_steps_up_the_labels_logit_and_jbda_tr_toward_its_target():
    from workloads.attacks.jbda import JBDAParams, JBDATRParams, augment

    model = build_model("lenet5", (1, 8, 8), 10, seed=0).eval()
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    labels = model(x).argmax(1)
    up = augment(model, x, labels, JBDAParams(step=0.05), 0, torch.Generator().manual_seed(0), 10)
    gain = (model(up) - model(x)).gather(1, labels[:, None])
    assert (gain > 0).float().mean() > 0.9
    flipped = augment(model, x, labels, JBDAParams(step=0.05, tau=1), 1, torch.Generator().manual_seed(0), 10)
    assert torch.allclose(flipped - x, -(up - x))                   # λ_1 = −λ with τ = 1
    gen = torch.Generator().manual_seed(5)
    moved = augment(model, x, labels, JBDATRParams(step=0.2, fgsm_steps=5), 0, gen, 10)
    targets = (labels + torch.randint(1, 10, (64,), generator=torch.Generator().manual_seed(5))) % 10
    assert (targets != labels).all()
    p_before, p_after = model(x).softmax(1), model(moved).softmax(1)
    assert (p_after.gather(1, targets[:, None]) > p_before.gather(1, targets[:, None])).float().mean() > 0.9

"""DFME, MAZE and MEGEX on digits with tiny budgets: exact budgets, seeds, ZO estimates, refusals."""
import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
from workloads.attacks.dfme import ScoresRequired, disagreement, victim_target, zo_gradient
from workloads.attacks.generator import GeneratorA, build_generator
from workloads.attacks.megex import generator_cost
from workloads.config import ConfigError
from workloads.models import build_model

TINY = {"batch_size": 16, "ngf": 8, "nz": 16}


def info(victim):
    return VictimInfo(victim.data.shape, victim.data.num_classes, "lenet5")


def run(victim, name, budget, params, seed=0, defense=None):
    cfg = AttackConfig(name=name, budget=budget, seed=seed, params=dict(TINY, **params))
    client = LocalQueryClient.from_model(victim.model, budget, defense)
    calls = []
    student = steal(cfg, client, None, info(victim), checkpoint=lambda q, m: calls.append(q))
    return student, client.used, calls


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 30, 30)])
def test_generator_makes_victim_sized_images_in_unit_range(shape):
    g = build_generator(shape, nz=16, ngf=8, seed=0)
    x = GeneratorA.images(g(torch.randn(4, 16)))
    assert x.shape == (4, *shape) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("name,params,per_iteration", [
    ("dfme", {}, 16 * (2 + 5)),
    ("maze", {"batch_size": 16}, 16 * (11 + 5)),
    ("megex", {}, 16 * (2 + 5)),                                          # vjp: a query + an explanation
    ("megex", {"explanation_mode": "full_jacobian"}, 16 * (10 + 5)),
    ("megex", {"explanation_mode": "top1", "explainer": "smoothgrad", "samples": 3}, 16 * (3 + 5)),
])
def test_attack_spends_exactly_its_budget(digits_victim, name, params, per_iteration):
    budget = 3 * per_iteration + 37          # three iterations and a leftover
    _, used, checkpoints = run(digits_victim, name, budget, params)
    assert used == budget
    assert checkpoints == [per_iteration, 2 * per_iteration, budget]      # after every iteration, then the end


def test_megex_cost_per_generator_image():
    from workloads.attacks.megex import MEGEXParams

    assert generator_cost(MEGEXParams(), 10) == 2
    assert generator_cost(MEGEXParams(explanation_mode="full_jacobian"), 10) == 10
    assert generator_cost(MEGEXParams(explanation_mode="top1", explainer="smoothgrad", samples=50), 10) == 50
    assert generator_cost(MEGEXParams(explanation_mode="full_jacobian", explainer="smoothgrad", samples=4), 10) == 40


def test_reference_defaults_cost_1792_per_iteration(digits_victim):
    with pytest.raises(ConfigError, match="budget: 1791 is below one dfme iteration's cost of 1792 queries"):
        steal(AttackConfig(name="dfme", budget=1791), LocalQueryClient.from_model(digits_victim.model, 1791),
              None, info(digits_victim))
    with pytest.raises(ConfigError, match="maze iteration's cost of 2048"):
        steal(AttackConfig(name="maze", budget=2000), LocalQueryClient.from_model(digits_victim.model, 2000),
              None, info(digits_victim))


def test_same_seed_same_student_other_seed_differs(digits_victim):
    a, _, _ = run(digits_victim, "dfme", 300, {})
    b, _, _ = run(digits_victim, "dfme", 300, {})
    c, _, _ = run(digits_victim, "dfme", 300, {}, seed=1)
    same = lambda m, n: all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), n.state_dict().values()))
    assert same(a, b) and not same(a, c)


def test_zeroth_order_estimate_approaches_the_true_gradient(digits_victim):
    """DFME's estimator of the generator's objective vs autograd through the (white-box) victim."""
    victim = digits_victim.model.eval()
    student = build_model("lenet5", (1, 8, 8), 10, seed=5).eval()
    pre = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def loss(points):
        x = GeneratorA.images(points)
        return -disagreement(student(x), victim_target(torch.log_softmax(victim(x), 1), "l1"), "l1")

    p = pre.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(loss(p).sum(), p)
    errors, cosines = [], []
    for m in (1, 10, 100, 2000):
        with torch.no_grad():
            est, _ = zo_gradient(loss, pre, m, 1e-3, torch.Generator().manual_seed(1))
        errors.append(((est - true).flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)).mean().item())
        cosines.append(torch.nn.functional.cosine_similarity(est.flatten(1), true.flatten(1)).mean().item())
    # unbiased (E[d u u^T] = I): the relative error shrinks like sqrt(d / m), d = 64
    assert errors == sorted(errors, reverse=True) and errors[0] > 2 and errors[-1] < 0.4, errors
    assert cosines[0] < 0.5 and cosines[-1] > 0.9, cosines


def one_hot(probs, x):
    return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float()


@pytest.mark.parametrize("name", ["dfme", "maze", "megex"])
def test_label_only_answers_are_refused_unless_floored(digits_victim, name):
    with pytest.raises(ScoresRequired, match="prob_floor"):
        run(digits_victim, name, 600, {"batch_size": 16}, defense=one_hot)
    _, used, _ = run(digits_victim, name, 600, {"batch_size": 16, "prob_floor": 1e-4}, defense=one_hot)
    assert used == 600


def test_bad_params_name_the_field():
    with pytest.raises(ConfigError, match="params.explanation_mode: unknown value 'jacobian'"):
        AttackConfig(name="megex", params={"explanation_mode": "jacobian"})
    with pytest.raises(ConfigError, match="params.grad_m: expected >= 1, got 0"):
        AttackConfig(name="dfme", params={"grad_m": 0})
    with pytest.raises(ConfigError, match="params.loss: expected one of"):
        AttackConfig(name="maze", params={"loss": "l2"})

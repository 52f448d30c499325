import math

import pytest
import torch
import torch.nn.functional as F

from workloads.defenses import ConfigError, DefenseConfig, build_defense
from workloads.defenses.mad import prediction_poisoning, vertex_objectives
from workloads.models import build_model
from workloads.seeds import derive_seed
from workloads.training import predict_proba


def unit(v):
    norm = math.sqrt(sum(a * a for a in v))
    return [a / norm for a in v]


def test_matches_the_extreme_oracle_and_linesearch_computed_by_hand():
    y, p_s, epsilon = [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], 0.3
    u_y = unit([s - a for s, a in zip(p_s, y)])
    objectives = []
    for j in range(3):
        u_j = unit([s - (1.0 if k == j else 0.0) for k, s in enumerate(p_s)])
        objectives.append(sum((a - b) ** 2 for a, b in zip(u_j, u_y)))
    j = max(range(3), key=objectives.__getitem__)
    alpha = min(1.0, epsilon / (2 * (1 - y[j])))
    expected = [(1 - alpha) * a + alpha * (1.0 if k == j else 0.0) for k, a in enumerate(y)]

    y_t, p_t = torch.tensor([y], dtype=torch.float64), torch.tensor([p_s], dtype=torch.float64)
    assert vertex_objectives(y_t, p_t)[0].tolist() == pytest.approx(objectives, abs=1e-12)
    assert prediction_poisoning(y_t, p_t, epsilon)[0].tolist() == pytest.approx(expected, abs=1e-12)


def explicit_jacobian(surrogate, x, with_bias=True):
    """G (K × P): row k is ∇ of −log softmax_k of the surrogate w.r.t. its last layer, by autograd."""
    nll = -F.log_softmax(surrogate(x), 1)[0]
    params = [surrogate.head.weight, surrogate.head.bias] if with_bias else [surrogate.head.weight]
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(nll[k], params, retain_graph=True)])
            for k in range(len(nll))]
    return torch.stack(rows)


def explicit_objective(G, y_tilde, y):
    a, b = G.T @ y_tilde, G.T @ y
    return (a / a.norm() - b / b.norm()).pow(2).sum()


@pytest.mark.parametrize("with_bias", [True, False])
def test_closed_form_equals_the_objective_with_the_autograd_jacobian(digits_context, with_bias):
    data = digits_context.dataset
    surrogate = build_model("lenet5", data.shape, data.num_classes, seed=derive_seed("defense/surrogate", digits_context.seed)).double()
    x = data.x_test[:5].double()
    y = predict_proba(digits_context.victim, data.x_test[:5]).double()
    surrogate_probs = F.softmax(surrogate(x), 1).detach()
    closed_form = vertex_objectives(y, surrogate_probs)
    vertices = torch.eye(data.num_classes, dtype=torch.float64)
    for i in range(5):
        G = explicit_jacobian(surrogate, x[i:i + 1], with_bias)
        explicit = torch.stack([explicit_objective(G, vertices[j], y[i]) for j in range(data.num_classes)])
        torch.testing.assert_close(closed_form[i], explicit, atol=1e-9, rtol=1e-7)


def test_the_defense_is_the_explicit_oracle_and_linesearch(digits_context):
    data = digits_context.dataset
    surrogate = build_model("lenet5", data.shape, data.num_classes, seed=derive_seed("defense/surrogate", digits_context.seed)).double()
    x = data.x_test[:5]
    y = predict_proba(digits_context.victim, x)
    out = build_defense(DefenseConfig(name="mad", params={"epsilon": 0.4}), digits_context)(y, x)
    vertices = torch.eye(data.num_classes, dtype=torch.float64)
    for i in range(5):
        G = explicit_jacobian(surrogate, x[i:i + 1].double())
        y_i = y[i].double()
        best = max(range(data.num_classes), key=lambda j: explicit_objective(G, vertices[j], y_i).item())
        alpha = min(1.0, 0.4 / (y_i - vertices[best]).abs().sum().item())
        torch.testing.assert_close(out[i].double(), (1 - alpha) * y_i + alpha * vertices[best], atol=1e-6, rtol=0)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 1.9])
def test_the_l1_perturbation_is_the_budget_or_the_distance_to_the_target_vertex(digits_context, epsilon):
    data = digits_context.dataset
    x = data.x_test
    y = predict_proba(digits_context.victim, x).double()
    surrogate = build_model("lenet5", data.shape, data.num_classes, seed=derive_seed("defense/surrogate", digits_context.seed))
    target = vertex_objectives(y, predict_proba(surrogate, x).double()).argmax(1)
    distance_to_target = 2 * (1 - y.gather(1, target[:, None])[:, 0])
    out = build_defense(DefenseConfig(name="mad", params={"epsilon": epsilon}), digits_context)(y, x)
    l1 = (out - y).abs().sum(1)
    assert (l1 <= epsilon + 1e-9).all()
    torch.testing.assert_close(l1, distance_to_target.clamp(max=epsilon), atol=1e-9, rtol=0)


def test_zero_budget_releases_the_posteriors_and_full_budget_the_target_vertex():
    y = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), 1).double()
    p_s = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(1)), 1).double()
    torch.testing.assert_close(prediction_poisoning(y, p_s, 0.0), y)
    target = F.one_hot(vertex_objectives(y, p_s).argmax(1), 10).double()
    torch.testing.assert_close(prediction_poisoning(y, p_s, 2.0), target)


def test_bad_epsilon_names_the_field_and_value():
    with pytest.raises(ConfigError, match=r"epsilon: .*got -0.1"):
        DefenseConfig(name="mad", params={"epsilon": -0.1})

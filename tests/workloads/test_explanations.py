"""Gradient explanations (vanilla, SmoothGrad; top1 / vjp / full Jacobian) against autograd, and their cost."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workloads.attacks import BudgetExceeded, LocalQueryClient
from workloads.config import ConfigError
from workloads.explanations import ExplainRequest, check_weights, explain


def jacobian_of_log_probs(model, x):
    """(N, K, C, H, W): the reference Jacobian, one image at a time with torch.autograd.functional."""
    return torch.stack([torch.autograd.functional.jacobian(lambda xi: F.log_softmax(model(xi[None]), 1)[0], xi)
                        for xi in x])


@pytest.fixture(scope="module")
def victim(digits_victim):
    return digits_victim.model.eval(), digits_victim.data.x_test[:6]


def test_vanilla_modes_match_autograd(victim):
    model, x = victim
    jac = jacobian_of_log_probs(model, x)
    probs, full = explain(model, x, ExplainRequest("full_jacobian", "vanilla"))
    torch.testing.assert_close(probs, torch.softmax(model(x), 1).detach())
    torch.testing.assert_close(full, jac, rtol=1e-4, atol=1e-6)
    _, top = explain(model, x, ExplainRequest("top1", "vanilla"))
    torch.testing.assert_close(top[:, 0], jac[torch.arange(len(x)), probs.argmax(1)], rtol=1e-4, atol=1e-6)
    w = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(0))
    _, vjp = explain(model, x, ExplainRequest("vjp", "vanilla"), w)
    torch.testing.assert_close(vjp[:, 0], torch.einsum("nk,nk...->n...", w, jac), rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_the_mean_gradient_at_the_noisy_points(victim):
    model, x = victim
    x = x[:3]
    req = ExplainRequest("top1", "smoothgrad", samples=4, sigma=0.2)
    probs, sg = explain(model, x, req, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((len(x), 4, *x.shape[1:]), generator=torch.Generator().manual_seed(3))
    top = probs.argmax(1)
    expected = torch.stack([jacobian_of_log_probs(model, x[i] + 0.2 * noise[i])[:, top[i]].mean(0)
                            for i in range(len(x))])
    torch.testing.assert_close(sg[:, 0], expected, rtol=1e-4, atol=1e-6)
    _, vanilla = explain(model, x, ExplainRequest("top1", "vanilla"))
    assert not torch.allclose(sg, vanilla, atol=1e-3)


def test_local_client_charges_true_cost(digits_victim):
    x = digits_victim.data.x_test[:5].numpy()
    client = LocalQueryClient.from_model(digits_victim.model, budget=1000)
    client.explain(x, ExplainRequest("top1", "smoothgrad", samples=7))
    assert client.used == 5 * 7
    _, grads = client.explain(x, ExplainRequest("full_jacobian", "vanilla"))
    assert grads.shape == (5, 10, 1, 8, 8) and client.used == 35 + 5 * 10
    client.explain(x, ExplainRequest("full_jacobian", "smoothgrad", samples=3))
    assert client.used == 85 + 5 * 30
    with pytest.raises(BudgetExceeded, match="evaluations"):
        client.explain(x, ExplainRequest("full_jacobian", "smoothgrad", samples=100))
    assert client.used == 235


def test_bad_requests_name_the_field():
    with pytest.raises(ConfigError, match="mode: unknown value 'jacobian'"):
        ExplainRequest("jacobian")
    with pytest.raises(ConfigError, match="explainer: unknown value 'gradcam'"):
        ExplainRequest("top1", "gradcam")
    with pytest.raises(ConfigError, match="samples: expected >= 1"):
        ExplainRequest("top1", "smoothgrad", samples=0)
    with pytest.raises(ValueError, match=r"weights: expected shape \(3, 10\), got \(3, 9\)"):
        check_weights(np.zeros((3, 9)), 3, 10, "vjp")
    with pytest.raises(ValueError, match="weights: mode 'vjp' needs"):
        check_weights(None, 3, 10, "vjp")
    with pytest.raises(ValueError, match="weights: only mode 'vjp'"):
        check_weights(np.zeros((3, 10)), 3, 10, "top1")

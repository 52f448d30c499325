"""PATE-kNN leakage: GNMax data-dependent RDP against hand-computed values, the ε conversion, the
chunked neighbour search against a brute-force one, and the cheap estimators."""
import math

import numpy as np
import pytest
import torch

from workloads.pow.pate_knn import (ORDERS, EntropyCost, GapCost, PateKnn, log_q_gnmax, rdp_gnmax, rdp_to_epsilon,
                                    train_representations)

SIGMA = 28.0
HISTOGRAMS = {"unanimous": [300] + [0] * 9, "two_to_one": [200, 100] + [0] * 8, "tie": [150, 150] + [0] * 8,
              "uniform": [30] * 10, "spread": [120, 60, 60, 60] + [0] * 6}


def hand_rdp(votes, sigma, order):
    """PATE 2018 Prop. 7, Thm. 6 and Prop. 10 for one histogram and one order, scalar math only."""
    top = max(range(len(votes)), key=lambda i: votes[i])
    tail = [0.5 * math.erfc((votes[top] - v) / (math.sqrt(2) * sigma) / math.sqrt(2))
            for i, v in enumerate(votes) if i != top]                    # Φ̄(gap / (√2 σ))
    q = min(sum(tail), 1 - 1 / len(votes))
    mu2 = sigma * math.sqrt(-math.log(q))
    mu1 = mu2 + 1
    e1, e2 = mu1 / sigma ** 2, mu2 / sigma ** 2
    if not (mu2 > 1 and order < mu1 and -math.log(q) > e2 and
            math.log(q) <= (mu2 - 1) * e2 - mu2 * (math.log(1 + 1 / (mu1 - 1)) + math.log(1 + 1 / (mu2 - 1)))):
        return order / sigma ** 2
    a = (1 - q) / (1 - (math.exp(e2) * q) ** ((mu2 - 1) / mu2))
    b = math.exp(e1) / q ** (1 / (mu1 - 1))
    return math.log((1 - q) * a ** (order - 1) + q * b ** (order - 1)) / (order - 1)


@pytest.mark.parametrize("name", HISTOGRAMS)
def test_rdp_matches_the_hand_computed_gnmax_bound(name):
    votes = np.array([HISTOGRAMS[name]])
    orders = np.array([2.0, 10.0, 50.0])
    got = rdp_gnmax(log_q_gnmax(votes, SIGMA), SIGMA, orders)[0]
    want = [hand_rdp(HISTOGRAMS[name], SIGMA, o) for o in orders]
    np.testing.assert_allclose(got, want, rtol=1e-3)      # the scalar form loses digits as q → 0


def test_rdp_values_of_the_official_accountant():
    """Pinned outputs of the official `analysis/pate.py` (no data-independent bound), orders 2, 10, 50."""
    votes = np.array([HISTOGRAMS[k] for k in ("unanimous", "two_to_one", "tie", "spread")])
    log_q = log_q_gnmax(votes, SIGMA)
    np.testing.assert_allclose(log_q[:2], [-29.462419500456708, -5.153282389381301], rtol=1e-12)
    got = rdp_gnmax(log_q, SIGMA, np.array([2.0, 10.0, 50.0]))
    np.testing.assert_allclose(got, [[1.51732198e-13, 6.47691067e-13, 6.19717974e-07],
                                     [0.0020340747, 0.0031231126, 0.05944781],
                                     [2 / 784, 10 / 784, 50 / 784],
                                     [0.03790867, 0.04126383, 50 / 784]], rtol=2e-6)


def test_the_data_independent_bound_is_a_parameter():
    log_q = log_q_gnmax(np.array([HISTOGRAMS["spread"]]), SIGMA)
    raw = rdp_gnmax(log_q, SIGMA)
    bounded = rdp_gnmax(log_q, SIGMA, data_independent_bound=True)
    assert raw[0, 0] > 2 / SIGMA ** 2 and bounded[0, 0] == pytest.approx(2 / SIGMA ** 2)
    assert np.all(bounded <= ORDERS / SIGMA ** 2 + 1e-15)


def test_epsilon_is_the_best_order_of_rdp_plus_log_one_over_delta():
    orders = np.array([2.0, 3.0, 11.0])
    rdp = np.array([0.5, 1.0, 4.0])
    # candidates: 0.5 + ln(1e5)/1 = 12.01, 1 + ln(1e5)/2 = 6.76, 4 + ln(1e5)/10 = 5.15
    assert rdp_to_epsilon(rdp, 1e-5, orders) == pytest.approx(4 + math.log(1e5) / 10)
    n = 1000    # 1000 data-independent queries: ε = min_λ 1000 λ/σ² + ln(1/δ)/(λ−1)
    brute = min(n * o / SIGMA ** 2 + math.log(1e5) / (o - 1) for o in ORDERS)
    assert rdp_to_epsilon(n * ORDERS / SIGMA ** 2, 1e-5) == pytest.approx(brute)


def test_chunked_neighbours_vote_like_a_brute_force_search(digits_victim):
    data = digits_victim.data
    reps = train_representations(digits_victim.model, data.x_train)
    est = PateKnn(digits_victim.model, reps, data.y_train, 10, k=25, max_elements=2048)   # forces many chunks
    log_p = torch.log_softmax(digits_victim.model(data.x_test[:40]).double(), 1)
    got = est.votes(log_p.detach())
    dist = np.linalg.norm(reps.numpy()[None] - log_p.detach().numpy()[:, None], axis=-1)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :25]
    want = np.stack([np.bincount(data.y_train.numpy()[i], minlength=10) for i in nearest])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"defense.params.k: expected 1..719"):
        PateKnn(digits_victim.model, reps, data.y_train, 10, k=720)


def test_a_uniform_answer_costs_more_than_a_confident_one_under_every_estimator(digits_victim):
    model = digits_victim.model
    x = digits_victim.data.x_test[:64]
    confident = x[model(x).softmax(1).max(1).values.argsort(descending=True)[:1]]
    flat = torch.full_like(confident, 0.5)
    for est in (EntropyCost(model), GapCost(model)):
        assert est.increments(flat)[0, 0] > est.increments(confident)[0, 0] >= 0
    assert EntropyCost(model).increments(x).shape == (64, 1)
    assert EntropyCost(model).cost(np.array([[1.5], [2.0]])).tolist() == [1.5, 2.0]

import math

import pytest
import torch

from workloads.defenses import ConfigError, DefenseConfig
from workloads.defenses.dcp import confidence_gated_reverse_sigmoid


def sigmoid(t):
    return 1 / (1 + math.exp(-t))


def by_hand(p, beta, gamma, nu):
    gate = 1 / (1 + math.exp(nu * (max(p) - beta)))
    odds = [min(max(v / (1 - v), 1e-12), 1 - 1e-12) for v in p]
    r = [beta * (sigmoid(gamma * math.log(o)) - 0.5) for o in odds]
    y = [v - gate * rv for v, rv in zip(p, r)]
    return [v / sum(y) for v in y]


@pytest.mark.parametrize("p, beta", [([0.4, 0.35, 0.25], 0.5), ([0.6, 0.3, 0.1], 1.5),
                                     ([0.45, 0.3, 0.15, 0.1], 0.5), ([0.8, 0.15, 0.05], 0.5)])
def test_matches_the_formula_computed_by_hand(p, beta):
    out = confidence_gated_reverse_sigmoid(torch.tensor([p], dtype=torch.float64), beta, 0.2, 1000.0)
    assert out[0].tolist() == pytest.approx(by_hand(p, beta, 0.2, 1000.0), abs=1e-12)


def test_rows_more_confident_than_beta_pass_unchanged():
    p = torch.tensor([[0.8, 0.15, 0.05, 0.0], [0.55, 0.25, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(confidence_gated_reverse_sigmoid(p, 0.5, 0.2, 1000.0), p, atol=1e-12, rtol=0)


def test_rows_less_confident_than_beta_are_flattened():
    p = torch.tensor([[0.45, 0.30, 0.15, 0.10]])
    out = confidence_gated_reverse_sigmoid(p, 0.5, 0.2, 1000.0)
    assert out[0, 0] < p[0, 0] and out[0, 3] > p[0, 3]
    assert torch.equal(out.argmax(1), p.argmax(1))


def test_the_odds_clamp_makes_r_nonpositive_and_gives_most_to_unlikely_classes():
    # β > 1 opens the gate (a ≈ 1). Class 0 has p > ½: its odds are clamped to < 1, so r_0 = 0 and the
    # unnormalised y_0 stays 0.6; that recovers the row sum S = 0.6 / ỹ_0 and every −r_k = ỹ_k S − p_k.
    p = torch.tensor([[0.6, 0.25, 0.1, 0.05]], dtype=torch.float64)
    out = confidence_gated_reverse_sigmoid(p, 1.5, 0.2, 1000.0)
    row_sum = 0.6 / out[0, 0]
    minus_r = out[0] * row_sum - p[0]
    assert minus_r[0].item() == pytest.approx(0.0, abs=1e-12)
    assert (minus_r >= 0).all()
    assert minus_r[1] < minus_r[2] < minus_r[3]
    assert minus_r[3].item() == pytest.approx(1.5 * (0.5 - sigmoid(0.2 * math.log(0.05 / 0.95))), abs=1e-12)


def test_beta_zero_releases_the_clean_posteriors():
    y = torch.softmax(torch.randn(5, 10, generator=torch.Generator().manual_seed(0)), 1)
    torch.testing.assert_close(confidence_gated_reverse_sigmoid(y, 0.0, 0.2, 1000.0), y)


@pytest.mark.parametrize("params, field", [({"beta": -0.5}, "beta"), ({"gamma": -1.0}, "gamma"), ({"nu": 0.0}, "nu")])
def test_bad_params_name_the_field_and_value(params, field):
    with pytest.raises(ConfigError, match=rf"{field}: .*got {list(params.values())[0]}"):
        DefenseConfig(name="dcp", params=params)

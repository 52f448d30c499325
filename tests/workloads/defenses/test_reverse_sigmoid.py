import math

import pytest
import torch

from workloads.defenses import ConfigError, DefenseConfig
from workloads.defenses.reverse_sigmoid import reverse_sigmoid
from workloads.training import predict_proba


def by_hand(y, beta, gamma):
    clipped = [min(max(v, 1e-9), 1 - 1e-9) for v in y]
    r = [beta * (1 / (1 + math.exp(-gamma * math.log(c / (1 - c)))) - 0.5) for c in clipped]
    shifted = [max(v - rv, 0.0) for v, rv in zip(y, r)]
    return [v / sum(shifted) for v in shifted]


@pytest.mark.parametrize("y", [[0.7, 0.2, 0.1], [0.9, 0.1, 0.0], [0.4, 0.3, 0.2, 0.1]])
def test_matches_the_formula_computed_by_hand(y):
    # The empty class of [0.9, 0.1, 0.0] is clipped to 1e-9 inside r: it gains β(½ − σ(γ·logit 1e-9)) ≈ 0.484.
    out = reverse_sigmoid(torch.tensor([y], dtype=torch.float64), beta=1.0, gamma=0.2)
    assert out[0].tolist() == pytest.approx(by_hand(y, 1.0, 0.2), abs=1e-12)


def test_keeps_the_argmax_of_confident_rows_but_flattens_them(digits_context):
    probs = predict_proba(digits_context.victim, digits_context.dataset.x_test)
    confident = probs[probs.amax(1) > 0.9]
    out = reverse_sigmoid(confident, beta=1.0, gamma=0.2)
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(1)
    assert len(confident) > 50
    assert torch.equal(out.argmax(1), confident.argmax(1))
    assert (out.amax(1) < confident.amax(1)).all()
    assert (entropy(out) > entropy(confident)).all()


def test_beta_zero_releases_the_clean_posteriors():
    y = torch.softmax(torch.randn(5, 10, generator=torch.Generator().manual_seed(0)), 1)
    torch.testing.assert_close(reverse_sigmoid(y, beta=0.0, gamma=0.2), y)


@pytest.mark.parametrize("params, field", [({"beta": -0.1}, "beta"), ({"gamma": 0.0}, "gamma")])
def test_bad_params_name_the_field_and_value(params, field):
    with pytest.raises(ConfigError, match=rf"{field}: .*got {list(params.values())[0]}"):
        DefenseConfig(name="reverse_sigmoid", params=params)

import math

import pytest
import torch

from workloads.defenses import ConfigError, DefenseConfig, build_defense
from workloads.defenses.adaptive_misinformation import adaptive_misinformation, train_misinformation_model
from workloads.training import predict_proba


def am_defense(ctx, **params):
    return build_defense(DefenseConfig(name="adaptive_misinformation", params=params), ctx)


def test_matches_the_mixture_computed_by_hand():
    y, m = [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]
    alpha = 1 / (1 + math.exp(-10 * (0.5 - 0.6)))
    expected = [(1 - alpha) * a + alpha * b for a, b in zip(y, m)]
    out = adaptive_misinformation(torch.tensor([y], dtype=torch.float64), torch.tensor([m], dtype=torch.float64),
                                  tau=0.5, nu=10.0)
    assert alpha == pytest.approx(0.2689, abs=1e-4)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_the_misinformation_model_avoids_the_true_class_on_training_data(digits_context):
    model = train_misinformation_model(digits_context, epochs=5)
    data = digits_context.dataset
    probs = predict_proba(model, data.x_train)
    true_class_prob = probs.gather(1, data.y_train[:, None])
    assert true_class_prob.mean() < 0.02
    assert (probs.argmax(1) != data.y_train).float().mean() > 0.98


def test_tau_zero_releases_the_clean_posteriors(digits_context):
    x = digits_context.dataset.x_test[:100]
    y = predict_proba(digits_context.victim, x)
    torch.testing.assert_close(am_defense(digits_context, tau=0.0)(y, x), y)


def test_tau_above_one_releases_the_misinformation_posteriors(digits_context):
    x = digits_context.dataset.x_test[:100]
    y = predict_proba(digits_context.victim, x)
    misinformation = predict_proba(train_misinformation_model(digits_context, epochs=5), x)
    torch.testing.assert_close(am_defense(digits_context, tau=1.5)(y, x), misinformation)
    torch.testing.assert_close(am_defense(digits_context, tau=1.01)(y, x), misinformation, atol=1e-4, rtol=0)


def test_confident_answers_pass_and_unsure_ones_are_misinformed(digits_context):
    x = digits_context.dataset.x_test
    y = predict_proba(digits_context.victim, x)
    out = am_defense(digits_context, tau=0.7)(y, x)
    confident, unsure = y.amax(1) > 0.72, y.amax(1) < 0.68
    assert confident.sum() > 50 and unsure.sum() > 10
    torch.testing.assert_close(out[confident], y[confident])
    misinformation = predict_proba(train_misinformation_model(digits_context, epochs=5), x)
    torch.testing.assert_close(out[unsure], misinformation[unsure], atol=1e-6, rtol=0)


@pytest.mark.parametrize("params, field", [({"tau": 1.6}, "tau"), ({"tau": -0.1}, "tau"), ({"nu": 0.0}, "nu"),
                                           ({"misinformation_epochs": 0}, "misinformation_epochs")])
def test_bad_params_name_the_field_and_value(params, field):
    with pytest.raises(ConfigError, match=rf"{field}: .*got {list(params.values())[0]}"):
        DefenseConfig(name="adaptive_misinformation", params=params)

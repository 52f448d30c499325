import pytest
import torch

from workloads.defenses import ConfigError, DefenseConfig
from workloads.defenses.truncation import keep_top_k, round_posteriors
from workloads.training import predict_proba


def test_rounding_matches_values_computed_by_hand():
    # [0.26, 0.26, 0.26, 0.22] rounds to [0.3, 0.3, 0.3, 0.2] (sum 1.1), renormalised to [3, 3, 3, 2] / 11;
    # [0.456, 0.333, 0.211, 0] rounds to [0.5, 0.3, 0.2, 0], which already sums to 1.
    out = round_posteriors(torch.tensor([[0.26, 0.26, 0.26, 0.22], [0.456, 0.333, 0.211, 0.0]]), decimals=1)
    assert out[0].tolist() == pytest.approx([3 / 11, 3 / 11, 3 / 11, 2 / 11], abs=1e-6)
    assert out[1].tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=1e-6)


def test_rounding_to_two_decimals_leaves_rows_already_on_the_grid():
    y = torch.tensor([[0.46, 0.33, 0.21], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(round_posteriors(y, decimals=2), y)


def test_a_row_that_rounds_to_all_zeros_releases_its_argmax_one_hot():
    out = round_posteriors(torch.tensor([[0.3, 0.25, 0.25, 0.2], [0.2, 0.2, 0.35, 0.25]]), decimals=0)
    assert out.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]


def test_rounding_to_zero_decimals_releases_a_label_when_one_class_has_more_than_half():
    assert round_posteriors(torch.tensor([[0.1, 0.6, 0.3]]), decimals=0).tolist() == [[0.0, 1.0, 0.0]]


def test_top_k_matches_values_computed_by_hand():
    out = keep_top_k(torch.tensor([[0.1, 0.5, 0.3, 0.1]]), k=2)
    assert out[0].tolist() == pytest.approx([0.0, 0.5 / 0.8, 0.3 / 0.8, 0.0], abs=1e-6)


def test_top_k_breaks_ties_towards_the_lower_class_index():
    out = keep_top_k(torch.tensor([[0.4, 0.2, 0.2, 0.2]]), k=2)
    assert out[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0], abs=1e-6)


def test_top_1_is_the_one_hot_label(digits_context):
    probs = predict_proba(digits_context.victim, digits_context.dataset.x_test)
    one_hot = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float()
    assert torch.equal(keep_top_k(probs, k=1), one_hot)


def test_top_k_with_k_at_least_the_class_count_releases_the_posteriors():
    y = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), 1)
    torch.testing.assert_close(keep_top_k(y, k=10), y)
    torch.testing.assert_close(keep_top_k(y, k=50), y)


@pytest.mark.parametrize("name, params, field", [("rounding", {"decimals": -1}, "decimals"), ("top_k", {"k": 0}, "k")])
def test_bad_params_name_the_field_and_value(name, params, field):
    with pytest.raises(ConfigError, match=rf"{field}: .*got {list(params.values())[0]}"):
        DefenseConfig(name=name, params=params)

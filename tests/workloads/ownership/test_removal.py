"""Removal attacks: pruning zeroes exactly the stated fraction of weights (the smallest), fine-tuning leaves the
original untouched; bad rates are one-line errors naming the field."""
import pytest
import torch

from workloads.config import ConfigError, parse
from workloads.ownership import OwnershipConfig
from workloads.ownership.removal import FinetuneConfig, finetune, prunable, prune


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_prune_zeroes_the_stated_fraction_of_the_smallest_weights(digits_victim, rate):
    model = digits_victim.model
    before = torch.cat([w.detach().flatten() for w in prunable(model)])
    pruned = prune(model, rate)
    after = torch.cat([w.detach().flatten() for w in prunable(pruned)])
    zeroed = after == 0
    assert zeroed.sum().item() == round(rate * len(before)) and (before != 0).all()
    assert before[zeroed].abs().max() <= before[~zeroed].abs().min()
    assert torch.equal(after[~zeroed], before[~zeroed])
    assert torch.equal(pruned.head.bias, model.head.bias)
    assert torch.equal(torch.cat([w.detach().flatten() for w in prunable(model)]), before)


def test_finetune_returns_a_changed_copy(digits_victim):
    model, data = digits_victim.model, digits_victim.data
    tuned = finetune(model, data.x_pool[:200], data.y_pool[:200], FinetuneConfig(epochs=1), seed=0)
    assert not torch.equal(tuned.head.weight, model.head.weight)
    assert torch.equal(model.head.weight, digits_victim.model.head.weight)


@pytest.mark.parametrize("rates,message", [([0.5, 1.0], "prune_rates[1]: expected a pruning rate in (0, 1), got 1.0"),
                                           ([0.0], "prune_rates[0]: expected a pruning rate in (0, 1), got 0.0")])
def test_pruning_rate_outside_the_open_unit_interval_is_rejected(rates, message):
    with pytest.raises(ConfigError) as e:
        parse(OwnershipConfig, {"prune_rates": rates})
    assert e.value.errors == [message]
    with pytest.raises(ConfigError, match=r"^rate: expected a pruning rate in \(0, 1\), got 1.5$"):
        prune(torch.nn.Linear(2, 2), 1.5)

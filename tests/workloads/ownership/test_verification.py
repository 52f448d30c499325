"""Verification: the exact binomial p-value, the null-model threshold, and the acceptance check on digits —
an independently trained clean model is not flagged, a Knockoff copy of the watermarked victim is."""
import math

import pytest
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
from workloads.models import build_model
from workloads.ownership import OwnershipConfig, suspect_metrics, victim_metrics
from workloads.ownership.verification import binomial_pvalue, false_positive_rates, null_models, threshold
from workloads.training import TrainConfig, fit, predict_proba


def test_binomial_pvalue_matches_the_hand_computed_tail():
    k, p0 = 20, 0.1
    for hits in (0, 2, 5, 9, 20):
        by_hand = sum(math.comb(k, i) * p0**i * (1 - p0) ** (k - i) for i in range(hits, k + 1))
        assert binomial_pvalue(hits, k, p0) == pytest.approx(by_hand, rel=1e-9)
    assert binomial_pvalue(1, 20, 0.1) == pytest.approx(1 - 0.9**20)
    assert binomial_pvalue(20, 20, 0.1) == pytest.approx(1e-20) and binomial_pvalue(0, 20, 0.1) == 1.0


def test_threshold_and_leave_one_out_false_positives():
    null = [0.2, 0.3, 0.25, 0.6]
    assert threshold(null, 0.05) == pytest.approx(0.65)
    by_threshold, by_binomial = false_positive_rates(null, 100, 0.1, 0.0, 0.01)
    assert by_threshold == 0.25                          # only 0.6 exceeds the max of the other three
    assert by_binomial == 1.0                             # every one is far above 1/10


def test_null_models_are_cached_and_independent(wm_victim, victim_cache):
    first = null_models(wm_victim, 2, victim_cache)
    again = null_models(wm_victim, 2, victim_cache)
    assert all(torch.equal(p, q) for p, q in zip(first[0].parameters(), again[0].parameters()))
    assert not torch.equal(first[0].head.weight, first[1].head.weight)
    assert not torch.equal(first[0].head.weight, wm_victim.model.head.weight)


@pytest.mark.timeout(300)
def test_independent_clean_model_is_not_flagged_and_a_knockoff_copy_is(wm_victim, victim_cache):
    cfg = OwnershipConfig(null_models=5, prune_rates=[0.5], finetune=None)
    own = victim_metrics(wm_victim, cfg, victim_cache)
    data = wm_victim.data
    assert own["wm_accuracy_victim"] > own["wm_threshold"] and own["wm_pvalue_victim"] < 1e-10

    # an innocent party's model: the same task and architecture, its own data (the pool split, true labels)
    independent = fit(build_model("lenet5", data.shape, 10, seed=12345), data.x_pool, data.y_pool,
                      wm_victim.config.train, seed=54321)
    innocent = suspect_metrics(wm_victim, independent, cfg, victim_cache)
    assert innocent["wm_verified"] == 0.0

    attack = AttackConfig(budget=1000, labels="soft", train=TrainConfig(epochs=30, batch_size=64, lr=1e-3))
    client = LocalQueryClient(lambda x: predict_proba(wm_victim.model, x), attack.budget)
    copy = steal(attack, client, data.x_pool, VictimInfo(data.shape, 10, "lenet5"))
    stolen = suspect_metrics(wm_victim, copy, cfg, victim_cache)
    assert stolen["wm_verified"] == 1.0
    assert stolen["wm_accuracy"] > innocent["wm_accuracy"] + 0.1

    # the null-rate binomial test separates them too; the chance-rate (1/classes) one flags both
    null_rate = OwnershipConfig(null_models=5, prune_rates=[0.5], finetune=None, chance="null")
    assert suspect_metrics(wm_victim, independent, null_rate, victim_cache)["wm_verified_binomial"] == 0.0
    assert suspect_metrics(wm_victim, copy, null_rate, victim_cache)["wm_verified_binomial"] == 1.0
    assert innocent["wm_verified_binomial"] == 1.0 and own["wm_fpr_binomial"] == 1.0

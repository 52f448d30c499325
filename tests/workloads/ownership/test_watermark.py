"""Watermark sets: held out from every split, inside β of their source, carrying their adversarial labels;
the configuration rejects β ≤ ε + α, k beyond the held-out pool and negative ε before any training."""
import dataclasses

import pytest
import torch

from workloads.config import ConfigError, parse
from workloads.data import load_dataset
from workloads.hardening import HardeningContext
from workloads.hardening.adversarial_training import clean_model
from workloads.training import predict_proba
from workloads.victims import VictimConfig


def _rows_in(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return (rows.flatten(1)[:, None, :] == pool.flatten(1)[None, :, :]).all(2).any(1)


def test_holdout_is_disjoint_from_train_pool_and_test():
    d = load_dataset("digits", seed=5, holdout=300, holdout_seed=9)
    assert len(d.x_holdout) == 300 and len(d.x_train) + len(d.x_pool) + len(d.x_test) + 300 == 1797
    for split in (d.x_train, d.x_pool, d.x_test):
        assert not _rows_in(d.x_holdout, split).any()


def test_zero_holdout_keeps_the_splits_and_cache_keys_from_before_it_existed():
    d = load_dataset("digits", seed=5)
    assert (d.x_train.sum().item(), d.x_pool.sum().item(), d.x_test.sum().item()) == (14025.5, 14040.0625, 7041.8125)
    assert VictimConfig().key == "0a899a16deb29f6b" and VictimConfig(holdout=10).key != VictimConfig().key


def test_watermarks_lie_within_beta_of_held_out_sources_and_carry_adversarial_labels(wm_victim):
    a, data = wm_victim.artifacts, wm_victim.data
    beta = wm_victim.config.hardening.resolved()["params"]["watermark"]["beta"]
    assert len(a["wm_x"]) == 100
    assert (a["wm_x"] - a["wm_source"]).abs().max() <= beta + 1e-6
    assert _rows_in(a["wm_source"], data.x_holdout).all()
    assert not any(_rows_in(a["wm_source"], s).any() for s in (data.x_train, data.x_pool, data.x_test))
    crafter = clean_model(HardeningContext(None, data, wm_victim.config.train, "lenet5", wm_victim.config.seed))
    assert torch.equal(predict_proba(crafter, a["wm_x"]).argmax(1), a["wm_y"])
    assert torch.equal(predict_proba(crafter, a["wm_source"]).argmax(1), a["wm_true_y"])
    assert (a["wm_y"] != a["wm_true_y"]).all()
    assert wm_victim.training["wm_accuracy_train"] >= 0.9


def test_ood_trigger_set_has_k_noise_images_with_fixed_random_labels(victim_cache):
    from workloads.victims import load_or_train

    cfg = parse(VictimConfig, {"train": {"epochs": 2}, "hardening": {"name": "adversarial_training", "params": {
        "steps": 1, "watermark": {"kind": "ood", "k": 20}}}})
    a = load_or_train(cfg, victim_cache).artifacts
    assert a["wm_x"].shape == (20, 1, 8, 8) and len(a["wm_y"].unique()) > 3
    assert not _rows_in(a["wm_x"], load_dataset("digits", seed=0, pool_fraction=0.0).x_train).any()


@pytest.mark.parametrize("victim,field", [
    ({"holdout": 100, "hardening": {"name": "adversarial_training", "params": {
        "epsilon": 0.1, "alpha": 0.02, "watermark": {"kind": "adversarial", "beta": 0.12}}}},
     "victim.hardening.params.watermark.beta: expected > epsilon + alpha = 0.12"),
    ({"holdout": 100, "hardening": {"name": "adversarial_training", "params": {
        "watermark": {"kind": "adversarial", "k": 101}}}},
     "victim.hardening.params.watermark.k: 101 watermarks need as many held-out images, but victim.holdout is 100"),
    ({"hardening": {"name": "adversarial_training", "params": {"epsilon": -0.1}}},
     "victim.hardening.params.epsilon: expected >= 0, got -0.1"),
    ({"holdout": -1}, "victim.holdout: expected >= 0, got -1"),
])
def test_bad_watermark_configs_fail_with_one_line_naming_the_field(victim, field):
    from orchestrator.config import trial_config

    with pytest.raises(ConfigError) as e:
        trial_config({"victim": victim})
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(field) and "\n" not in str(e.value)


def test_too_few_adversarial_successes_is_a_config_error_naming_k():
    from workloads.hardening.adversarial_training import AdversarialTrainingParams, train

    params = parse(AdversarialTrainingParams, {"epsilon": 0.0, "alpha": 0.0, "watermark": {
        "kind": "adversarial", "k": 30, "beta": 0.001}})
    data = dataclasses.replace(load_dataset("digits", holdout=30, holdout_seed=1))
    ctx = HardeningContext(None, data, dataclasses.replace(VictimConfig().train, epochs=1), "lenet5", 0)
    from workloads.models import build_model
    ctx.model = build_model("lenet5", data.shape, 10, seed=0)
    with pytest.raises(ConfigError, match=r"^watermark.k: only \d+ of the 30 held-out images"):
        train(params, ctx)

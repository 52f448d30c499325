"""A trial of an adversarially trained, watermarked digits victim reports robust accuracy, the watermark on the
victim, on each stolen copy and after each removal attack, and the false-positive rates (through real Ray)."""
import pytest

from workloads.config import ConfigError

# the victim of tests/workloads/ownership/conftest.py: trained once per session (victim cache)
VICTIM = {"dataset": "digits", "holdout": 300, "hardening": {"name": "adversarial_training", "params": {
    "epsilon": 0.1, "alpha": 0.02, "steps": 5,
    "watermark": {"kind": "adversarial", "k": 100, "beta": 0.25, "attack": "pgd", "per_batch": 64}}}}
OWNERSHIP = {"null_models": 3, "prune_rates": [0.5], "finetune": {"epochs": 1}, "robust_size": 100}


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_trial_reports_watermark_and_robustness_metrics(ray_session, victim_cache):
    from orchestrator.config import trial_config
    from orchestrator.sweep_config import metric_names
    from orchestrator.trial import run_trial
    from workloads.ownership import metric_names as ownership_metrics

    cfg = trial_config({"victim": VICTIM, "cache_dir": victim_cache, "ownership": OWNERSHIP, "attacks": [
        {"name": "knockoff", "id": "greybox", "budget": 300, "query_batch": 100, "train": {"epochs": 5}},
        {"name": "knockoff", "id": "blackbox", "budget": 300, "query_batch": 100, "substitute_arch": "mlp",
         "train": {"epochs": 5}}]})
    m = run_trial(cfg).metrics
    suspects = ("greybox", "blackbox", "finetune", "prune_0.5")
    for name in suspects:
        assert 0.0 <= m[f"wm_accuracy/{name}"] <= 1.0 and 0.0 <= m[f"wm_pvalue/{name}"] <= 1.0
        assert m[f"wm_verified/{name}"] == float(m[f"wm_accuracy/{name}"] > m["wm_threshold"])
    assert m["wm_verification_rate"] == pytest.approx(sum(m[f"wm_verified/{s}"] for s in suspects) / 4)
    assert m["wm_accuracy_victim"] > m["wm_threshold"] >= m["wm_accuracy_null"]
    assert 0.0 <= m["robust_accuracy"] < m["victim_accuracy"]
    assert 0.0 <= m["removal_accuracy/finetune"] <= 1.0
    keys = [a.key for a in cfg.attacks]
    reported = set(metric_names(cfg.attacks, cfg.repeats, ownership_metrics(cfg.victim.hardening, keys, 1, cfg.ownership)))
    assert {k for k in m if k.startswith(("wm_", "robust", "removal"))} == {k for k in reported
                                                                            if k.startswith(("wm_", "robust", "removal"))}


def test_ownership_settings_are_validated_with_the_trial():
    from orchestrator.config import trial_config

    with pytest.raises(ConfigError, match=r"^ownership.prune_rates\[0\]: expected a pruning rate in \(0, 1\), got 1.2$"):
        trial_config({"ownership": {"prune_rates": [1.2]}})
    with pytest.raises(ConfigError, match=r"^ownership.robust_epsilon: expected >= 0, got -0.1$"):
        trial_config({"ownership": {"robust_epsilon": -0.1}})

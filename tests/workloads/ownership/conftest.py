"""A digits victim with PGD adversarial training and an adversarial watermark, trained once per session."""
import pytest

WATERMARKED = {"holdout": 300, "hardening": {"name": "adversarial_training", "params": {
    "epsilon": 0.1, "alpha": 0.02, "steps": 5,
    "watermark": {"kind": "adversarial", "k": 100, "beta": 0.25, "attack": "pgd", "per_batch": 64}}}}


@pytest.fixture(scope="session")
def wm_victim(victim_cache):
    from workloads.config import parse
    from workloads.victims import VictimConfig, load_or_train

    return load_or_train(parse(VictimConfig, WATERMARKED), victim_cache)

"""The query attacks through a real VictimService and two attacker workers each: every image charged once."""
from __future__ import annotations

import pytest

from orchestrator.trial import _check_pool
from workloads.attacks import AttackConfig
from workloads.config import ConfigError

TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.003}
ATTACKS = [
    # 20 + 40, then 40 re-labelled + 10 of 40 new points: 110 = the budget exactly
    {"name": "jbda", "budget": 110, "params": {"seed_size": 20, "rounds": 3, "relabel": "all"}, "curve": "retrain"},
    {"name": "adaptive_knockoff", "budget": 90, "params": {"batch": 30}, "curve": "online"},
    {"name": "activethief", "budget": 90, "params": {"strategy": "kcenter", "seed_size": 30, "rounds": 2},
     "curve": "online"},
]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_query_attacks_split_each_round_over_two_workers_and_the_ledger_matches(ray_session, victim_cache,
                                                                               digits_victim, tmp_path):
    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    data = {"victim": {"dataset": "digits"}, "cache_dir": victim_cache, "service": {"num_cpus": 0.5},
            "attacks": [a | {"workers": 2, "query_batch": 16, "train": TRAIN, "checkpoints": [30, 90]}
                        for a in ATTACKS]}
    result = run_trial(trial_config(data))
    for attack in trial_config(data).attacks:
        rows = [r for r in result.ledger if r["attack"] == attack.key]
        per_worker = {}
        for r in rows:
            per_worker[r["client"]] = per_worker.get(r["client"], 0) + r["images"]
        assert sorted(per_worker) == [f"{attack.key}/r0/w0", f"{attack.key}/r0/w1"]
        assert sum(per_worker.values()) == attack.budget == result.metrics[f"queries/{attack.key}"]
        assert max(per_worker.values()) - min(per_worker.values()) <= 1
        points = sorted(c["checkpoint"] for c in result.curves if c["attack"] == attack.key)
        assert points == [30, 90]


def test_a_pool_too_small_is_named_with_the_attack_index_before_anything_runs():
    attack = AttackConfig(name="jbda", budget=500, params={"seed_size": 300})
    with pytest.raises(ConfigError, match=r"^attacks\[2\].params.seed_size: 300 seed images exceed the attacker's "
                                          r"pool \(200 images"):
        _check_pool(2, attack, 200)
    with pytest.raises(ConfigError, match=r"^attacks\[0\].budget: 500 exceeds the attacker's pool"):
        _check_pool(0, AttackConfig(name="activethief", budget=500), 200)

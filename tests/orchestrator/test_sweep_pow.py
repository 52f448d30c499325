"""A proof-of-work sweep runs under `heist run` (real Ray, Optuna, MLflow) and its three-objective
frontier (benign overhead, attacker overhead, stolen accuracy) lands in MLflow."""
from __future__ import annotations

import contextlib
import io

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_a_pow_sweep_logs_overheads_and_a_frontier(ray_session, victim_cache, tmp_path):
    sweep = {
        "name": "tiny_pow",
        "victim": {"dataset": "digits", "train": {"epochs": 5}},
        "defense": {"name": "pow", "params": {"k": 30, "base": [1.05, 3.0], "offset": 1.0, "t_min": 0.001,
                                              "t_max": 1.0, "mode": "simulated"}},
        "attacks": [{"name": "copycat", "budget": 150, "query_batch": 50, "surrogate": {"kind": "noise", "size": 300},
                     "train": {"epochs": 2}}],
        "service": {"num_cpus": 0.5}, "workers": {"num_cpus": 0.25}, "trial_resources": {"num_cpus": 0.5},
        "benign": {"batch": 64},
        "objectives": [{"metric": "pow_benign_overhead", "mode": "min"},
                       {"metric": "pow_attacker_overhead", "mode": "max"},
                       {"metric": "stolen_accuracy", "mode": "min"}],
        "reference_point": {"pow_benign_overhead": 1000.0, "pow_attacker_overhead": 1.0},
        "search": {"algorithm": "grid"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": str(tmp_path / "runs"),
        "cache_dir": victim_cache,
    }
    path = tmp_path / "tiny_pow.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["run", str(path)]) == 0
    assert "Pareto frontier of sweep tiny_pow" in out.getvalue()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("tiny_pow").experiment_id
    runs = {float(r.data.params["pow.base"]): r.data.metrics for r in
            client.search_runs([exp], "tags.`heist.kind` = 'trial'")}
    assert set(runs) == {1.05, 3.0}
    for m in runs.values():
        assert m["pow_benign_overhead"] >= 1.0 and m["pow_attacker_overhead"] >= 1.0
        assert m["privacy_cost_attacker"] > 0 and m["privacy_cost_benign"] > 0
        assert m["pow_bits_mean_attacker"] >= 0 and "pow_mint_seconds_attacker" in m
    # noise queries run ahead of the benign curve: a steeper base makes the attacker pay more
    assert runs[3.0]["pow_mint_seconds/copycat_hard_noise"] > runs[1.05]["pow_mint_seconds/copycat_hard_noise"]
    parent = client.search_runs([exp], "tags.`heist.kind` = 'sweep'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")} >= {"pareto/frontier.md"}

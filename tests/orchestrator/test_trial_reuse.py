"""Trials on long-lived actors (`TrialActors`, what a sweep's trial process keeps between trials) give exactly the
results of trials on fresh actors, for a fixed seed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

YAML = Path(__file__).with_name("trial_digits.yaml")
TIMING = {"defense_latency_us"}          # measured time, not a result


def digits_trial(victim_cache, defense: dict):
    from orchestrator.config import trial_config

    data = yaml.safe_load(YAML.read_text())
    data.update(cache_dir=victim_cache, defense=defense, repeats=2)
    data["attacks"][0].update(budget=200, train={"epochs": 5, "batch_size": 64, "lr": 0.002}, checkpoints=[100, 200])
    data["attacks"][1].update(budget=100, workers=3, train={"epochs": 2, "batch_size": 64, "lr": 0.002})
    # max_batch 1: no request is merged with another, so each is answered from the same forward batch in every run
    # (which requests the batcher merges depends on timing and moves the last bits of a GEMM, fresh or reused)
    data["service"].update(num_cpus=0.5, max_batch=1)
    return trial_config(data)


def results(result) -> tuple:
    # the service numbers a client's requests as they arrive: concurrent ones may arrive in either order
    ledger = sorted((r["client"], r["images"], r["l1"]) for r in result.ledger)
    return ({k: v for k, v in result.metrics.items() if k not in TIMING}, result.runs, result.curves, ledger)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_sweep_of_trials_on_reused_actors_matches_fresh_actors_exactly(ray_session, victim_cache, digits_victim):
    from orchestrator.trial import TrialActors, run_trial

    dcp = digits_trial(victim_cache, {"name": "dcp", "params": {"beta": 0.9}})
    rs = digits_trial(victim_cache, {"name": "reverse_sigmoid", "params": {"beta": 0.3}})
    fresh = [run_trial(dcp), run_trial(rs)]
    actors = TrialActors()
    try:
        reused = [run_trial(rs, actors=actors)]          # the actors then hold another defense, clients and log
        service, workers = actors.service, list(actors.workers)
        assert len(workers) == 3                         # the most any attack asks for; the benign pass uses one
        reused = [run_trial(dcp, actors=actors)] + reused
        assert actors.service is service and actors.workers == workers   # nothing was restarted
        assert ray_session.get(service.stats.remote(actors.owner))["images"] == 2 * (200 + 100) + len(
            digits_victim.data.x_test)                   # the reset zeroed the statistics of the first trial
    finally:
        actors.close()
    for got, want in zip(reused, fresh):
        assert results(got) == results(want)
    assert results(reused[0])[0] != results(reused[1])[0]      # the two defenses differ: the test can tell

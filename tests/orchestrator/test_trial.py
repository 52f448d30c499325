"""run_trial end to end on digits (fake GPU fraction), `heist trial` and its --set overrides."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.trial import apply_override, trial_dict
from workloads.config import ConfigError

YAML = Path(__file__).with_name("trial_digits.yaml")


def test_apply_override_dotted_keys_lists_and_yaml_values():
    data = yaml.safe_load(YAML.read_text())
    apply_override(data, "defense.params.beta=0.5")
    apply_override(data, "attacks.1.budget=120")
    apply_override(data, "service.num_gpus=0.5")
    apply_override(data, "attacks.0.surrogate={kind: noise, size: 10}")
    apply_override(data, "cache_dir=null")
    assert data["defense"]["params"] == {"beta": 0.5}
    assert data["attacks"][1]["budget"] == 120 and data["service"]["num_gpus"] == 0.5
    assert data["attacks"][0]["surrogate"] == {"kind": "noise", "size": 10} and data["cache_dir"] is None
    for bad in ("attacks.7.budget=1", "novalue", "=3"):
        with pytest.raises(ConfigError):
            apply_override(data, bad)


def test_trial_dict_runs_a_sweeps_first_point():
    assert trial_dict({"victim": {"seed": 1}}) == {"victim": {"seed": 1}}
    sweep = {"defenses": [{"name": "dcp", "params": {"beta": {"uniform": [0.3, 1.0]}}}, {"name": "reverse_sigmoid"}],
             "search": {"num_samples": 2}, "attacks": [{"budget": 50}]}
    data = trial_dict(sweep)
    assert data["defense"] == {"name": "dcp", "params": {"beta": 0.3, "gamma": 0.2, "nu": 1000.0}}
    assert data["attacks"][0]["budget"] == 50


def test_set_defense_name_picks_that_defense_without_the_files_hyperparameters():
    """`heist trial sweep.yaml --set defense.name=none` runs undefended: the first point's beta is not kept."""
    from orchestrator.config import trial_config

    sweep = {"defenses": [{"name": "dcp", "params": {"beta": {"uniform": [0.3, 1.0]}}},
                          {"name": "reverse_sigmoid", "params": {"beta": [0.1, 0.5]}}], "search": {"num_samples": 2}}
    assert trial_config(trial_dict(sweep, "none")).defense.name == "none"
    assert trial_dict(sweep, "reverse_sigmoid")["defense"] == {"name": "reverse_sigmoid",
                                                               "params": {"beta": 0.1, "gamma": 0.2}}
    assert trial_dict(sweep, "gaussian")["defense"] == {"name": "gaussian", "params": {}}
    trial = {"defense": {"name": "dcp", "params": {"beta": 0.9}}}
    assert trial_dict(trial, "none")["defense"] == {"name": "none", "params": {}}
    assert trial_dict(trial, "dcp") == trial


def test_set_defense_name_none_on_a_sweep_file_loads_without_further_overrides(tmp_path):
    from orchestrator.trial import load_trial

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"defense": {"name": "dcp", "params": {"beta": [0.5, 0.9]}},
                                    "search": {"num_samples": 2}}))
    cfg = load_trial(path, ["defense.name=none"])
    assert cfg.defense.name == "none" and cfg.defense.params == {}
    assert load_trial(path, ["defense.name=dcp", "defense.params.beta=0.7"]).defense.params["beta"] == 0.7


def wait_for_full_resources(ray, total, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        avail = ray.available_resources()
        if all(avail.get(k, 0.0) >= v - 1e-6 for k, v in total.items()):
            return avail
        time.sleep(0.2)
    return ray.available_resources()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_run_trial_digits_fake_gpu_metrics_and_cleanup(ray_session, victim_cache, digits_victim):
    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    ray = ray_session
    total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    data = yaml.safe_load(YAML.read_text())
    data["cache_dir"] = victim_cache
    data["service"]["num_gpus"] = 0.5
    cfg = trial_config(data)
    result = run_trial(cfg)
    m = result.metrics

    keys = [a.key for a in cfg.attacks]
    assert keys == ["knockoff_soft_split", "copycat_hard_noise"]
    expected = {"victim_accuracy", "defended_accuracy", "perturbation_l1", "perturbation_l1_attacker",
                "defense_latency_us", "stolen_accuracy", "fidelity", "agreement", "relative_accuracy",
                "victim_training/train_seconds"}
    expected |= {f"{p}/{k}" for p in ("stolen_accuracy", "fidelity", "agreement", "perturbation_l1", "queries")
                 for k in keys}
    assert set(m) == expected                                                       # one repeat: no _std
    assert m["victim_accuracy"] == pytest.approx(digits_victim.accuracy) and m["victim_accuracy"] > 0.8
    assert m["defended_accuracy"] == pytest.approx(m["victim_accuracy"])          # defense `none`
    assert m["perturbation_l1"] == pytest.approx(0.0, abs=1e-5)
    assert m["perturbation_l1_attacker"] == pytest.approx(0.0, abs=1e-5)
    assert 0.0 <= m["defense_latency_us"] < 1000.0
    for k in keys:
        assert 0.0 <= m[f"stolen_accuracy/{k}"] <= 1.0 and 0.0 <= m[f"fidelity/{k}"] <= 1.0
    assert m["queries/knockoff_soft_split"] == 300 and m["queries/copycat_hard_noise"] == 200
    assert m["stolen_accuracy/knockoff_soft_split"] > 0.3                          # the attack learned something
    assert m["stolen_accuracy"] == max(m[f"stolen_accuracy/{k}"] for k in keys)
    assert m["fidelity"] == max(m[f"fidelity/{k}"] for k in keys)
    for k in keys:     # undefended: the defended answers are the clean ones, so agreement is fidelity
        assert m[f"agreement/{k}"] == pytest.approx(m[f"fidelity/{k}"])
    assert m["relative_accuracy"] == pytest.approx(m["stolen_accuracy"] / m["victim_accuracy"])

    rows = result.ledger
    n_test = len(digits_victim.data.x_test)
    assert sum(r["images"] for r in rows if r["attack"] == "benign") == n_test
    for k, budget in (("knockoff_soft_split", 300), ("copycat_hard_noise", 200)):
        mine = [r for r in rows if r["attack"] == k]
        assert sum(r["images"] for r in mine) == budget and {r["client_kind"] for r in mine} == {"attacker"}
        assert len({r["client"] for r in mine}) == 2                                 # two workers each
    assert {"client", "seq", "images", "queue_ms", "compute_ms", "served_batch_images"} <= set(rows[0])
    assert result.info["service"]["device"] == "cpu"                               # fake GPU: no CUDA here

    # every actor the trial created is gone: the cluster's resources are all free again
    avail = wait_for_full_resources(ray, total)
    assert all(avail.get(k, 0.0) >= v - 1e-6 for k, v in total.items()), (avail, total)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_heist_trial_cli_prints_table_and_json(ray_session, victim_cache, digits_victim, tmp_path, capsys):
    from orchestrator import cli

    out = tmp_path / "m.json"
    rc = cli.main(["trial", str(YAML), "--set", f"cache_dir={victim_cache}", "--set", "attacks.0.budget=120",
                   "--set", "attacks.1.budget=60", "--set", "attacks.0.train.epochs=2",
                   "--set", "attacks.1.train.epochs=2", "--json", str(out)])
    captured = capsys.readouterr()
    printed, phases = captured.out, captured.err.splitlines()
    assert rc == 0
    assert "victim_accuracy" in printed and "queries/knockoff_soft_split" in printed
    assert [line.split()[0] for line in phases if line.startswith(("victim", "benign", "attack"))] == [
        "victim", "benign", "attack", "attack"]          # one finished line per phase, in order, off a terminal
    attack_line = next(line for line in phases if line.startswith("attack knockoff_soft_split r0"))
    assert "120/120" in attack_line and "epoch 2/2" in attack_line and "#" * 24 in attack_line
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["queries/knockoff_soft_split"] == 120 and metrics["queries/copycat_hard_noise"] == 60


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_heist_trial_errors_are_one_line_exit_2(ray_session, victim_cache, tmp_path, capsys):
    from orchestrator import cli

    assert cli.main(["trial", str(YAML), "--set", "service.max_batch=0"]) == 2
    err = capsys.readouterr().err
    assert "service.max_batch" in err and "Traceback" not in err
    # a resource the cluster does not have fails fast instead of waiting forever
    assert cli.main(["trial", str(YAML), "--set", f"cache_dir={victim_cache}", "--set", "service.num_gpus=2"]) == 2
    err = capsys.readouterr().err
    assert "service.num_gpus" in err and "1 GPU in total" in err
    assert cli.main(["trial", str(YAML), "--set", "attacks.1.query_batch=5000"]) == 2
    assert "attacks[1].query_batch: 5000 images per request exceeds service.max_request" in capsys.readouterr().err
    assert cli.main(["trial", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_run_trial_inside_a_tune_trial_uses_its_placement_group(ray_session, victim_cache, digits_victim, tmp_path):
    from ray import tune

    from orchestrator.config import WorkerResources, trial_config
    from orchestrator.trial import run_trial, trial_bundles

    ray = ray_session
    total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    data = yaml.safe_load(YAML.read_text())
    data.update(cache_dir=victim_cache, attacks=data["attacks"][:1])
    data["attacks"][0].update(budget=100, train={"epochs": 2})
    data["service"].update(num_cpus=0.5, num_gpus=0.5)
    bundles = trial_bundles(trial_config(data), driver=WorkerResources(num_cpus=0.5))
    assert bundles == [{"CPU": 0.5}, {"CPU": 0.5, "GPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}]

    def trainable(config):
        from ray.util import get_current_placement_group

        assert get_current_placement_group() is not None
        result = run_trial(trial_config(config))
        tune.report({**result.metrics, "ledger_rows": len(result.ledger)})

    grid = tune.Tuner(tune.with_resources(trainable, tune.PlacementGroupFactory(bundles, strategy="PACK")),
                      param_space=data, tune_config=tune.TuneConfig(num_samples=1),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert grid[0].error is None
    assert grid[0].metrics["queries/knockoff_soft_split"] == 100 and grid[0].metrics["ledger_rows"] > 0
    avail = wait_for_full_resources(ray, total)
    assert all(avail.get(k, 0.0) >= v - 1e-6 for k, v in total.items()), (avail, total)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_real_defense_with_repeats_and_budget_curves(ray_session, victim_cache, digits_victim):
    """Reverse sigmoid through the whole trial: answers perturbed (test set and attacker queries), utility as the
    defense predicts, each attack repeated with independent seeds (mean ± sd), and the budget curve measured."""
    import numpy as np
    import torch

    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial
    from workloads.defenses import DefenseConfig, DefenseContext, build_defense
    from workloads.metrics import accuracy
    from workloads.training import predict_proba

    data = yaml.safe_load(YAML.read_text())
    data.update(cache_dir=victim_cache, repeats=3, attacks=data["attacks"][:1],
                defense={"name": "reverse_sigmoid", "params": {"beta": 1.0, "gamma": 0.2}})
    data["attacks"][0].update(budget=240, train={"epochs": 8, "batch_size": 64, "lr": 0.003}, checkpoints=[80, 240])
    result = run_trial(trial_config(data))
    m, key = result.metrics, "knockoff_soft_split"

    defense = build_defense(DefenseConfig("reverse_sigmoid", {"beta": 1.0, "gamma": 0.2}),
                            DefenseContext(digits_victim.model, digits_victim.data, "lenet5"))
    x_test = digits_victim.data.x_test
    expected = defense(predict_proba(digits_victim.model, x_test), x_test)
    assert m["defended_accuracy"] == pytest.approx(accuracy(expected, digits_victim.data.y_test), abs=1e-9)
    assert m["perturbation_l1"] > 0.5 and m["perturbation_l1_attacker"] > 0.5
    assert m[f"perturbation_l1/{key}"] == pytest.approx(m["perturbation_l1_attacker"])

    assert [(r["repeat"], r["seed"]) for r in result.runs] == [(0, 0), (1, 1), (2, 2)]
    accs = [r["stolen_accuracy"] for r in result.runs]
    assert len(set(accs)) > 1                                   # independent seeds give different thieves
    assert m[f"stolen_accuracy/{key}"] == pytest.approx(np.mean(accs))
    assert m[f"stolen_accuracy_std/{key}"] == pytest.approx(np.std(accs, ddof=1))
    assert m["stolen_accuracy_std"] == m[f"stolen_accuracy_std/{key}"] and m[f"queries/{key}"] == 240
    assert {r["repeat"] for r in result.ledger if r["attack"] == key} == {0, 1, 2}
    assert sum(r["images"] for r in result.ledger if r["attack"] == key) == 3 * 240

    assert sorted((c["repeat"], c["checkpoint"]) for c in result.curves) == [
        (r, c) for r in range(3) for c in (80, 240)]
    final = {c["repeat"]: c["stolen_accuracy"] for c in result.curves if c["checkpoint"] == 240}
    assert [final[r] for r in range(3)] == pytest.approx(accs)   # the last point is the finished substitute


def small_trial(victim_cache, **attack):
    from orchestrator.config import trial_config

    data = yaml.safe_load(YAML.read_text())
    data.update(cache_dir=victim_cache, attacks=data["attacks"][:1])
    data["attacks"][0].update({"train": {"epochs": 1}, **attack})
    data["service"].update(num_cpus=0.25, max_wait_ms=20.0)
    return data


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_killed_victim_service_fails_the_trial_with_the_reason(ray_session, victim_cache, digits_victim,
                                                                 monkeypatch):
    import threading

    from orchestrator import trial
    from orchestrator.config import trial_config

    ray = ray_session
    total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    started = []

    def observed_service_actor(*args, **kwargs):      # the real service; the test keeps its handle and owner token
        started.append(trial.service_actor.__wrapped_real__(*args, **kwargs))
        return started[-1]

    observed_service_actor.__wrapped_real__ = trial.service_actor
    monkeypatch.setattr(trial, "service_actor", observed_service_actor)
    cfg = trial_config(small_trial(victim_cache, budget=1200, query_batch=8))
    outcome = {}

    def run():
        try:
            trial.run_trial(cfg)
        except Exception as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:                       # wait until the attack is streaming
        if started:
            service, owner = started[0]
            ledger = ray.get(service.ledger.remote(owner))
            if sum(r["images"] for c, r in ledger.items() if c != "benign") >= 50:
                break
        time.sleep(0.02)
    ray.kill(service)
    thread.join(60)
    assert not thread.is_alive()
    err = outcome.get("error")
    assert isinstance(err, trial.TrialFailed), repr(err)
    msg = str(err)
    assert msg.startswith("attack 'knockoff_soft_split' repeat 0: the victim service died") and "\n" not in msg, msg
    avail = wait_for_full_resources(ray, total)       # the trial's workers were cleaned up
    assert all(avail.get(k, 0.0) >= v - 1e-6 for k, v in total.items()), (avail, total)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_every_wait_of_the_trial_is_bounded_and_names_what_it_waited_for(ray_session, victim_cache, digits_victim):
    from orchestrator.config import trial_config
    from orchestrator.trial import TrialFailed, run_trial

    with pytest.raises(TrialFailed, match=r"^starting the victim service: timed out waiting for the victim service to "
                                          r"start \(ready\): no answer after 0.001 s$"):
        run_trial(trial_config({**small_trial(victim_cache), "timeout_s": 0.001}))
    with pytest.raises(ConfigError, match="timeout_s: expected a number > 0, got 0"):
        trial_config({**small_trial(victim_cache), "timeout_s": 0})


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_run_trial_streams_its_request_log_to_the_directory_it_names(ray_session, victim_cache, digits_victim,
                                                                    tmp_path):
    from orchestrator import ledger as request_logs
    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    data = small_trial(victim_cache, budget=120, query_batch=8)
    data["service"]["log_chunk"] = 5
    result = run_trial(trial_config(data), ledger_dir=tmp_path / "ledger")
    parts = sorted((tmp_path / "ledger").glob("part-*.parquet"))
    rows = request_logs.read(tmp_path / "ledger")
    n_test = len(digits_victim.data.x_test)
    assert len(parts) == -(-len(rows) // 5) >= 3 and result.ledger == rows and result.ledger_rows is None
    assert sum(r["images"] for r in rows if r["attack"] == "knockoff_soft_split") == 120
    assert sum(r["images"] for r in rows if r["client_kind"] == "benign") == n_test
    assert {r["repeat"] for r in rows} == {0} and result.info["service_stats"]["log_rows_in_memory"] < 5


def test_fidelity_is_against_the_clean_victim_and_agreement_against_the_defended_answers():
    """A substitute that copies the defended answers' argmax: agreement 1; fidelity only where the defense kept
    the clean argmax (swap the two references and this fails)."""
    import torch

    from orchestrator.trial import Evaluation

    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    clean = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    defended = torch.eye(3)[[0, 1, 2, 1, 2, 0]]           # the defense moved the argmax of the last three

    class CopiesDefended(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):       # logits peaked at the defended answer of each (known) image
            return torch.stack([defended[int((x - im).abs().sum(dim=(1, 2, 3)).argmin())] for im in images]) * 10

    scores = Evaluation(x, torch.tensor([0, 1, 2, 0, 1, 2]), clean, defended)(CopiesDefended())
    assert scores["agreement"] == 1.0
    assert scores["fidelity"] == 0.5 and scores["stolen_accuracy"] == 0.5

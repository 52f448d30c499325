"""The sweep YAML: what it accepts, what it resolves, and every error a researcher can make, by YAML path."""
from __future__ import annotations

import copy

import optuna
import pytest

from orchestrator.cli import main
from orchestrator.sweep_config import Dim, SearchSpace, as_data, bundles, from_dict, parse_dim, plan
from workloads.config import ConfigError

SWEEP = {
    "victim": {"dataset": "digits", "train": {"epochs": 2}},
    "defense": {"name": "dcp", "params": {"beta": {"uniform": [0.3, 1.0]}, "gamma": 0.2}},
    "attacks": [{"name": "knockoff", "budget": 100}],
}


def sweep(**changes) -> dict:
    """SWEEP with some keys replaced (None: removed)."""
    data = copy.deepcopy(SWEEP) | changes
    return {k: v for k, v in data.items() if v is not None}


def errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    return e.value.errors


# ------------------------------------------------------------------------------------ accepted sweeps
def test_a_minimal_sweep_resolves_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEIST_STORAGE", raising=False)
    cfg = from_dict(sweep(), "mine")
    assert cfg.name == "mine" and cfg.tracking.experiment == "mine"
    assert [(o.metric, o.mode) for o in cfg.objectives] == [("defended_accuracy", "max"), ("stolen_accuracy", "min")]
    assert cfg.reference_point == {"defended_accuracy": 0.0, "stolen_accuracy": 1.0}
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert cfg.storage == str(tmp_path.resolve() / "heist_runs")
    assert cfg.cache_dir.startswith("/")
    assert (cfg.search.algorithm, cfg.search.sampler, cfg.num_samples) == ("optuna", "tpe", 8)


def test_the_tracking_uri_comes_from_the_yaml_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert from_dict(sweep()).tracking.uri == "http://mlflow:5000"
    assert from_dict(sweep(tracking={"uri": "sqlite:////srv/m.db"})).tracking.uri == "sqlite:////srv/m.db"
    monkeypatch.chdir(tmp_path)
    assert from_dict(sweep(tracking={"uri": "sqlite:///x.db"})).tracking.uri == f"sqlite:///{tmp_path.resolve()}/x.db"


def test_the_resolved_config_reads_back_to_itself():
    cfg = from_dict(sweep(search={"points_to_evaluate": [{"params": {"beta": 0.5}}]}), "x")
    assert from_dict(as_data(cfg)) == cfg


def test_each_distribution_form():
    assert parse_dim(0.2) == Dim("fixed", (0.2,))
    assert parse_dim({"uniform": [0, 1]}) == Dim("uniform", (0, 1))
    assert parse_dim({"loguniform": [0.01, 1]}) == Dim("loguniform", (0.01, 1))
    assert parse_dim({"int": [1, 3]}).finite == [1, 2, 3]            # both ends included
    assert parse_dim({"choice": [1, 2]}) == parse_dim([1, 2]) == Dim("choice", (1, 2))


def test_several_defenses_and_a_grid_enumerate_every_point():
    cfg = from_dict(sweep(defense=None, defenses=[
        {"name": "dcp", "params": {"beta": [0.5, 0.9]}},
        {"name": "reverse_sigmoid", "params": {"beta": [0.1, 0.2, 0.4], "gamma": 0.2}},
        {"name": "none"}], search={"algorithm": "grid"}))
    assert cfg.num_samples == 6 and cfg.search.sampler == "grid"
    assert {"name": "reverse_sigmoid", "params": {"beta": 0.4, "gamma": 0.2}} in cfg.grid()


def test_the_optuna_grid_gives_concurrent_trials_distinct_points():
    cfg = from_dict(sweep(defense={"name": "top_k", "params": {"k": {"int": [1, 4]}}}, search={"algorithm": "grid"}))
    space = SearchSpace(cfg)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid_space(), seed=0))
    running = [study.ask() for _ in range(cfg.num_samples)]        # none finished yet
    assert sorted(space(trial)["defense"]["params"]["k"] for trial in running) == [1, 2, 3, 4]


def test_the_define_by_run_space_samples_inside_each_defense_space():
    cfg = from_dict(sweep(defense=None, defenses=[
        {"name": "dcp", "params": {"beta": {"uniform": [0.3, 1.0]}}},
        {"name": "top_k", "params": {"k": {"int": [1, 3]}}}]))
    space, study = SearchSpace(cfg), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [space(study.ask())["defense"] for _ in range(30)]
    assert {p["name"] for p in points} == {"dcp", "top_k"}
    assert all(0.3 <= p["params"]["beta"] <= 1.0 for p in points if p["name"] == "dcp")
    assert all(p["params"]["k"] in (1, 2, 3) for p in points if p["name"] == "top_k")


def test_points_to_evaluate_use_the_optuna_parameter_names():
    cfg = from_dict(sweep(defense=None, defenses=[{"name": "dcp", "params": {"beta": {"uniform": [0.3, 1]}}},
                                                  {"name": "none"}],
                          search={"points_to_evaluate": [{"name": "dcp", "params": {"beta": 0.5}}, {"name": "none"}]}))
    assert cfg.optuna_points() == [{"defense": "dcp", "dcp.beta": 0.5}, {"defense": "none"}]


# --------------------------------------------------------------------------------- resources and GPUs
def test_a_trial_reserves_its_process_service_and_workers():
    cfg = from_dict(sweep(attacks=[{"name": "knockoff", "workers": 3}, {"name": "copycat", "workers": 1}],
                          service={"num_cpus": 1, "num_gpus": 0.5}, workers={"num_cpus": 0.25},
                          trial_resources={"num_cpus": 0.5, "num_gpus": 0.25}))
    assert bundles(cfg) == [{"CPU": 0.5, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.5}] + [{"CPU": 0.25}] * 3


def test_gpus_are_dropped_with_one_warning_on_a_cpu_cluster():
    cfg = from_dict(sweep(service={"num_gpus": 0.5}, trial_resources={"num_gpus": 0.25}))
    on_cpu, warning = plan(cfg, {"CPU": 8.0})
    assert "no GPUs" in warning and "\n" not in warning
    assert all("GPU" not in b for b in bundles(on_cpu))
    assert plan(cfg, {"CPU": 8.0, "GPU": 1.0}) == (cfg, None)


def test_max_concurrent_beyond_the_cluster_is_an_error():
    cfg = from_dict(sweep(search={"max_concurrent": 3}))    # a trial: process 0.5 + service 1 + a worker 0.25 CPU
    with pytest.raises(ConfigError) as e:
        plan(cfg, {"CPU": 4.0})
    assert e.value.errors == ["search.max_concurrent: 3 trial(s) at a time need 3 × 1.75 CPU (bundles "
                              "[{'CPU': 0.5}, {'CPU': 1.0}, {'CPU': 0.25}]), but the cluster has 4 CPU; at most 2 fit"]
    assert plan(cfg, {"CPU": 5.25}) == (cfg, None)


# -------------------------------------------------------------------------------- rejected sweeps
def test_unknown_keys_are_named_with_a_did_you_mean():
    assert errors(sweep(objectivs=[])) == ["objectivs: unknown key (did you mean 'objectives'?)"]
    assert errors(sweep(victim={"dataset": "digits", "trian": {}})) == [
        "victim.trian: unknown key (did you mean 'train'?)"]
    assert errors(sweep(defense={"name": "dcp", "params": {"betta": {"uniform": [0, 1]}}})) == [
        "defense.params.betta: unknown hyperparameter of dcp (did you mean 'beta'?); dcp takes beta, gamma, nu"]
    assert errors(sweep(defense={"name": "dpc", "params": {}}))[0].startswith(
        "defense.name: unknown defense 'dpc' (did you mean 'dcp'?)")


def test_wrong_types_are_named_by_path():
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": "abc"}})) == [
        "defense.params.beta: expected a number or a distribution, got 'abc'"]
    assert errors(sweep(search={"num_samples": "many"})) == [
        "search.num_samples: expected an integer or null, got 'many'"]
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": {"unifrom": [0, 1]}}}))[0].startswith(
        "defense.params.beta: unknown distribution 'unifrom' (did you mean 'uniform'?)")


def test_a_searched_range_is_checked_by_the_defense_itself():
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": {"uniform": [-1, 1]}}})) == [
        "defense.params.beta: expected >= 0, got -1.0 (in {uniform: [-1, 1]})"]
    assert errors(sweep(defense={"name": "top_k", "params": {"k": {"uniform": [1, 3]}}}))[0] == (
        "defense.params.k: expected an integer, got 1.0 (in {uniform: [1, 3]})")


def test_an_empty_search_space_is_rejected():
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": {"choice": []}}})) == [
        "defense.params.beta.choice: empty search space: expected at least one value"]
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": []}})) == [
        "defense.params.beta: empty search space: expected at least one value"]
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": {"uniform": [1, 1]}}})) == [
        "defense.params.beta.uniform: empty search space: expected low < high, got [1, 1]"]
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": 0.5}}))[0].startswith(
        "defense.params: empty search space: every hyperparameter of dcp is fixed")


def test_an_objective_must_name_a_known_metric():
    assert errors(sweep(objectives=[{"metric": "stolen_acc", "mode": "min"}])) == [
        "objectives[0].metric: unknown metric 'stolen_acc' (did you mean 'stolen_accuracy'?)"]
    per_attack = from_dict(sweep(objectives=[{"metric": "stolen_accuracy/knockoff_soft_split", "mode": "min"}]))
    assert per_attack.reference_point == {"stolen_accuracy/knockoff_soft_split": 1.0}
    assert errors(sweep(objectives=[{"metric": "defense_latency_us", "mode": "min"}])) == [
        "reference_point.defense_latency_us: required (this metric has no natural worst value)"]


def test_an_objective_the_configured_trial_does_not_report_is_rejected():
    """robust_accuracy exists only for adversarially trained victims; spreads only with repeats > 1."""
    assert errors(sweep(objectives=[{"metric": "robust_accuracy", "mode": "max"}]))[0].startswith(
        "objectives[0].metric: unknown metric 'robust_accuracy'")
    assert errors(sweep(objectives=[{"metric": "stolen_accuracy_std", "mode": "min"}],
                        reference_point={"stolen_accuracy_std": 1.0}))[0].startswith(
        "objectives[0].metric: unknown metric 'stolen_accuracy_std'")
    ok = from_dict(sweep(repeats=3, objectives=[{"metric": "stolen_accuracy_std", "mode": "min"}],
                         reference_point={"stolen_accuracy_std": 1.0}))
    assert ok.repeats == 3


def test_budgets_below_one_are_rejected():
    assert errors(sweep(attacks=[{"name": "knockoff", "budget": 0}])) == ["attacks[0].budget: expected >= 1, got 0"]


def test_grids_need_finite_spaces_and_their_own_size():
    assert errors(sweep(search={"algorithm": "grid"})) == [
        "defense.params.beta: a grid needs a list of values, got {uniform: [0.3, 1.0]}"]
    assert errors(sweep(defense={"name": "dcp", "params": {"beta": [0.5, 1]}},
                        search={"algorithm": "grid", "num_samples": 3}))[0].startswith(
        "search.num_samples: a grid runs each of its 2 points once")
    assert errors(sweep(search={"algorithm": "grid", "sampler": "tpe"}))[0].startswith(
        "search.sampler: algorithm 'grid' uses the 'grid' sampler")


def test_points_to_evaluate_must_lie_in_the_space():
    assert errors(sweep(search={"points_to_evaluate": [{"params": {"beta": 2.0}}]})) == [
        "search.points_to_evaluate[0].params.beta: 2.0 is outside {uniform: [0.3, 1.0]}"]
    assert errors(sweep(search={"points_to_evaluate": [{"params": {}}]})) == [
        "search.points_to_evaluate[0].params.beta: required (every searched hyperparameter needs a value)"]


def test_heist_validate_prints_the_resolved_config_or_every_error(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("defense: {name: dcp, params: {beta: {loguniform: [0.1, 1]}}}\n")
    bad.write_text("defense: {name: dcp, params: {beta: abc}}\nattacks: [{name: knockoff, budget: 0}]\n")
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "name: good" in out and "loguniform: [0.1, 1]" in out and "# 8 trials chosen by optuna" in out
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["heist validate: error: defense.params.beta: expected a number or a distribution, got 'abc'",
                   "heist validate: error: attacks[0].budget: expected >= 1, got 0"]

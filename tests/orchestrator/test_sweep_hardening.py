"""Sweeps over a training-time defense's hyperparameters (victim.hardening.params), alone or with an output
defense: the YAML forms, errors by YAML path, the points Optuna sees, and a real `heist run` whose every grid
point trains its victim once into the content-addressed cache."""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweep_config import SearchSpace, as_data, from_dict, load, trial_data
from orchestrator.trial import trial_dict
from workloads.config import ConfigError
from workloads.victims import load_or_train

DIGITS_INI = Path(__file__).parents[2] / "sweeps" / "digits_ini.yaml"
SWEEP = {
    "victim": {"dataset": "digits", "hardening": {"name": "ini", "params": {
        "gamma": {"uniform": [0.1, 1.0]}, "ood": {"kind": "noise"}, "epochs": 1}}},
    "defense": {"name": "none"},
    "attacks": [{"name": "knockoff", "budget": 100}],
}


def sweep(hardening_params=None, **changes) -> dict:
    data = copy.deepcopy(SWEEP) | changes
    if hardening_params is not None:
        data["victim"]["hardening"]["params"] = hardening_params
    return data


def errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    return e.value.errors


# ------------------------------------------------------------------------------------------ accepted
def test_a_searched_recipe_alone_is_a_sweep_and_reads_back_to_itself():
    cfg = from_dict(sweep(), "x")
    assert cfg.hardening_searched and list(cfg.victim.hardening.searched) == ["gamma"]
    assert cfg.victim.hardening.params["delta"] == 1.0            # defaults filled in, as for defenses
    assert from_dict(as_data(cfg)) == cfg
    base = cfg.base_trial()["victim"]["hardening"]
    assert base["name"] == "ini" and base["params"]["gamma"] == 0.1   # shared config: the first point


def test_a_grid_is_every_recipe_point_times_every_defense_point():
    cfg = from_dict(sweep({"gamma": [0.3, 1.0], "ood": [{"kind": "noise"}, {"kind": "dataset", "name": "mnist"}], "epochs": 1},
                          defense={"name": "dcp", "params": {"beta": [0.5, 0.9]}}, search={"algorithm": "grid"}))
    points = cfg.trial_grid()
    assert cfg.num_samples == len(points) == 8
    pairs = {(p["defense"]["params"]["beta"], p["hardening"]["params"]["gamma"], p["hardening"]["params"]["ood"]["kind"])
             for p in points}
    assert pairs == {(b, g, k) for b in (0.5, 0.9) for g in (0.3, 1.0) for k in ("noise", "dataset")}
    assert all(p["hardening"]["name"] == "ini" and p["hardening"]["params"]["epochs"] == 1 for p in points)
    data = trial_data(cfg.base_trial(), points[-1])
    assert data["victim"]["hardening"] == points[-1]["hardening"] and data["defense"] == points[-1]["defense"]
    assert cfg.label_keys() == {"dcp": ["beta", "victim.hardening.gamma", "victim.hardening.ood"]}


def test_optuna_searches_the_recipe_under_its_own_names_and_mappings_by_value():
    cfg = from_dict(sweep({"gamma": {"uniform": [0.1, 1.0]}, "delta": [0.0, 1.0],
                           "ood": {"choice": [{"kind": "noise"}, {"kind": "dataset", "name": "mnist"}]}}))
    space, study = SearchSpace(cfg), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(20):
        trial = study.ask()
        points.append(space(trial)["hardening"]["params"])
        assert {"victim.hardening.gamma", "victim.hardening.delta", "victim.hardening.ood"} <= set(trial.params)
    assert all(0.1 <= p["gamma"] <= 1.0 for p in points)
    assert {p["ood"]["kind"] for p in points} == {"noise", "dataset"}
    assert all(p["epochs"] == 50 and p["pcgrad"] is True for p in points)   # fixed values and defaults ride along


def test_points_to_evaluate_carry_the_recipe_point():
    cfg = from_dict(sweep(search={"points_to_evaluate": [{"hardening": {"gamma": 0.5}}]}))
    assert cfg.optuna_points() == [{"victim.hardening.gamma": 0.5}]
    assert errors(sweep(search={"points_to_evaluate": [{"hardening": {"gamma": 2.0}}]})) == [
        "search.points_to_evaluate[0].hardening.gamma: 2.0 is outside {uniform: [0.1, 1.0]}"]
    assert errors(sweep(search={"points_to_evaluate": [{"params": {}}]})) == [
        "search.points_to_evaluate[0].hardening.gamma: required (every searched hyperparameter needs a value)"]


def test_the_fashion_mnist_ini_sweep_searches_gamma_delta_epsilon_over_six_points_or_more():
    cfg = load(DIGITS_INI.parent / "fashion_mnist_ini.yaml")
    assert cfg.victim.dataset == "fashion_mnist" and cfg.victim.hardening.name == "ini"
    assert {"gamma", "delta", "epsilon"} <= set(cfg.victim.hardening.searched) and cfg.num_samples >= 6
    assert [(o.metric, o.mode) for o in cfg.objectives] == [("defended_accuracy", "max"), ("stolen_accuracy", "min")]


def test_heist_trial_on_the_sweep_yaml_runs_its_first_point():
    data = trial_dict(yaml.safe_load(DIGITS_INI.read_text()))
    assert data["victim"]["hardening"]["params"]["gamma"] == 0.3 and data["defense"]["name"] == "dcp"


# ------------------------------------------------------------------------------------------ rejected
def test_recipe_errors_name_the_yaml_path():
    assert errors(sweep(victim={"dataset": "digits", "hardening": {"name": "inni"}}))[0].startswith(
        "victim.hardening.name: unknown hardening recipe 'inni' (did you mean 'ini'?)")
    assert errors(sweep({"gama": [0.1, 0.3]}))[0].startswith(
        "victim.hardening.params.gama: unknown hyperparameter of ini (did you mean 'gamma'?)")
    assert errors(sweep({"gamma": {"uniform": [-1, 1]}, "ood": {"kind": "noise"}})) == [
        "victim.hardening.params.gamma: expected >= 0, got -1.0 (in {uniform: [-1, 1]})"]
    assert errors(sweep({"ood": {"kind": "sound"}, "gamma": [0.1, 0.3]}))[0].startswith(
        "victim.hardening.params.ood.kind: expected one of ['dataset', 'noise'], got 'sound'")
    assert errors(sweep({"gamma": {"unifrom": [0, 1]}}))[0].startswith(
        "victim.hardening.params.gamma: unknown distribution 'unifrom' (did you mean 'uniform'?)")


def test_a_grid_point_that_breaks_a_constraint_between_hyperparameters_is_named():
    (message,) = errors(sweep({"gamma": [0.3, 0.0], "delta": [1.0, 0.0], "epsilon": 0.0, "ood": {"kind": "noise"}},
                              search={"algorithm": "grid"}))
    assert message.startswith("victim.hardening.params.pcgrad: needs at least two active loss terms")
    assert "(at the point {'gamma': 0.0, 'delta': 0.0, 'epsilon': 0.0" in message


def test_grids_and_empty_spaces_count_the_recipe():
    assert errors(sweep(search={"algorithm": "grid"})) == [
        "victim.hardening.params.gamma: a grid needs a list of values, got {uniform: [0.1, 1.0]}"]
    assert errors(sweep({"gamma": 0.3}))[0].startswith(
        "defense.params: empty search space: every hyperparameter of none is fixed")


# ------------------------------------------------------------------------------------- a real sweep
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_each_recipe_point_trains_its_victim_once_and_combines_with_the_output_defense(ray_session, tmp_path):
    data = yaml.safe_load(DIGITS_INI.read_text()) | {
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "victims")}
    data["victim"]["hardening"]["params"]["delta"] = 1.0          # 2 points, not 4: enough for the test
    path = tmp_path / "digits_ini.yaml"
    path.write_text(yaml.safe_dump(data))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(path)]) == 0
    cfg = load(path)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("digits_ini").experiment_id],
                              "tags.`heist.kind` = 'trial'")
    assert sorted(float(r.data.params["victim.hardening.gamma"]) for r in runs) == [0.3, 1.0]
    assert {r.data.params["defense"] for r in runs} == {"dcp"} and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["victim.hardening"] for r in runs} == {"ini"}
    assert sorted(r.info.run_name for r in runs) == ["dcp victim.hardening.gamma=0.3", "dcp victim.hardening.gamma=1"]

    # the first point's victim is trained up front, the second by its trial, and the plain victim of the
    # undefended reference (no hardening, no defense): three entries; every point's victim is a cache hit, so a
    # re-run (its trials call the same load_or_train) trains nothing
    assert len(list((tmp_path / "victims").glob("*/model.pt"))) == 3
    for point in cfg.trial_grid():
        assert load_or_train(cfg.victim.at(point["hardening"]["params"]), cfg.cache_dir).from_cache

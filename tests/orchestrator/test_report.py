"""`heist report`: one defenses × attacks table from several sweeps of one victim, read from a real MLflow store."""
from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.sweep_config import from_dict
from orchestrator.tracking import Tracker
from orchestrator.undefended import Reference, log

ATTACKS = [{"name": "knockoff", "budget": 100}, {"name": "copycat", "budget": 100}]


INI = {"name": "ini", "params": {"gamma": [0.3, 1.0], "ood": {"kind": "noise"}, "epochs": 2}}


def sweep(store, name, defense, victim_seed=0, hardening=None):
    victim = {"seed": victim_seed} | ({"hardening": hardening} if hardening else {})
    return from_dict({"name": name, "defense": defense, "attacks": ATTACKS, "victim": victim,
                      "repeats": 2, "tracking": {"uri": f"sqlite:///{store}/mlflow.db"},
                      "storage": str(store / "runs")})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two sweeps of one victim (DCP, reverse sigmoid), one of InI victims of the same task (searched γ), and one of
    another victim, each with its undefended point."""
    store = tmp_path_factory.mktemp("report")
    undefended = {"defended_accuracy": 0.94, "perturbation_l1": 0.0, "victim_accuracy": 0.94, "stolen_accuracy": 0.80,
                  "stolen_accuracy/knockoff_soft_split": 0.80, "stolen_accuracy/copycat_hard_split": 0.70}
    for name, defense, seed, points, hardening in [
            ("dcp", {"name": "dcp", "params": {"beta": [0.5, 0.9]}}, 0, [("beta", 0.5, 0.93, 0.61), ("beta", 0.9, 0.90, 0.55)], None),
            ("rs", {"name": "reverse_sigmoid", "params": {"beta": [0.1, 1.0]}}, 0, [("beta", 1.0, 0.92, 0.40)], None),
            ("ini", {"name": "none", "params": {}}, 0, [("victim.hardening.gamma", 1.0, 0.91, 0.30)], INI),
            ("other", {"name": "dcp", "params": {"beta": [0.5, 0.9]}}, 1, [("beta", 0.5, 0.50, 0.10)], None)]:
        cfg = sweep(store, name, defense, seed, hardening)
        tracker = Tracker.start(cfg, f"{name}-1", store / "runs" / name)
        log(tracker.uri, tracker.parent_run_id, Reference(undefended, 10, "cache"))
        for i, (key, value, defended, soft) in enumerate(points):
            tracker.log_trial(f"{name}{i}", {"name": defense["name"], "params": {key: value, "gamma": 0.2} | (
                {"victim.hardening": hardening["name"]} if hardening else {})},
                              {"defended_accuracy": defended, "perturbation_l1": 0.1, "stolen_accuracy": 0.65,
                               "stolen_accuracy/knockoff_soft_split": soft,
                               "stolen_accuracy_std/knockoff_soft_split": 0.01,
                               "stolen_accuracy/copycat_hard_split": 0.65,
                               "stolen_accuracy_std/copycat_hard_split": 0.02}, label_keys=[key])
    return store


def test_report_lays_out_defenses_by_attacks_from_several_sweeps(store, tmp_path, capsys):
    uri = f"sqlite:///{store}/mlflow.db"
    assert main(["report", "dcp", "rs", "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("| defense | hyperparameters | defended_accuracy | perturbation_l1 | knockoff_soft_split | "
            "copycat_hard_split | sweep |") in out
    assert "| undefended |  | 0.9400 | 0.0000 | 0.8000 | 0.7000 | dcp-1 |" in out
    assert out.count("| undefended |") == 1                     # the same reference of both sweeps, once
    assert "| dcp | beta=0.9 | 0.9000 | 0.1000 | 0.5500 ± 0.0100 | 0.6500 ± 0.0200 | dcp-1 |" in out
    assert "| reverse_sigmoid | beta=1 | 0.9200 | 0.1000 | 0.4000 ± 0.0100 | 0.6500 ± 0.0200 | rs-1 |" in out
    csv = pd.read_csv(tmp_path / "report.csv")
    assert len(csv) == 4 and set(csv["sweep"]) == {"dcp-1", "rs-1"}
    assert (tmp_path / "report.md").read_text().count("\n| ") == 5
    front = pd.read_csv(tmp_path / "frontier.csv")          # joint frontier: at stolen 0.65 the most accurate wins
    assert list(front["hyperparameters"]) == ["beta=0.5"] and (tmp_path / "frontier.png").stat().st_size > 0


def test_report_refuses_sweeps_of_different_victims(store, capsys):
    assert main(["report", "dcp", "other", "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 2
    assert "attack different victims" in capsys.readouterr().err


def test_report_puts_training_time_defense_sweeps_beside_output_defenses_of_the_same_task(store, capsys):
    uri = f"sqlite:///{store}/mlflow.db"
    assert main(["report", "dcp", "ini", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "| ini | gamma=1 | 0.9100 | 0.1000 | 0.3000 ± 0.0100 | 0.6500 ± 0.0200 | ini-1 |" in out
    assert out.count("| undefended |") == 1                     # InI's reference is the plain victim: the same one
    assert main(["report", "ini", "other", "--tracking-uri", uri]) == 2
    assert "attack different victims" in capsys.readouterr().err

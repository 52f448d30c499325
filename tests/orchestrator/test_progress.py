"""Heist's progress lines (the sweep-level output is checked in test_undefended.py)."""
from orchestrator.progress import duration, objectives_text, point_label


def test_a_finished_trial_shows_its_objectives_as_mean_and_sd():
    metrics = {"defended_accuracy": 0.93871, "stolen_accuracy": 0.77443, "stolen_accuracy_std": 0.0123,
               "stolen_accuracy/knockoff_soft_split": 0.5, "stolen_accuracy_std/knockoff_soft_split": 0.01}
    assert objectives_text(metrics, ["defended_accuracy", "stolen_accuracy"]) == \
        "defended_accuracy 0.9387  stolen_accuracy 0.7744 ± 0.0123"
    assert objectives_text(metrics, ["stolen_accuracy/knockoff_soft_split", "fidelity"]) == \
        "stolen_accuracy/knockoff_soft_split 0.5000 ± 0.0100  fidelity -"


def test_labels_and_durations():
    defense = {"name": "dcp", "params": {"beta": 0.70001, "gamma": 0.2}}
    assert point_label(defense, ["beta"]) == "dcp beta=0.7"
    assert point_label({"name": "none", "params": {}}, []) == "none"
    ini = {"name": "ini", "params": {"gamma": 0.3, "delta": 1.0, "epsilon": 100.0}}
    keys = ["victim.hardening.gamma", "victim.hardening.delta"]
    assert point_label({"name": "none", "params": {}}, keys, ini) == \
        "none victim.hardening.gamma=0.3 victim.hardening.delta=1"     # an InI sweep's points are told apart
    assert [duration(s) for s in (14.24, 185, 3725)] == ["14.2 s", "3 min 05 s", "1 h 02 min"]

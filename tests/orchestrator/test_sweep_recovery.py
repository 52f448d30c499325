"""A sweep whose every trial fails, end to end on real Ray, Optuna and a sqlite MLflow store: tiny digits
trials (a 2-point grid, 100-image attacks, one epoch). Driver kills and a dying tracking server:
tests/deploy/test_sweep_survival.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweep_config import load

pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def tiny_sweep(folder: Path, victim_cache: str, **changes) -> Path:
    data = {
        "name": "recovery",
        "victim": {"dataset": "digits", "train": {"epochs": 5}},
        "defense": {"name": "reverse_sigmoid", "params": {"beta": [0.05, 0.5]}},
        "attacks": [{"name": "knockoff", "budget": 100, "workers": 1, "query_batch": 50, "train": {"epochs": 1}}],
        "service": {"num_cpus": 0.25}, "workers": {"num_cpus": 0.25}, "trial_resources": {"num_cpus": 0.5},
        "search": {"algorithm": "grid", "max_concurrent": 1},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"}, "storage": str(folder / "runs"),
        "cache_dir": victim_cache,
    } | changes
    path = folder / "recovery.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def runs(uri: str) -> tuple[list, list]:
    """(parent runs, complete child runs) in the store."""
    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return ([r for r in found if r.data.tags.get("heist.kind") == "sweep"],
            [r for r in found if r.data.tags.get("heist.kind") == "trial" and r.info.status != "RUNNING"])


def test_a_sweep_whose_every_trial_fails_ends_in_one_line_with_the_first_reason(ray_session, victim_cache,
                                                                                  tmp_path, capfd):
    """The attacker's surrogate dataset cannot be loaded (its data root is a file): each trial fails at run
    time, is logged FAILED with its reason, and the next one still runs."""
    (tmp_path / "not-a-folder").write_text("")
    path = tiny_sweep(tmp_path, victim_cache,
                      victim={"dataset": "digits", "train": {"epochs": 5}, "data_root": str(tmp_path / "not-a-folder")},
                      attacks=[{"name": "knockoff", "budget": 100, "workers": 1, "query_batch": 50,
                                "surrogate": {"kind": "dataset", "name": "kmnist"}}])
    assert main(["run", str(path)]) == 2
    out, err = capfd.readouterr()
    heist_lines = [line for line in err.splitlines() if line.startswith("heist")]
    assert len(heist_lines) == 1 and "Traceback" not in out + err
    assert heist_lines[0].startswith("heist run: error: every trial of sweep recovery-") and \
        "failed; the first: ConfigError: dataset: KMNIST is not under data root" in heist_lines[0]
    (parent,), children = runs(load(path).tracking.uri)
    assert parent.info.status == "FAILED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FAILED"}
    assert all(r.data.tags["heist.error"].startswith("ConfigError: dataset: KMNIST") for r in children)

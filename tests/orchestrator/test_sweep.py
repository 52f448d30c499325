"""Sweeps end to end on a real local Ray, real Optuna and a real MLflow sqlite store, with tiny digits trials."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweep_config import load

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ATTACK = {"name": "knockoff", "budget": 150, "workers": 1, "query_batch": 50, "train": {"epochs": 2}}


def write_sweep(folder: Path, victim_cache: str, **changes) -> Path:
    """A 4-trial digits sweep small enough for two CPUs: 5 victim epochs, 150-image attacks, 2 substitute epochs."""
    data = {
        "name": "tiny",
        "victim": {"dataset": "digits", "train": {"epochs": 5}},
        "defense": {"name": "reverse_sigmoid", "params": {"beta": {"loguniform": [0.05, 1.0]}}},
        "attacks": [ATTACK | {"labels": "soft"}, ATTACK | {"labels": "hard", "budget": 100}],
        "service": {"num_cpus": 0.25, "num_gpus": 0.5},      # two trials share the session's (fake) GPU
        "workers": {"num_cpus": 0.25},
        "trial_resources": {"num_cpus": 0.5},
        "search": {"num_samples": 4, "max_concurrent": 2, "seed": 0},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"},
        "storage": str(folder / "runs"),
        "cache_dir": victim_cache,
    } | changes
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trial_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`heist.kind` = 'trial'") if experiments else []


@pytest.fixture(scope="module")
def finished(ray_session, victim_cache, tmp_path_factory):
    """`heist run` of the 4-trial sweep: (exit code, stdout, sweep config, parent run, child runs)."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, victim_cache)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(path)])
    cfg = load(path)
    client = MlflowClient(cfg.tracking.uri)
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`heist.kind` = 'sweep'")
    return code, out.getvalue(), cfg, parent, trial_runs(cfg.tracking.uri)


def test_a_sweep_runs_every_trial_and_logs_each_as_a_child_run(finished):
    code, _, cfg, parents, children = finished
    assert code == 0 and len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and len({r.data.tags["heist.trial_id"] for r in children}) == 4
    keys = [a.key for a in cfg.attacks]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params.keys() == {"defense", "reverse_sigmoid.beta", "reverse_sigmoid.gamma"}
        assert 0.05 <= float(run.data.params["reverse_sigmoid.beta"]) <= 1.0
        assert set(run.data.metrics) == {
            "victim_accuracy", "defended_accuracy", "perturbation_l1", "perturbation_l1_attacker", "defense_latency_us",
            "stolen_accuracy", "fidelity", "agreement", "relative_accuracy", "victim_training/train_seconds",
            "stolen_accuracy_vs_undefended", "fidelity_vs_undefended",
            *(f"{m}/{k}" for k in keys for m in ("stolen_accuracy", "fidelity", "agreement", "perturbation_l1",
                                                 "queries", "stolen_accuracy_vs_undefended", "fidelity_vs_undefended"))}
        assert run.data.metrics["queries/knockoff_soft_split"] == 150


def test_the_frontier_is_the_non_dominated_set_of_the_child_runs(finished):
    _, out, cfg, parents, children = finished
    points = {r.data.tags["heist.trial_id"]: (r.data.metrics["defended_accuracy"], r.data.metrics["stolen_accuracy"])
              for r in children}
    brute_force = {t for t, (d, s) in points.items()
                   if not any(d2 >= d and s2 <= s and (d2, s2) != (d, s) for d2, s2 in points.values())}
    assert {r.data.tags["heist.trial_id"] for r in children if r.data.tags["pareto"] == "true"} == brute_force
    parent = parents[0].info.run_id
    client = MlflowClient(cfg.tracking.uri)
    csv = client.download_artifacts(parent, "pareto/frontier.csv", str(Path(cfg.storage)))
    frontier = pd.read_csv(csv, dtype={"trial_id": str})
    assert set(frontier["trial_id"]) == brute_force
    for row in frontier.itertuples():      # the attack whose stolen accuracy is the trial's worst case
        metrics = next(r.data.metrics for r in children if r.data.tags["heist.trial_id"] == row.trial_id)
        assert metrics[f"stolen_accuracy/{row.strongest_attack}"] == metrics["stolen_accuracy"]
    assert "hypervolume" in client.get_run(parent).data.metrics
    assert all(f"| {t} | reverse_sigmoid | beta=" in out for t in brute_force)
    assert f"mlflow ui --backend-store-uri {cfg.tracking.uri}" in out


def test_each_trial_keeps_its_query_ledger_as_parquet(finished):
    _, _, cfg, _, children = finished
    run = children[0]
    trial_id = run.data.tags["heist.trial_id"]
    path = MlflowClient(cfg.tracking.uri).download_artifacts(run.info.run_id, f"ledger/{trial_id}.parquet",
                                                            str(Path(cfg.storage)))
    ledger = pd.read_parquet(path)
    assert set(ledger["trial_id"]) == {trial_id} and set(ledger["client_kind"]) == {"benign", "attacker"}
    assert ledger.loc[ledger["attack"] == "knockoff_hard_split", "images"].sum() == 100


def test_optuna_learned_both_objectives_of_every_trial(finished):
    _, out, cfg, parents, _ = finished
    sweep_id = parents[0].data.tags["heist.sweep_id"]
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{cfg.storage}/{sweep_id}/optuna.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)


def test_the_victim_was_trained_once_before_any_trial(finished, victim_cache):
    _, _, cfg, _, children = finished
    model = Path(victim_cache) / cfg.victim.key / "model.pt"
    assert model.stat().st_mtime * 1000 <= min(r.info.start_time for r in children)


def interrupt_after(uri: str, trials: int) -> threading.Thread:
    """Send this process a Ctrl-C (Tune saves its state and stops) once `trials` trials are in MLflow."""
    def watch():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):       # the store may not exist yet
                if len(trial_runs(uri)) >= trials:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_interrupted_sweep_resumes_and_logs_every_trial_exactly_once(ray_session, victim_cache, tmp_path, capsys):
    path = write_sweep(tmp_path, victim_cache, attacks=[ATTACK],
                       defense={"name": "reverse_sigmoid", "params": {"beta": [0.05, 0.2, 0.5, 1.0]}},
                       search={"algorithm": "grid", "max_concurrent": 1})
    uri = load(path).tracking.uri
    watcher = interrupt_after(uri, 2)
    assert main(["run", str(path)]) == 130
    watcher.join()
    out = capsys.readouterr().out
    assert "interrupted after" in out and len(trial_runs(uri)) < 4
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert f"heist resume {sweep_dir}" in out

    assert main(["resume", str(sweep_dir)]) == 0
    runs = trial_runs(uri)
    assert sorted(r.data.tags["heist.trial_id"] for r in runs) == sorted({r.data.tags["heist.trial_id"] for r in runs})
    assert sorted(float(r.data.params["reverse_sigmoid.beta"]) for r in runs) == [0.05, 0.2, 0.5, 1.0]    # each grid point once
    parent = MlflowClient(uri).get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and "hypervolume" in parent.data.metrics


def test_a_bad_sweep_is_rejected_before_anything_is_logged(ray_session, victim_cache, tmp_path, capsys):
    path = write_sweep(tmp_path, victim_cache, attacks=[ATTACK | {"budget": 0}],
                       objectives=[{"metric": "stolen_acc", "mode": "min"}])
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == "heist run: error: attacks[0].budget: expected >= 1, got 0\n"
    path = write_sweep(tmp_path, victim_cache, objectives=[{"metric": "stolen_acc", "mode": "min"}])
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == ("heist run: error: objectives[0].metric: unknown metric 'stolen_acc' "
                                       "(did you mean 'stolen_accuracy'?)\n")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_more_concurrent_trials_than_the_cluster_can_place_is_rejected(ray_session, victim_cache, tmp_path, capsys):
    path = write_sweep(tmp_path, victim_cache, search={"num_samples": 4, "max_concurrent": 3})   # 3 × 1 CPU > 2
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heist run: error: search.max_concurrent: 3 trial(s) at a time need 3 × 1 CPU") and \
        err.endswith("but the cluster has 2 CPU; at most 2 fit\n") and err.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()

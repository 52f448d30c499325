"""MLflow tracking on a real sqlite store: parent and child runs, no trial logged twice, the frontier on the parent."""
from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from mlflow import MlflowClient

from orchestrator import ledger
from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.sweep_config import dump, from_dict
from orchestrator.tracking import Tracker, check_reachable

TRIALS = {  # trial id: (beta, defended_accuracy, stolen_accuracy)
    "t1": (0.5, 0.95, 0.80), "t2": (0.9, 0.93, 0.60), "t3": (0.3, 0.94, 0.85), "t4": (0.7, 0.90, 0.62)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def cfg(store):
    tmp_path = store
    return from_dict({"name": "tracked", "defense": {"name": "dcp", "params": {"beta": {"uniform": [0.3, 1.0]}}},
                      "attacks": [{"name": "knockoff", "budget": 100}],
                      "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": str(tmp_path / "runs")})


@pytest.fixture(scope="module")
def tracker(cfg, store):
    """A sweep's parent run with four logged trials (made once for this module: a new store takes seconds)."""
    tmp_path = store
    tracker = Tracker.start(cfg, "tracked-1", tmp_path / "runs" / "tracked-1")
    for trial_id, (beta, defended, stolen) in TRIALS.items():
        files = {"ledgers": ledger.write([{"client": "w0", "images": 50}], tmp_path / "ledgers" / f"{trial_id}.parquet",
                                         trial_id=trial_id)}
        if trial_id == "t1":     # two repeats of a budget curve at 100 and 200 queries
            files["curves"] = ledger.write([
                {"attack": "knockoff_soft_split", "repeat": r, "checkpoint": c, "queries": c,
                 "stolen_accuracy": acc, "fidelity": acc + 0.05}
                for r, points in enumerate([(0.4, 0.7), (0.6, 0.9)]) for c, acc in zip((100, 200), points)],
                tmp_path / "curves" / "t1.parquet", trial_id=trial_id)
        tracker.log_trial(trial_id, {"name": "dcp", "params": {"beta": beta, "gamma": 0.2}},
                          {"defended_accuracy": defended, "stolen_accuracy": stolen,
                           "stolen_accuracy/knockoff_soft_split": stolen}, files, label_keys=["beta"])
    return tracker


def test_the_parent_run_keeps_the_resolved_yaml_and_the_git_commit(cfg, tracker, store, tmp_path):
    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.run_name == "tracked-1"
    assert parent.data.tags["heist.kind"] == "sweep" and len(parent.data.tags["mlflow.source.git.commit"]) == 40
    assert parent.data.params["search.sampler"] == "tpe"
    assert (store / "mlruns").is_dir()                         # artifacts live beside the sqlite file
    assert tracker.sweep_config() == cfg
    assert client.download_artifacts(tracker.parent_run_id, "sweep.yaml", str(tmp_path)) and \
        (tmp_path / "sweep.yaml").read_text() == dump(cfg)


def test_each_trial_is_a_child_run_with_params_metrics_and_its_ledger(cfg, tracker):
    client = MlflowClient(cfg.tracking.uri)
    runs = tracker.trial_runs()
    assert [r.data.tags["heist.trial_id"] for r in runs] == list(TRIALS)
    child = runs[0]
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert child.info.run_name == "dcp beta=0.5"
    assert child.data.params == {"defense": "dcp", "dcp.beta": "0.5", "dcp.gamma": "0.2"}
    assert {k: v for k, v in child.data.metrics.items() if not k.startswith("curve/")} == {
        "defended_accuracy": 0.95, "stolen_accuracy": 0.8, "stolen_accuracy/knockoff_soft_split": 0.8}
    assert [a.path for a in client.list_artifacts(child.info.run_id, "ledger")] == ["ledger/t1.parquet"]


def test_a_budget_curve_is_logged_as_metric_steps_mean_over_repeats_with_its_plot(cfg, tracker):
    client = MlflowClient(cfg.tracking.uri)
    first, second = tracker.trial_runs()[:2]
    history = client.get_metric_history(first.info.run_id, "curve/stolen_accuracy/knockoff_soft_split")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(100, 0.5), (200, 0.8)]
    fidelity = client.get_metric_history(first.info.run_id, "curve/fidelity/knockoff_soft_split")
    assert sorted((m.step, round(m.value, 6)) for m in fidelity) == [(100, 0.55), (200, 0.85)]
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert {"curves.png", "curves", "ledger"} <= artifacts
    assert not any(k.startswith("curve/") for k in second.data.metrics)


def test_a_trial_is_never_logged_twice(tracker):
    assert tracker.log_trial("t2", {"name": "dcp", "params": {"beta": 0.9}}, {"defended_accuracy": 0.1}, None) is None
    assert len(tracker.trial_runs()) == len(TRIALS)


def test_a_failed_trial_is_logged_as_failed_and_left_off_the_frontier(cfg, store):
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, experiment="failing"))
    tracker = Tracker.start(cfg, "failing-1", store / "runs" / "failing-1")
    tracker.log_trial("ok", {"name": "dcp", "params": {"beta": 0.5}},
                      {"defended_accuracy": 0.9, "stolen_accuracy": 0.5}, None)
    tracker.log_trial("broken", {"name": "dcp", "params": {"beta": 0.7}}, {}, None, failed=True)
    report = tracker.report_frontier(cfg)
    assert [r.info.status for r in tracker.trial_runs()] == ["FINISHED", "FAILED"]
    assert report["table"]["trial_id"].tolist() == ["ok"] and len(report["trials"]) == 2


def test_the_frontier_is_tagged_and_kept_on_the_parent(cfg, tracker):
    client = MlflowClient(cfg.tracking.uri)
    report = tracker.report_frontier(cfg)
    tags = {r.data.tags["heist.trial_id"]: r.data.tags["pareto"] for r in tracker.trial_runs()}
    assert tags == {"t1": "true", "t2": "true", "t3": "false", "t4": "false"}
    assert report["table"]["hyperparameters"].tolist() == ["beta=0.5", "beta=0.9"]
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.metrics["hypervolume"] == pytest.approx(report["hypervolume"])
    assert report["hypervolume"] == pytest.approx(0.95 * 0.2 + 0.93 * 0.2)
    assert sorted(a.path for a in client.list_artifacts(tracker.parent_run_id, "pareto")) == [
        "pareto/frontier.csv", "pareto/frontier.md", "pareto/frontier.png", "pareto/trials.parquet"]


def test_heist_pareto_prints_the_same_frontier_by_experiment_or_run_id(cfg, tracker, capsys):
    uri = cfg.tracking.uri
    assert main(["pareto", "tracked", "--tracking-uri", uri]) == 0
    by_name = capsys.readouterr().out
    assert main(["pareto", tracker.parent_run_id, "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == by_name
    assert "| t1 | dcp | beta=0.5 | 0.9500 | 0.8000 |" in by_name
    assert f"mlflow ui --backend-store-uri {uri}" in by_name
    assert main(["pareto", "nope", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == f"heist pareto: error: no MLflow experiment or run 'nope' in {uri}\n"


def test_an_unreachable_tracking_server_is_one_line_error_before_anything_starts(tmp_path, capsys):
    with socket.socket() as s:                     # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"^MLflow tracking server {uri} is unreachable"):
        check_reachable(uri)
    assert time.monotonic() - start < 5
    assert main(["pareto", "x", "--tracking-uri", uri]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"defense: {{name: dcp, params: {{beta: [0.5, 1]}}}}\ntracking: {{uri: '{uri}'}}\n"
                     f"storage: {tmp_path / 'runs'}\n")
    assert main(["run", str(sweep)]) == 2
    assert capsys.readouterr().err.startswith(f"heist run: error: MLflow tracking server {uri} is unreachable")
    assert not (tmp_path / "runs").exists()


def test_a_store_mlflow_cannot_open_is_an_error():
    with pytest.raises(UserError, match=r"^MLflow tracking store bogus://x is not usable \("):
        check_reachable("bogus://x")

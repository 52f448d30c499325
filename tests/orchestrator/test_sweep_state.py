"""A sweep's own state without a sweep: atomic state files, one-line errors for corrupt ones, writable locations
checked before Ray, bounded tracking calls (a dead server, a hung one and Ctrl-C), runs half-logged by a kill,
and the reconciliation of the Optuna study after the driver died. Real sqlite MLflow stores, real Optuna
studies, real loopback sockets."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweep import RESULTS, STATE_FILE, TrialLog, reconcile_study, records, searcher, write_json
from orchestrator.sweep_config import SearchSpace, as_data, from_dict
from orchestrator.tracking import Tracker

SWEEP = {"name": "state", "defense": {"name": "dcp", "params": {"beta": [0.5, 0.7, 0.9]}},
         "attacks": [{"name": "knockoff", "budget": 100}], "search": {"algorithm": "grid"}}


def config(tmp: Path, **changes):
    return from_dict(SWEEP | {"tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"}, "storage": str(tmp / "runs")}
                     | changes)


def record(trial_id: str, study_trial: int | None = None, status: str = "FINISHED", **metrics) -> dict:
    return {"trial_id": trial_id, "study_trial": study_trial, "status": status, "ended": time.time(),
            "defense": {"name": "dcp", "params": {"beta": 0.5, "gamma": 0.2}}, "error": None,
            "metrics": metrics or {"defended_accuracy": 0.9, "stolen_accuracy": 0.5}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep directory with its state file and MLflow parent run in a sqlite store (made once: seconds)."""
    tmp = tmp_path_factory.mktemp("state")
    cfg = config(tmp)
    sweep_dir = tmp / "runs" / "state-1"
    tracker = Tracker.start(cfg, "state-1", sweep_dir)
    write_json(sweep_dir / STATE_FILE, {"config": as_data(cfg), "tracker": dataclasses.asdict(tracker)})
    return cfg, tracker, sweep_dir


# ------------------------------------------------------------------------------------------ state files
def test_a_state_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "heist.json"
    write_json(path, {"trials": 1})

    def crash(fd):                 # the machine dies after the new text was written, before it was renamed
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_json(path, {"trials": 2})
    assert json.loads(path.read_text()) == {"trials": 1}
    assert [p.name for p in tmp_path.glob("*.json")] == ["heist.json"]


def test_a_corrupt_state_file_or_trial_record_is_one_line(swept, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / STATE_FILE).write_text('{"config": {')
    assert main(["resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"heist resume: error: {broken / STATE_FILE}: corrupt sweep state (") and err.count("\n") == 1
    (broken / STATE_FILE).write_text('["not", "a", "state"]')
    assert main(["sync", str(broken)]) == 2
    assert capsys.readouterr().err == (f"heist sync: error: {broken / STATE_FILE}: corrupt sweep state "
                                       f"(expected a JSON object, got list)\n")

    _, _, sweep_dir = swept
    bad = sweep_dir / RESULTS / "zz-corrupt.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00\x00")
    try:
        assert main(["sync", str(sweep_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"heist sync: error: {bad}: corrupt trial record (") and err.count("\n") == 1
    finally:
        bad.unlink()


def test_unwritable_storage_or_tracking_is_one_line_before_ray_starts(tmp_path, capsys):
    import ray

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for field, changes in (("storage", {"storage": str(blocker / "runs")}),
                           ("tracking.uri", {"tracking": {"uri": f"sqlite:///{blocker}/sub/mlflow.db"}})):
        data = SWEEP | {"tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": str(tmp_path / "runs"),
                        "cache_dir": str(tmp_path / "victims")} | changes
        path = tmp_path / "sweep.yaml"
        path.write_text(json.dumps(data))
        was_up = ray.is_initialized()
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"heist run: error: {field}: cannot write ") and err.count("\n") == 1, err
        assert ray.is_initialized() == was_up
    assert not (tmp_path / "runs").exists() and not (tmp_path / "victims").exists()


# ------------------------------------------------------------------------------------ tracking outages
def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_tracking_server_costs_seconds_and_the_trial_stays_recorded(swept, tmp_path, capsys):
    cfg, _, _ = swept
    uri = f"http://127.0.0.1:{dead_port()}"
    log = TrialLog(cfg, Tracker(uri, "0", "parent", "state-x"), tmp_path)
    start = time.monotonic()
    log.log(record("t-dead"))
    assert time.monotonic() - start < 20             # MLflow's own default retries take minutes
    assert log.offline and "Connection" in log.offline
    err = capsys.readouterr().err
    assert err.startswith(f"heist: warning: MLflow {uri} failed (") and f"heist sync {tmp_path}" in err
    start = time.monotonic()
    log.log(record("t-next"))                         # offline: the next trial does not wait at all
    assert time.monotonic() - start < 0.5


def test_ctrl_c_aborts_a_hung_tracking_call_and_still_reaches_its_handler(swept, tmp_path):
    cfg, _, _ = swept
    with socket.socket() as server:                   # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        log = TrialLog(cfg, Tracker(f"http://127.0.0.1:{server.getsockname()[1]}", "0", "p", "s"), tmp_path)
        received = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        try:
            start = time.monotonic()
            timer.start()
            log.log(record("t-hung"))
            elapsed = time.monotonic() - start
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
    assert elapsed < 5 and log.offline == "interrupted while logging"
    assert received == [signal.SIGINT]               # Tune's handler (here: ours) still stops the sweep


def test_a_run_half_logged_by_a_kill_is_logged_again_exactly_once(swept):
    cfg, tracker, sweep_dir = swept
    client = MlflowClient(cfg.tracking.uri)
    half = client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": tracker.parent_run_id,
                                                           "heist.kind": "trial", "heist.trial_id": "t-half"})
    assert "t-half" not in {r.data.tags["heist.trial_id"] for r in tracker.trial_runs()}
    run_id = tracker.log_trial("t-half", {"name": "dcp", "params": {"beta": 0.7}}, {}, failed=True,
                               error="ConfigError: dataset: nope")
    assert run_id and client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    assert tracker.log_trial("t-half", {"name": "dcp", "params": {"beta": 0.7}}, {}, failed=True) is None
    (logged,) = [r for r in tracker.trial_runs() if r.data.tags["heist.trial_id"] == "t-half"]
    assert logged.info.status == "FAILED" and logged.data.tags["heist.error"] == "ConfigError: dataset: nope"


def test_sync_logs_each_recorded_trial_once(swept, capsys):
    cfg, tracker, sweep_dir = swept
    for r in (record("t-a", 0), record("t-b", 1, "FAILED")):
        write_json(sweep_dir / RESULTS / f"{r['trial_id']}.json", r)
    assert main(["sync", str(sweep_dir)]) == 0 and main(["sync", str(sweep_dir)]) == 0
    assert "interrupted after 2 of 3 trials" in capsys.readouterr().out
    ids = [r.data.tags["heist.trial_id"] for r in tracker.trial_runs()]
    assert ids.count("t-a") == 1 and ids.count("t-b") == 1
    assert MlflowClient(cfg.tracking.uri).get_run(tracker.parent_run_id).info.status == "KILLED"
    assert [r["trial_id"] for r in records(sweep_dir)] == ["t-a", "t-b"]


# ----------------------------------------------------------------------------------- the Optuna study
def test_resume_tells_the_study_what_the_dead_driver_could_not(tmp_path):
    """Three grid points: #0 told, #1 finished but the driver died before telling Optuna, #2 running when it
    died (no record). Reconciling completes #1 with its recorded values, fails #2 and queues its point again
    (once, however often it runs); the next trial asked is that point."""
    cfg = config(tmp_path)
    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    searcher(cfg, sweep_dir, "s", first_run=True)           # creates the study, as a sweep does
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
                              sampler=optuna.samplers.GridSampler(SearchSpace(cfg).grid_space(), seed=0))
    space = SearchSpace(cfg)
    trials = [study.ask() for _ in range(3)]
    points = [space(t)["defense"]["params"]["beta"] for t in trials]
    study.tell(trials[0], [0.9, 0.4])
    done = [record("a", 0, defended_accuracy=0.9, stolen_accuracy=0.4),
            record("b", 1, defended_accuracy=0.8, stolen_accuracy=0.3)]

    assert reconcile_study(cfg, sweep_dir, "s", done) == 1
    assert reconcile_study(cfg, sweep_dir, "s", done) == 0
    states = [(t.state.name, t.values) for t in study.get_trials()]
    assert states[:3] == [("COMPLETE", [0.9, 0.4]), ("COMPLETE", [0.8, 0.3]), ("FAIL", None)]
    assert states[3:] == [("WAITING", None)]
    again = study.ask()
    assert space(again)["defense"]["params"]["beta"] == points[2]
    assert sorted(points) == [0.5, 0.7, 0.9]

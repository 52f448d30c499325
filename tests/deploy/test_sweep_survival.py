"""One tiny sweep survives everything a long sweep meets, in order: its MLflow server dies mid-sweep, it is
stopped with Ctrl-C, SIGKILLed and SIGTERMed by PID, and resumed after each, until every trial is in MLflow
exactly once. The tracking server is a real `mlflow server` on loopback, killed by PID and restarted on the
same port and store; the driver is a real `python -m orchestrator` process on the session's Ray. Tiny
digits trials: a 2-point grid, 100-image attacks, one epoch."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]



# Enough grid points that the sweep is still running when the test stops it (a tiny trial takes seconds).
BETAS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8]

def start_server(kit, spawn, store: Path, port: int):
    argv = [kit.tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
            "--serve-artifacts"]
    tree = spawn(f"mlflow-{time.monotonic_ns()}", argv, env=kit.clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                 cwd=store)
    kit.wait_http(f"http://127.0.0.1:{port}/health", timeout=120, alive=tree.alive)
    return tree


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll `condition` every 50 ms; the moment it held (time.monotonic)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic()
        except Exception:         # a folder not there yet, a study being written
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_sweep_survives_a_dead_tracking_server_and_kills_of_its_driver(kit, spawn, ray_session, victim_cache,
                                                                          tmp_path):
    store, runs_dir = tmp_path / "server", tmp_path / "runs"
    store.mkdir()
    port = kit.free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(kit, spawn, store, port)
    sweep = tmp_path / "survival.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "survival", "victim": {"dataset": "digits", "train": {"epochs": 5}},
        "defense": {"name": "reverse_sigmoid", "params": {"beta": BETAS}},
        "attacks": [{"name": "knockoff", "budget": 100, "workers": 1, "query_batch": 50, "train": {"epochs": 1}}],
        "service": {"num_cpus": 0.25}, "workers": {"num_cpus": 0.25}, "trial_resources": {"num_cpus": 0.5},
        "search": {"algorithm": "grid", "max_concurrent": 1}, "tracking": {"uri": uri},
        "storage": str(runs_dir), "cache_dir": victim_cache}))
    env = kit.clean_env(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    client = MlflowClient(uri)

    def driver(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True), log

    def stop(process: subprocess.Popen, sig: signal.Signals, log: Path) -> tuple[int, float, str]:
        """Send `sig`; (exit code, seconds to exit, output)."""
        sent = time.monotonic()
        process.send_signal(sig)
        try:
            code = process.wait(60)
        finally:
            process.kill()
        return code, time.monotonic() - sent, log.read_text()

    def mlflow_runs() -> tuple[list, list]:
        found = client.search_runs([client.get_experiment_by_name("survival").experiment_id])
        return ([r for r in found if r.data.tags.get("heist.kind") == "sweep"],
                [r for r in found if r.data.tags.get("heist.kind") == "trial"])

    def trial_in_flight() -> bool:
        """The study holds a running trial: one the resumed driver asked for (resume fails every older one)."""
        study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
        return any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False))

    # 1. The server dies once the parent run exists. The first trial's record is kept and the driver warns within
    #    seconds (MLflow's own retries would take minutes); Ctrl-C with the store gone exits within seconds.
    run, log = driver("run", "run", str(sweep))
    try:
        wait_for(lambda: any(runs_dir.glob("*/heist.json")), 180, "the sweep's parent run")
        (sweep_dir,) = runs_dir.iterdir()
        for process in server.members():
            process.kill()
        server.stop()
        recorded = wait_for(lambda: any((sweep_dir / "results").glob("*.json")), 240, "the first trial's record")
        warned = wait_for(lambda: "heist: warning: MLflow" in log.read_text(), 60, "the tracking warning")
        assert warned - recorded < 20, "a tracking call to a dead server took more than seconds"
    finally:
        code, seconds, out = stop(run, signal.SIGINT, log)
    assert code == 130 and seconds < 30, f"exit {code} after {seconds:.0f} s:\n{out[-3000:]}"
    assert f"heist sync {sweep_dir}" in out and f"heist resume {sweep_dir}" in out and "Traceback" not in out

    # 2. The server is back (same port, same store). Resume, SIGKILLed as soon as its trial starts: the first
    #    trial is now in MLflow (resume logged it), the parent is left RUNNING (nothing could mark it).
    server = start_server(kit, spawn, store, port)
    resumed, log = driver("resume-1", "resume", str(sweep_dir))
    try:
        wait_for(lambda: "resuming sweep" in log.read_text(), 120, "the resume to reconcile")
        wait_for(trial_in_flight, 180, "the resumed trial")
    finally:
        resumed.kill()
        resumed.wait(30)
    (parent,), children = mlflow_runs()
    done = len(list((sweep_dir / "results").glob("*.json")))
    assert parent.info.status == "RUNNING" and [r.info.status for r in children] == ["FINISHED"] * done

    # 3. Resume again, SIGTERMed while its trial runs: handled like Ctrl-C, the parent marked KILLED.
    resumed, log = driver("resume-2", "resume", str(sweep_dir))
    try:
        wait_for(lambda: "resuming sweep" in log.read_text(), 120, "the resume to reconcile")
        wait_for(trial_in_flight, 180, "the resumed trial")
        time.sleep(2)                                           # its trial process is starting
    finally:
        code, seconds, out = stop(resumed, signal.SIGTERM, log)
    assert code == 143 and seconds < 30, f"exit {code} after {seconds:.0f} s:\n{out[-3000:]}"
    done = len(list((sweep_dir / "results").glob("*.json")))
    assert f"interrupted after {done} of {len(BETAS)} trials; continue it with:\n  heist resume {sweep_dir}" in out
    assert "Traceback" not in out
    (parent,), children = mlflow_runs()
    assert parent.info.status == "KILLED" and len(children) == done

    # 4. Resume to the end: each grid point in MLflow exactly once, the frontier on the parent.
    assert main(["resume", str(sweep_dir)]) == 0
    (parent,), children = mlflow_runs()
    assert parent.info.status == "FINISHED" and "hypervolume" in parent.data.metrics
    assert sorted(float(r.data.params["reverse_sigmoid.beta"]) for r in children) == BETAS
    assert {r.info.status for r in children} == {"FINISHED"} and len({r.data.tags["heist.trial_id"]
                                                                          for r in children}) == len(BETAS)
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(BETAS) and optuna.trial.TrialState.RUNNING not in states

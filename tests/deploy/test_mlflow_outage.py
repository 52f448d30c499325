"""The MLflow server dies mid-sweep: a real `mlflow server` on loopback is killed (SIGKILL, by PID) once the
sweep's parent run exists. The driver (a real subprocess on the session's Ray) warns within seconds instead of
retrying for minutes, keeps every trial's record in the sweep directory, and Ctrl-C stops it within seconds.
The server is restarted on the same port and store; `heist resume` logs the recorded trial and runs the rest:
every trial in MLflow exactly once, the frontier on the parent."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(480)]


def start_server(kit, spawn, store: Path, port: int):
    argv = [kit.tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
            "--serve-artifacts"]
    tree = spawn(f"mlflow-{time.monotonic_ns()}", argv, env=kit.clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                 cwd=store)
    kit.wait_http(f"http://127.0.0.1:{port}/health", timeout=120, alive=tree.alive)
    return tree


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_dead_tracking_server_costs_no_trial_and_every_trial_is_logged_once_it_is_back(
        kit, spawn, ray_session, victim_cache, tmp_path):
    store = tmp_path / "server"
    store.mkdir()
    port = kit.free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(kit, spawn, store, port)
    sweep = tmp_path / "outage.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "outage", "victim": {"dataset": "digits", "train": {"epochs": 5}},
        "defense": {"name": "reverse_sigmoid", "params": {"beta": [0.05, 0.5]}},
        "attacks": [{"name": "knockoff", "budget": 100, "workers": 1, "query_batch": 50, "train": {"epochs": 1}}],
        "service": {"num_cpus": 0.25}, "workers": {"num_cpus": 0.25}, "trial_resources": {"num_cpus": 0.5},
        "search": {"algorithm": "grid", "max_concurrent": 1}, "tracking": {"uri": uri},
        "storage": str(tmp_path / "runs"), "cache_dir": victim_cache}))
    log = tmp_path / "driver.log"
    env = kit.clean_env(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(sweep)], cwd=REPO, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: any((tmp_path / "runs").glob("*/heist.json")), 180, "the sweep's parent run")
        for process in server.members():                       # the server dies
            process.kill()
        server.stop()
        recorded = wait_for(lambda: any((tmp_path / "runs").glob("*/results/*.json")), 240, "the first trial")
        warned = wait_for(lambda: "heist: warning: MLflow" in log.read_text(), 60, "the tracking warning")
        assert warned - recorded < 20, "a tracking call to a dead server took longer than seconds"
        driver.send_signal(signal.SIGINT)                      # Ctrl-C while the store is gone
        interrupted = time.monotonic()
        code = driver.wait(60)
        stopped_in = time.monotonic() - interrupted
    finally:
        driver.kill()
    out = log.read_text()
    assert code == 130 and stopped_in < 30, f"exit {code} after {stopped_in:.0f} s:\n{out[-3000:]}"
    assert "Traceback" not in out and "heist sync" in out and "heist resume" in out
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert list((sweep_dir / "results").glob("*.json"))       # kept locally while MLflow was gone

    start_server(kit, spawn, store, port)                      # back, on the same port and store
    assert main(["resume", str(sweep_dir)]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    parents = [r for r in runs if r.data.tags.get("heist.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("heist.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and "hypervolume" in parents[0].data.metrics
    assert sorted(float(r.data.params["beta"]) for r in children) == [0.05, 0.5]
    assert {r.info.status for r in children} == {"FINISHED"}

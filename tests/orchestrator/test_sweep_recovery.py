"""Sweeps that die or fail, end to end on real Ray, Optuna and a sqlite MLflow store: the driver is a real
subprocess (on the session's Ray) killed by PID with SIGKILL and SIGTERM at different moments, then resumed;
and a sweep whose every trial fails. Tiny digits trials: a 2-point grid, 100-image attacks, one epoch."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.sweep_config import load

REPO = Path(__file__).resolve().parents[2]
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


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def driver(args: list[str], ray_address: str, log: Path) -> subprocess.Popen:
    """`python -m orchestrator ARGS` as a real process, a driver on the session's Ray cluster."""
    env = os.environ | {"RAY_ADDRESS": ray_address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_a_driver_killed_at_any_moment_loses_no_trial_and_logs_none_twice(ray_session, victim_cache, tmp_path):
    path = tiny_sweep(tmp_path, victim_cache)
    uri, address = load(path).tracking.uri, ray_session.get_runtime_context().gcs_address
    results = lambda: list((tmp_path / "runs").glob("*/results/*.json"))    # noqa: E731

    # 1. SIGKILL the moment the first trial's record is written: before or while the driver logs it to MLflow
    first = driver(["run", str(path)], address, tmp_path / "run.log")
    try:
        wait_for(lambda: results(), 240, "the first trial's record")
        first.kill()
    finally:
        first.kill()
        first.wait(30)
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    (parent,), _ = runs(uri)
    assert parent.info.status == "RUNNING"            # nothing could mark it: `heist resume` will

    # 2. resume, then SIGTERM while its trial runs: handled like Ctrl-C, the parent marked KILLED
    second = driver(["resume", str(sweep_dir)], address, tmp_path / "resume.log")
    try:
        wait_for(lambda: any(p.is_dir() for p in (sweep_dir / "tune" / "attempt-1").iterdir()), 180,
                 "the resumed trial to start")
        second.terminate()
        code = second.wait(90)
    finally:
        second.kill()
    out = (tmp_path / "resume.log").read_text()
    assert code == 143, out[-3000:]
    assert "resuming sweep" in out and f"interrupted after 1 of 2 trials; continue it with:\n  heist resume {sweep_dir}" \
        in out and "Traceback" not in out
    (parent,), children = runs(uri)
    assert parent.info.status == "KILLED"
    assert len(children) == 1                          # the first trial: logged by resume, once

    # 3. resume to the end: every grid point exactly once
    assert main(["resume", str(sweep_dir)]) == 0
    (parent,), children = runs(uri)
    assert parent.info.status == "FINISHED" and "hypervolume" in parent.data.metrics
    assert sorted(float(r.data.params["beta"]) for r in children) == [0.05, 0.5]
    assert len({r.data.tags["heist.trial_id"] for r in children}) == 2
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


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

"""Fixtures for the deployment tests: free loopback ports, and servers started as subprocesses whose
whole process tree is stopped by PID at the end and checked gone.

Every process a test starts gets a unique tag in its environment (HEIST_TEST_PROC_TAG), which its
children inherit (Ray's GCS, raylet, dashboard, workers and job drivers; MLflow's uvicorn workers). A
tree is the union of the leader's descendants and the processes carrying the tag, so processes that Ray
re-parents or moves to their own session are still found — and only processes this test started are
ever signalled. Nothing here runs `ray stop` or matches processes by name.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent              # the venv's bin: ray, mlflow, heist, python
TAG_VAR = "HEIST_TEST_PROC_TAG"
# Variables of the pytest process (tests/conftest.py sets RAY_AUTH_MODE) or of the user's shell that
# must not leak into a server or a client these tests start: each test sets what it means.
LEAKY = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
         "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "RAY_JOB_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """A console script of the venv running the tests (falls back to PATH)."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the variables in LEAKY, the venv's bin first on PATH, plus `extra`.

    RAY_AUTH_MODE defaults to disabled: a local `ray.init()` of Ray >= 2.59 would otherwise turn token
    auth on and write ~/.ray/auth_token, which every later `ray start` on this machine would pick up."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_AUTH_MODE"] = "disabled"
    env.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    env.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update(extra)
    return env


def wait_http(url: str, *, timeout: float, headers: dict | None = None, alive=lambda: True) -> bytes:
    """GET url until it answers 200; raise TimeoutError (or RuntimeError when `alive()` turns false)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server exited before {url} answered")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as r:
                if r.status == 200:
                    return r.read()
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (last error: {last})")


class ProcessTree:
    """A command started in its own session, with a log file, stopped with everything it spawned."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path, cwd: str | Path | None = None):
        self.argv = argv
        self.tag = uuid.uuid4().hex
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, env={**env, TAG_VAR: self.tag}, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def members(self) -> list:
        """Live (non-zombie) processes of this tree, the pytest process excluded."""
        found = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                found[child.pid] = child
        for p in psutil.process_iter():
            if p.pid in found or p.pid in (os.getpid(), self.pid):
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(TAG_VAR) == self.tag:
                    found[p.pid] = p
        live = []
        for p in found.values():
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
        if self.alive():
            with contextlib.suppress(psutil.Error):
                live.append(psutil.Process(self.pid))
        return live

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, grace: float = 30.0) -> list:
        """SIGTERM the leader (`ray start --block` then shuts its node down in order; mlflow its workers),
        then SIGTERM and at last SIGKILL whatever of the tree is left, by PID. Returns the survivors."""
        members = self.members()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            members = [p for p in {p.pid: p for p in members + self.members()}.values() if _running(p)]
            if not members:
                break
            for p in members:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
            psutil.wait_procs(members, timeout=wait_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()
        return [p for p in self.members() if _running(p)]


def _running(p) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(procs) -> str:
    out = []
    for p in procs:
        with contextlib.suppress(Exception):
            out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    return "; ".join(out) or "-"


@pytest.fixture(scope="session")
def kit():
    """This module: its helpers (free_port, clean_env, tool, wait_http, describe, psutil, REPO) for the
    test files, which cannot import a conftest under --import-mode=importlib."""
    return sys.modules[__name__]


@pytest.fixture
def spawn(tmp_path):
    """spawn(name, argv, env=..., cwd=...) -> ProcessTree; any tree still running at teardown is stopped."""
    trees: list[ProcessTree] = []

    def start(name: str, argv: list[str], *, env: dict[str, str], cwd: str | Path | None = None) -> ProcessTree:
        tree = ProcessTree(argv, env=env, log=tmp_path / f"{name}.log", cwd=cwd)
        trees.append(tree)
        return tree

    yield start
    for tree in trees:
        if tree.members():
            tree.stop()


@pytest.fixture
def short_tmp():
    """A short directory under /tmp: Ray's unix sockets live in its temp dir, and paths over ~107 bytes
    break them (pytest's tmp_path is too long). Removed at the end."""
    path = Path(f"/tmp/hd{uuid.uuid4().hex[:8]}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- a test-sized quickstart sweep, and what a finished sweep leaves in MLflow ----------------------------

def tiny_sweep(dest: Path, *, tracking_uri: str, storage: Path, cache_dir: str | None = None,
               name: str = "deploy-tiny", **resources) -> Path:
    """sweeps/quickstart.yaml cut to test size: its two baseline points as the 2 trials, small budgets,
    one worker per attack. `resources` (e.g. service={"num_gpus": 0.5}) update the resource sections."""
    import yaml

    data = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    data["name"] = name
    data["victim"]["train"]["epochs"] = 8
    for attack in data["attacks"]:
        attack.update(budget=100, workers=1, query_batch=50)
        attack["train"]["epochs"] = 3
    data["search"].update(num_samples=2, max_concurrent=1)
    data["tracking"] = {"uri": tracking_uri, "experiment": name}
    data["storage"] = str(storage)
    if cache_dir:
        data["cache_dir"] = cache_dir
    for section, values in resources.items():
        data.setdefault(section, {}).update(values)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def sweep_runs(tracking_uri: str, experiment: str = "deploy-tiny") -> tuple[list, list]:
    """(parent runs, child runs) of the sweeps in `experiment`, read back with the MLflow client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def assert_sweep_runs(tracking_uri: str, n_trials: int, experiment: str = "deploy-tiny") -> None:
    """One finished parent run holding the frontier, and `n_trials` finished child runs under it."""
    parents, children = sweep_runs(tracking_uri, experiment)
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    parent = parents[0]
    assert parent.info.status == "FINISHED", parent.info.status
    assert "hypervolume" in parent.data.metrics
    assert len(children) == n_trials, f"expected {n_trials} child runs, got {len(children)}"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED", child.info.status
        assert {"defended_accuracy", "stolen_accuracy"} <= set(child.data.metrics)
    from mlflow import MlflowClient

    artifacts = {f.path for f in MlflowClient(tracking_uri).list_artifacts(parent.info.run_id, "pareto")}
    assert any(p.endswith(".parquet") for p in artifacts), f"no frontier Parquet on the parent run: {artifacts}"


def heist_run(spawn, name: str, sweep: Path, env: dict[str, str], timeout: float):
    """`python -m orchestrator run sweep` as a subprocess tree; returns (exit code or None on timeout,
    output, lingering): `lingering` lists processes of its local Ray still alive 20 s after it exited
    (ray.shutdown() should have ended them). Whatever is left is then stopped by PID either way."""
    tree = spawn(name, [sys.executable, "-m", "orchestrator", "run", str(sweep)], env=env, cwd=REPO)
    try:
        code = tree.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    deadline = time.monotonic() + 20
    while code is not None and tree.members() and time.monotonic() < deadline:
        time.sleep(0.5)
    lingering = tree.members() if code is not None else []
    leftovers = tree.stop(grace=20)
    return code, tree.output(), lingering + leftovers

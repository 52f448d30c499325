"""A real `mlflow server` on loopback (sqlite backend, proxied artifacts), started with the flags of
deploy/mlflow/mlflow.k8s.yaml: a tiny sweep logs to it over HTTP and the runs are read back with the
MLflow client; the server and all its workers are stopped by PID. Also: `heist run` against a tracking
server that is not there fails in one line, before any trial."""
from __future__ import annotations

import re
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_MANIFEST = REPO / "deploy" / "mlflow" / "mlflow.k8s.yaml"

RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING|DEBUG) \S+\.py:\d+ -- ")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _manifest_allowed_hosts() -> str:
    """The --allowed-hosts value of the Kubernetes MLflow server."""
    for doc in yaml.safe_load_all(K8S_MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "mlflow":
            script = " ".join(doc["spec"]["template"]["spec"]["containers"][0]["args"]).replace("\\\n", " ")
            words = shlex.split(script.replace("${POSTGRES_PASSWORD}", "x"))
            return words[words.index("--allowed-hosts") + 1]
    raise AssertionError("no mlflow Deployment in deploy/mlflow/mlflow.k8s.yaml")


def _start_server(kit, spawn, tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    port = kit.free_port()
    argv = [kit.tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", str(tmp / "artifacts"),
            "--serve-artifacts", "--allowed-hosts", _manifest_allowed_hosts()]
    env = kit.clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    tree = spawn("mlflow-server", argv, env=env, cwd=tmp)
    uri = f"http://127.0.0.1:{port}"
    try:
        kit.wait_http(f"{uri}/health", timeout=120, alive=tree.alive)
    except Exception:
        pytest.fail(f"mlflow server did not come up:\n{tree.output()[-3000:]}")
    return uri, port, tree


def _status(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sweep_logs_to_mlflow_server_over_http(kit, spawn, tmp_path, victim_cache):
    """`heist run` with tracking.uri http://127.0.0.1:<port>: parent and child runs land on the server,
    artifacts go through it (proxied), and the MLflow client reads them back."""
    uri, port, server = _start_server(kit, spawn, tmp_path / "server")

    # The host-header allow-list of the Kubernetes manifest: in-cluster service names pass, others do not.
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search, f"mlflow:{port}") == 200
    assert _status(search, f"mlflow.heist.svc.cluster.local:{port}") == 200
    assert _status(search, f"localhost:{port}") == 200
    assert _status(search, f"attacker.example:{port}") == 403

    sweep = kit.tiny_sweep(tmp_path / "sweep.yaml", tracking_uri=uri, storage=tmp_path / "results",
                           cache_dir=victim_cache)
    code, output, lingering = kit.heist_run(spawn, "heist-run", sweep, kit.clean_env(), timeout=300)
    assert code == 0, f"heist run exited {code}:\n{output[-6000:]}"
    assert not lingering, f"the sweep's local Ray outlived it: {kit.describe(lingering)}"

    kit.assert_sweep_runs(uri, n_trials=2)
    parents, children = kit.sweep_runs(uri)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in parents + children), \
        "artifacts should be proxied by the server"
    stored = {p.name for p in (tmp_path / "server" / "artifacts").rglob("*") if p.is_file()}
    assert "sweep.yaml" in stored and any(n.endswith(".parquet") for n in stored), \
        f"the artifacts did not land in --artifacts-destination: {sorted(stored)}"

    leftovers = server.stop()
    assert not leftovers, f"mlflow server processes left behind: {kit.describe(leftovers)}"


def test_unreachable_tracking_server_fails_in_one_line_before_any_trial(kit, spawn, tmp_path):
    port = kit.free_port()                        # nothing listens there
    uri = f"http://127.0.0.1:{port}"
    storage = tmp_path / "results"
    sweep = kit.tiny_sweep(tmp_path / "sweep.yaml", tracking_uri=uri, storage=storage)
    start = time.monotonic()
    code, output, lingering = kit.heist_run(spawn, "heist-unreachable", sweep, kit.clean_env(), timeout=120)
    elapsed = time.monotonic() - start
    # Ray's own log lines (e.g. "... INFO worker.py:2038 -- Started a local Ray instance.") are not heist's.
    lines = [line for line in output.splitlines() if line.strip() and not RAY_LOG_LINE.match(line)]
    assert code not in (0, None), f"exit code {code}:\n{output[-3000:]}"
    assert len(lines) == 1, f"expected one line, got:\n{output[-3000:]}"
    assert uri in lines[0] and "unreachable" in lines[0].lower(), lines[0]
    assert lines[0].startswith("heist run: error:"), lines[0]
    assert "Traceback" not in output
    assert not storage.exists() or not any(storage.iterdir()), "a trial (or the sweep) started anyway"
    assert not lingering
    assert elapsed < 90, f"took {elapsed:.0f} s to give up"

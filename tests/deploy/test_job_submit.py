"""The cluster path end to end on loopback: a real Ray head with a job server (`ray start --head --block`,
token authentication on, as a cluster user runs it), a tiny quickstart sweep submitted with
`ray job submit --working-dir .`, SUCCEEDED, its parent and child runs in the MLflow store, and the head
stopped by PID with no process of it left.

The head is its own cluster (own ports, own temp dir, own token): the session's `ray_session` fixture and
any other Ray on this machine are never touched, and RAY_ADDRESS / RAY_AUTH_* of the pytest process never
reach the head or the submitter (kit.clean_env).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _generate_token(kit, home: Path) -> str:
    """`ray get-auth-token --generate`, as a cluster admin runs it — with HOME pointed at a temp dir, so
    the shared ~/.ray/auth_token of this machine (which every `ray start` here would pick up) is untouched."""
    real_token_file = Path.home() / ".ray" / "auth_token"
    existed = real_token_file.exists()
    r = subprocess.run([kit.tool("ray"), "get-auth-token", "--generate"], env=kit.clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32 and token in r.stdout
    assert real_token_file.exists() == existed, "the machine's ~/.ray/auth_token was touched"
    return token


def _api(url: str, token: str | None, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start_head(kit, spawn, base: Path, token: str, extra_env: dict[str, str]):
    """A one-node Ray cluster on loopback with the dashboard and job server; returns (dashboard url, tree)."""
    port, dash = kit.free_port(), kit.free_port()
    argv = [kit.tool("ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
            "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(256 * 2**20),
            "--temp-dir", str(base / "r"),
            # every port of its own, so it cannot collide with another Ray on this machine
            "--ray-client-server-port", str(kit.free_port()), "--node-manager-port", str(kit.free_port()),
            "--object-manager-port", str(kit.free_port()), "--runtime-env-agent-port", str(kit.free_port()),
            "--dashboard-agent-listen-port", str(kit.free_port()),
            "--dashboard-agent-grpc-port", str(kit.free_port()), "--metrics-export-port", str(kit.free_port())]
    env = kit.clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
                        # Ray maps 127.0.0.1 to the machine's outward address unless told that this
                        # single node is the whole cluster: then GCS, raylet and workers bind loopback too.
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra_env)
    tree = spawn("ray-head", argv, env=env, cwd=base)
    url = f"http://127.0.0.1:{dash}"
    try:
        kit.wait_http(f"{url}/api/version", timeout=180, headers={"Authorization": f"Bearer {token}"},
                      alive=tree.alive)
    except Exception:
        pytest.fail(f"the Ray head did not come up:\n{tree.output()[-4000:]}")
    return url, tree


def wait_job(url: str, token: str, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    info: dict = {}
    while time.monotonic() < deadline:
        status, body = _api(f"{url}/api/jobs/{job_id}", token)
        if status == 200:
            info = json.loads(body)
            if info.get("status") in TERMINAL:
                return info
        time.sleep(2)
    return info


def job_logs(url: str, token: str, job_id: str) -> str:
    status, body = _api(f"{url}/api/jobs/{job_id}/logs", token)
    return json.loads(body).get("logs", "") if status == 200 else f"<no logs: HTTP {status}>"


def test_ray_job_submit_roundtrip(kit, spawn, short_tmp, tmp_path, victim_cache):
    """Token auth, `ray job submit --working-dir .`, SUCCEEDED, runs in MLflow, GPU fallback, clean stop."""
    token = _generate_token(kit, short_tmp / "home")
    url, head = start_head(kit, spawn, short_tmp, token, {"HEIST_CACHE": victim_cache})

    # Token mode is on: the job API refuses a request without the token.
    assert _api(f"{url}/api/jobs/", None)[0] == 401
    assert _api(f"{url}/api/jobs/", token)[0] == 200

    # The YAML a GPU cluster would get (fractional GPUs for the VictimService and the attacker workers);
    # this head has none, so the sweep must run on CPU and say so once.
    db = tmp_path / "mlflow.db"
    sweep = kit.tiny_sweep(tmp_path / "sweep.yaml", tracking_uri=f"sqlite:///{db}", storage=tmp_path / "results",
                           cache_dir=victim_cache, service={"num_gpus": 0.5}, workers={"num_gpus": 0.25})
    job_id = f"heist-test-{uuid.uuid4().hex[:8]}"
    submitter = kit.clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    r = subprocess.run([kit.tool("ray"), "job", "submit", "--address", url, "--working-dir", ".",
                        "--submission-id", job_id, "--no-wait",
                        "--", "python", "-m", "orchestrator", "run", str(sweep)],
                       cwd=REPO, env=submitter, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"ray job submit failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    info = wait_job(url, token, job_id, timeout=420)
    logs = job_logs(url, token, job_id)
    assert info.get("status") == "SUCCEEDED", f"job ended {info.get('status')}: {info.get('message')}\n{logs[-6000:]}"

    assert re.search(r"existing Ray cluster at address: 127\.0\.0\.1:\d+", logs), \
        "the job's driver should join this head (on loopback), not start a Ray of its own"
    kit.assert_sweep_runs(f"sqlite:///{db}", n_trials=2)
    warnings = [line for line in logs.splitlines() if "no GPUs" in line]
    assert len(warnings) == 1 and "warning" in warnings[0], f"expected one no-GPU warning line, got {warnings}"
    assert "service.num_gpus=0.5" in warnings[0] and "workers.num_gpus=0.25" in warnings[0]

    assert len(head.members()) >= 5, "the head's processes are not being tracked"
    leftovers = head.stop()
    assert not leftovers, f"Ray processes left behind: {kit.describe(leftovers)}"

"""`heist serve` on loopback, attacked from outside: one server process (the real command, connected to the test
session's Ray) for the whole module; each test issues its own keys and records what it sent, and the last test
stops the server with SIGTERM and checks the Parquet ledger equals exactly what the clients sent.

The outside-style client below uses only urllib, json and numpy (no Heist import on its query path).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parents[2]
SENT: dict[str, list[int]] = {}       # client id -> images of each request the server answered, in order
RATE, BURST, MAX_REQUEST = 4.0, 5, 256


# ------------------------------------------------------------------------- an outside client: urllib only
def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON or raw bytes) of one plain HTTP request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, hdrs, data = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, data = e.code, e.headers, e.read()
    if hdrs.get("content-type", "").startswith("application/json"):
        return status, hdrs, json.loads(data)
    return status, hdrs, data


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


class HttpQueryClient:
    """A QueryClient (the interface Heist's attacks use) over plain HTTP: .npy in, .npy out."""

    def __init__(self, url: str, key: str, client_id: str, max_request: int):
        self.url, self.key, self.client_id, self.max_request = url, key, client_id, max_request
        status, _, b = http("GET", f"{url}/v1/budget", headers={"Authorization": f"Bearer {key}"})
        assert status == 200, b
        self.budget, self.used = b["budget"], b["used"]

    def query(self, x: np.ndarray) -> np.ndarray:
        out = []
        for lo in range(0, len(x), self.max_request):
            part = np.ascontiguousarray(x[lo:lo + self.max_request], dtype=np.float32)
            status, _, data = http("POST", f"{self.url}/v1/predict", npy(part),
                                   {"Authorization": f"Bearer {self.key}", "Content-Type": "application/x-npy",
                                    "Accept": "application/x-npy"})
            assert status == 200, data
            SENT.setdefault(self.client_id, []).append(len(part))
            out.append(np.load(io.BytesIO(data), allow_pickle=False))
            self.used += len(part)
        return np.concatenate(out)


# ------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(ray_session, digits_victim, victim_cache, tmp_path_factory):
    """`python -m orchestrator serve` as a subprocess on a free loopback port; stopped (by its PID) at the end."""
    import ray

    tmp = tmp_path_factory.mktemp("serve")
    state = tmp / "state"
    cfg = {"name": "test-serve", "victim": {"dataset": "digits"}, "cache_dir": victim_cache, "state_dir": str(state),
           "service": {"num_cpus": 0.5, "max_request": MAX_REQUEST, "max_queued": 1024, "explanations": True},
           "http": {"port": 0, "rate_limit": RATE, "burst": BURST, "flush_every_s": 0}}
    (tmp / "serve.yaml").write_text(json.dumps(cfg))
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", str(tmp / "serve.yaml")], cwd=tmp,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (state / "server.json").exists():
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            assert time.monotonic() < deadline, "heist serve did not start in 180 s"
            time.sleep(0.2)
        info = json.loads((state / "server.json").read_text())
        info.update(proc=proc, owner=(state / "owner_token").read_text().strip(), state=state, log=tmp / "serve.log")
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def issue(server, client_id: str, budget: int) -> str:
    status, _, body = http("POST", f"{server['url']}/v1/keys", json.dumps({"client_id": client_id, "budget": budget})
                           .encode(), {"Authorization": f"Bearer {server['owner']}", "Content-Type": "application/json"})
    assert status == 201, body
    return body["key"]


def owner_ledger(server) -> dict:
    status, _, body = http("GET", f"{server['url']}/v1/ledger", headers={"Authorization": f"Bearer {server['owner']}"})
    assert status == 200, body
    return body


def budget_of(server, key: str) -> dict:
    status, _, body = http("GET", f"{server['url']}/v1/budget", headers={"Authorization": f"Bearer {key}"})
    assert status == 200, body
    return body


# ------------------------------------------------------------------------- tests
def test_info_says_what_a_client_must_know(server):
    status, _, info = http("GET", f"{server['url']}/v1/info")
    assert status == 200
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10 and info["value_range"] == [0.0, 1.0]
    assert info["max_request"] == MAX_REQUEST and info["defense"] == "none" and info["rate_limit"] == RATE
    status, _, err = http("GET", f"{server['url']}/v1/ledger", headers={"Authorization": "Bearer not-the-owner"})
    assert status == 403 and err["error"]["field"] == "Authorization"


def test_every_error_is_json_naming_the_field_and_changes_nothing(server, digits_victim):
    url, key = server["url"], issue(server, "errors", 40)
    x = digits_victim.data.x_test[:31].numpy()
    auth = {"Authorization": f"Bearer {key}"}
    HttpQueryClient(url, key, "errors", MAX_REQUEST).query(x[:10])       # 10 answered
    time.sleep(1 / RATE * BURST)                                        # a full rate bucket again
    before_budget, before_ledger = budget_of(server, key), owner_ledger(server)["errors"]
    big = np.zeros((MAX_REQUEST + 1, 1, 8, 8), np.float32)
    cases = [  # (status, field, body, headers)
        (401, "Authorization", npy(x[:2]), {"Authorization": "Bearer nope", "Content-Type": "application/x-npy"}),
        (401, "Authorization", npy(x[:2]), {"Content-Type": "application/x-npy"}),
        (402, "x.n", npy(x[:31]), auth | {"Content-Type": "application/x-npy"}),        # 31 > 40 - 10 left
        (400, "body", b"\x93NUMPY garbage", auth | {"Content-Type": "application/x-npy"}),
        (400, "body", npy(np.array([{"a": 1}], dtype=object)), auth | {"Content-Type": "application/x-npy"}),
        (400, "x", json.dumps({"x": [[1, 2], [3]]}).encode(), auth | {"Content-Type": "application/json"}),
        (400, "x.shape", npy(np.zeros((2, 1, 9, 8), np.float32)), auth | {"Content-Type": "application/x-npy"}),
        (400, "x.values", npy(x[:2] + 5), auth | {"Content-Type": "application/x-npy"}),
        (415, "Content-Type", npy(x[:2]), auth | {"Content-Type": "text/plain"}),
        (413, "x.n", npy(big), auth | {"Content-Type": "application/x-npy"}),
        (413, "body", b"[" * (server_limit(server) + 1), auth | {"Content-Type": "application/json"}),
    ]
    for want, field, body, headers in cases:
        time.sleep(1 / RATE)                                            # stay under the rate limit
        status, _, err = http("POST", f"{url}/v1/predict", body, headers)
        got = err["error"]["field"] if isinstance(err, dict) and "error" in err else None
        assert (status, got) == (want, field), (want, field, status, str(err)[:300])
        assert err["error"]["message"] and "value" in err["error"]
        assert budget_of(server, key) == before_budget, f"{want} {field} charged"
    after = owner_ledger(server)["errors"]
    assert (after["images"], after["batches"]) == (before_ledger["images"], before_ledger["batches"])


def server_limit(server) -> int:
    return http("GET", f"{server['url']}/v1/info")[2]["max_body_bytes"]


def test_rate_limit_refuses_with_429_and_charges_nothing(server, digits_victim):
    url, key = server["url"], issue(server, "burst", 100)
    x = npy(digits_victim.data.x_test[:1].numpy())
    statuses = []
    for _ in range(BURST + 4):
        status, headers, body = http("POST", f"{url}/v1/predict", x,
                                     {"Authorization": f"Bearer {key}", "Content-Type": "application/x-npy"})
        statuses.append(status)
        if status == 200:
            SENT.setdefault("burst", []).append(1)
        else:
            assert status == 429 and body["error"]["field"] == "rate" and int(headers["Retry-After"]) >= 1
    assert statuses[:BURST] == [200] * BURST and statuses.count(429) >= 2
    assert budget_of(server, key)["used"] == statuses.count(200)


def test_outside_client_steals_as_well_as_the_same_attack_in_a_trial(server, digits_victim, victim_cache):
    """Knockoff Nets (Heist's own attack code) through plain HTTP vs through `run_trial`, same seed and budget."""
    from orchestrator.config import ServiceConfig, TrialConfig
    from orchestrator.trial import run_trial
    from workloads import metrics as M
    from workloads.attacks import AttackConfig, VictimInfo, steal
    from workloads.data import labelled_surrogate_pool
    from workloads.training import predict_proba

    attack = AttackConfig(name="knockoff", budget=300, seed=3)
    data = digits_victim.data
    pool, _ = labelled_surrogate_pool("split", data, seed=attack.seed)
    client = HttpQueryClient(server["url"], issue(server, "thief", attack.budget), "thief", MAX_REQUEST)
    substitute = steal(attack, client, pool, VictimInfo(data.shape, data.num_classes, "lenet5"))
    over_http = M.accuracy(predict_proba(substitute, data.x_test), data.y_test)
    trial = run_trial(TrialConfig(attacks=[attack], cache_dir=victim_cache, service=ServiceConfig(num_cpus=0.5)))
    assert client.used == attack.budget == sum(SENT["thief"])
    assert over_http > 0.5
    assert abs(over_http - trial.metrics["stolen_accuracy"]) <= 0.01, (over_http, trial.metrics["stolen_accuracy"])


def test_client_refuses_what_the_budget_cannot_cover(server, digits_victim):
    from orchestrator.client import Client, OverBudget

    key = issue(server, "careful", 20)
    x = digits_victim.data.x_test[:30].numpy()
    strict = Client(server["url"], key)
    with pytest.raises(OverBudget) as e:
        strict.predict(x)
    assert e.value.answered is None and strict.remaining() == 20
    partial = Client(server["url"], key, all_or_nothing=False)
    with pytest.raises(OverBudget) as e:
        partial.predict(x)
    SENT["careful"] = [20]
    assert e.value.answered.shape == (20, 10) and partial.remaining() == 0
    np.testing.assert_allclose(e.value.answered, predict(digits_victim, x[:20]), atol=1e-5)


def predict(victim, x):
    import torch

    with torch.inference_mode():
        return torch.softmax(victim.model(torch.from_numpy(x)), 1).numpy()


def test_explanations_are_served_and_charged_per_victim_evaluation(server, digits_victim):
    from orchestrator.client import Client, HeistError

    client = Client(server["url"], issue(server, "explainer", 25))
    x = digits_victim.data.x_test[:2].numpy()
    probs, grads = client.explain(x, mode="full_jacobian")          # K = 10 evaluations per image
    SENT["explainer"] = [20]
    assert probs.shape == (2, 10) and grads.shape == (2, 10, 1, 8, 8) and client.remaining() == 5
    np.testing.assert_allclose(probs, predict(digits_victim, x), atol=1e-5)
    with pytest.raises(HeistError) as e:
        client.explain(x, mode="no-such-mode")
    assert e.value.status == 400 and e.value.field == "mode" and client.remaining() == 5


def test_art_knockoffnets_steals_through_the_adapter(server, digits_victim):
    art = pytest.importorskip("art", reason="the Adversarial Robustness Toolbox is not installed "
                                            "(pip install -e '.[art]')")
    import torch
    from art.attacks.extraction import KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    from orchestrator.art_adapter import blackbox_classifier
    from orchestrator.client import Client
    from workloads import metrics as M
    from workloads.models import build_model

    assert art.__version__
    stolen, key = 300, issue(server, "art", 300)
    victim = blackbox_classifier(Client(server["url"], key))
    data = digits_victim.data
    model = build_model("lenet5", data.shape, 10, seed=1)
    thief = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), data.shape, 10,
                              optimizer=torch.optim.Adam(model.parameters(), lr=2e-3), clip_values=(0.0, 1.0))
    np.random.seed(0)
    attack = KnockoffNets(victim, batch_size_fit=32, batch_size_query=100, nb_epochs=30, nb_stolen=stolen,
                          sampling_strategy="random", use_probability=True, verbose=False)
    stolen_model = attack.extract(data.x_pool.numpy(), thieved_classifier=thief)
    SENT["art"] = [100] * 3
    accuracy = M.accuracy(torch.from_numpy(stolen_model.predict(data.x_test.numpy())), data.y_test)
    assert accuracy > 0.7, accuracy
    assert budget_of(server, key)["used"] == stolen


def test_sigterm_leaves_the_ledger_complete_and_equal_to_what_was_sent(server):
    from orchestrator import ledger

    assert len(SENT) >= 4
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, server["log"].read_text()
    rows = ledger.read(server["ledger_dir"])
    got: dict[str, list[int]] = {}
    for r in sorted(rows, key=lambda r: (r["client"], r["seq"])):
        got.setdefault(r["client"], []).append(r["images"])
    assert got == SENT
    totals = json.loads((server["state"] / "ledger.json").read_text())
    assert {c: t["images"] for c, t in totals.items() if t["images"]} == {c: sum(v) for c, v in SENT.items()}


def test_client_imports_neither_ray_nor_torch():
    code = ("import sys, orchestrator.client, orchestrator.art_adapter; "
            "print(sorted(m for m in ('ray', 'torch', 'workloads') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_serve_config_errors_name_the_field(tmp_path):
    from orchestrator.serve import ServeConfig, _check_state_dir
    from workloads.config import ConfigError, parse

    for data, field in [({"http": {"port": 70000}}, "http.port"), ({"defense": {"name": "pow"}}, "defense.name"),
                        ({"http": {"rate_limit": -1}}, "http.rate_limit"), ({"name": "a/b"}, "name"),
                        ({"victim": {"checkpoint": str(tmp_path / "missing.pt")}}, "victim.checkpoint")]:
        with pytest.raises(ConfigError) as e:
            parse(ServeConfig, data)
        assert len(e.value.errors) == 1 and e.value.errors[0].startswith(f"{field}: "), e.value.errors
    _check_state_dir(tmp_path)
    (tmp_path / "ledger" / "part-000000.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="state_dir: .* holds the ledger of an earlier run"):
        _check_state_dir(tmp_path)

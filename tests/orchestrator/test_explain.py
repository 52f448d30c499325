"""The VictimService's `explain` and the data-free attacks through real Ray actors: exact charging,
autograd-exact explanations, explanations off by default, and defenses on every answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SHAPE = (1, 8, 8)
TINY = {"batch_size": 16, "ngf": 8, "nz": 16}


def cause_message(err: BaseException) -> str:
    return str(getattr(err, "cause", None) or err)


def start(ray, victim, defense=None, **service):
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    spec = VictimSpec("lenet5", SHAPE, 10, config=victim.config)
    actor, owner = service_actor(spec, ray.put(victim.model.state_dict()), defense,
                                 ServiceConfig(max_batch=512, max_wait_ms=2.0, num_cpus=0.5, **service))
    ray.get(actor.ready.remote())
    return actor, owner


@pytest.fixture(scope="module")
def explaining(ray_session, digits_victim):
    from workloads.defenses import DefenseConfig

    actor, owner = start(ray_session, digits_victim, DefenseConfig("reverse_sigmoid", {"beta": 1.0}),
                         explanations=True)
    yield actor, owner
    ray_session.kill(actor)


@pytest.fixture()
def attackers(ray_session):
    from orchestrator.attackers import RayQueryClient, spawn_attackers

    owned = []

    def make(service, prefix, n, budget, query_batch=24):
        service, owner = service
        workers, ids, budgets = spawn_attackers(service, owner, prefix, n, budget, query_batch=query_batch,
                                                num_cpus=0.25)
        owned.extend(workers)
        return RayQueryClient(workers, budgets), ids

    yield make
    for w in owned:
        ray_session.kill(w)


def test_explain_matches_autograd_and_charges_true_cost(ray_session, explaining, attackers, digits_victim):
    from workloads.defenses.reverse_sigmoid import reverse_sigmoid
    from workloads.explanations import ExplainRequest, explain

    ray = ray_session
    client, ids = attackers(explaining, "ex", 2, 10_000)
    explaining, owner = explaining
    x = digits_victim.data.x_test[:40].numpy()
    model = digits_victim.model.eval()
    probs, full = client.explain(x, ExplainRequest("full_jacobian"))
    _, expected = explain(model, torch.from_numpy(x), ExplainRequest("full_jacobian"))
    np.testing.assert_allclose(full, expected.numpy(), rtol=1e-4, atol=1e-6)
    # the output defense applies to the predictions that come with explanations, as to queries
    np.testing.assert_allclose(probs, client.query(x), atol=1e-6)
    clean = torch.softmax(model(torch.from_numpy(x)), 1).detach()
    assert not np.allclose(probs, clean.numpy(), atol=1e-3)
    w = np.random.default_rng(0).normal(size=(40, 10)).astype(np.float32)
    _, vjp = client.explain(x, ExplainRequest("vjp"), w)
    np.testing.assert_allclose(vjp[:, 0], np.einsum("nk,nk...->n...", w, expected.numpy()), rtol=1e-4, atol=1e-5)
    client.explain(x, ExplainRequest("top1", "smoothgrad", samples=5))
    expected_used = 40 * 10 + 40 + 40 + 40 * 5
    assert client.used == expected_used
    ledger = ray.get(explaining.ledger.remote(owner))
    assert sum(ledger[c]["images"] for c in ids) == expected_used
    rows = [r for r in ray.get(explaining.request_log.remote(owner)) if r["client"] in ids]
    assert {r["request"] for r in rows} == {"query", "explain"}
    assert sum(r["images"] for r in rows if r["request"] == "explain") == expected_used - 40
    assert sorted({r["images"] // r["inputs"] for r in rows if r["request"] == "explain"}) == [1, 5, 10]


def test_explanations_are_off_unless_enabled(ray_session, digits_victim):
    from orchestrator.service import InvalidQuery

    ray = ray_session
    actor, owner = start(ray, digits_victim)
    try:
        key = ray.get(actor.register.remote(owner, "c", 100))
        x = digits_victim.data.x_test[:2].numpy()
        with pytest.raises(Exception) as err:
            ray.get(actor.explain.remote(key, x))
        assert isinstance(err.value.cause, InvalidQuery)
        assert "service.explanations" in cause_message(err.value)
        assert ray.get(actor.ledger.remote(owner))["c"]["images"] == 0
    finally:
        ray.kill(actor)


def test_bad_explain_requests_and_budget(ray_session, explaining, digits_victim):
    ray = ray_session
    explaining, owner = explaining
    key = ray.get(explaining.register.remote(owner, "bad", 25))
    x = digits_victim.data.x_test[:3].numpy()
    for kwargs, field in (({"mode": "jacobian"}, "mode: unknown value 'jacobian'"),
                          ({"mode": "vjp"}, "weights: mode 'vjp' needs"),
                          ({"mode": "vjp", "weights": np.zeros((3, 9))}, "weights: expected shape (3, 10)"),
                          ({"explainer": "smoothgrad", "samples": 0}, "samples: expected >= 1")):
        with pytest.raises(Exception) as err:
            ray.get(explaining.explain.remote(key, x, **kwargs))
        assert field in cause_message(err.value)
    with pytest.raises(Exception) as err:      # 3 images x 10 classes = 30 evaluations > 25
        ray.get(explaining.explain.remote(key, x, mode="full_jacobian"))
    assert "30 evaluations" in cause_message(err.value)
    ledger = ray.get(explaining.ledger.remote(owner))["bad"]
    assert ledger["images"] == 0 and ledger["rejected"] == 4 and ledger["refused"] == 1


@pytest.mark.parametrize("name,params", [("dfme", {}), ("megex", {"explanation_mode": "vjp"}),
                                         ("megex", {"explanation_mode": "top1", "explainer": "smoothgrad",
                                                    "samples": 3})])
def test_attack_through_ray_charges_exactly_the_budget(ray_session, explaining, attackers, digits_victim, name, params):
    from workloads.attacks import AttackConfig, VictimInfo, steal

    budget = 500
    cfg = AttackConfig(name=name, budget=budget, params=dict(TINY, **params))
    client, ids = attackers(explaining, f"{name}-{params.get('explainer', '')}", 2, budget)
    steal(cfg, client, None, VictimInfo(SHAPE, 10, "lenet5"))
    ledger = ray_session.get(explaining[0].ledger.remote(explaining[1]))
    assert sum(ledger[c]["images"] for c in ids) == client.used == budget


class Recorder:
    """Passes queries through and keeps every (images, answers) pair the attack received."""

    def __init__(self, client):
        self.client, self.calls = client, []
        self.budget = client.budget

    @property
    def used(self):
        return self.client.used

    def query(self, x):
        answers = self.client.query(x)
        self.calls.append((np.array(x), answers))
        return answers


def test_defense_applies_to_the_generators_zeroth_order_queries(ray_session, attackers, digits_victim):
    """DCP with beta > 1 perturbs every answer; the DFME generator's B(m+1)-image ZO queries must get
    DCP's answers too (the DCP reference lets them through undefended)."""
    from workloads.attacks import AttackConfig, VictimInfo, steal
    from workloads.defenses import DefenseConfig
    from workloads.defenses.dcp import confidence_gated_reverse_sigmoid

    ray = ray_session
    actor, owner = start(ray, digits_victim, DefenseConfig("dcp", {"beta": 1.2}))
    try:
        client, _ = attackers((actor, owner), "dcp", 2, 300)
        recorder = Recorder(client)
        steal(AttackConfig(name="dfme", budget=300, params=TINY), recorder, None, VictimInfo(SHAPE, 10, "lenet5"))
        zo_calls = [(x, a) for x, a in recorder.calls if len(x) == 16 * 2]     # generator steps: B (m + 1)
        assert zo_calls and sum(len(x) for x, _ in recorder.calls) == 300
        model = digits_victim.model.eval()
        for x, answers in zo_calls:
            clean = torch.softmax(model(torch.from_numpy(x)), 1).detach()
            defended = confidence_gated_reverse_sigmoid(clean, 1.2, 0.2, 1000.0)
            np.testing.assert_allclose(answers, defended.numpy(), atol=1e-5)
            assert np.abs(answers - clean.numpy()).sum(1).mean() > 0.05
    finally:
        ray.kill(actor)


def test_trial_config_refuses_megex_without_explanations():
    from orchestrator.config import trial_config
    from workloads.config import ConfigError

    attacks = [{"name": "dfme", "budget": 2000}, {"name": "megex", "budget": 2000}]
    with pytest.raises(ConfigError, match=r"service.explanations: attacks\[1\] \(megex\)"):
        trial_config({"attacks": attacks})
    assert trial_config({"attacks": attacks, "service": {"explanations": True}}).service.explanations

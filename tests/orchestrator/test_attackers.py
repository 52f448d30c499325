"""Attacker workers, the RayQueryClient and the benign client (pure splitting logic, then real Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.attackers import allocate, split_budget

SHAPE = (1, 8, 8)


def test_split_budget_even_and_never_zero():
    assert split_budget(10, 3) == [4, 3, 3]
    assert split_budget(2, 5) == [1, 1]
    assert sum(split_budget(1001, 8)) == 1001


@pytest.mark.parametrize("n,remaining", [(10, [4, 3, 3]), (7, [1, 10, 2]), (5, [0, 5, 0]), (9, [3, 3, 3]), (1, [2, 2])])
def test_allocate_respects_remaining_budgets(n, remaining):
    sizes = allocate(n, remaining)
    assert sum(sizes) == n and all(0 <= s <= r for s, r in zip(sizes, remaining))
    uncapped = [s for s, r in zip(sizes, remaining) if s < r]     # water-filling: as even as the caps allow
    if uncapped:
        assert max(uncapped) - min(uncapped) <= 1
        assert all(s <= max(uncapped) + 1 for s, r in zip(sizes, remaining) if s == r)
    with pytest.raises(ValueError):
        allocate(sum(remaining) + 1, remaining)


@pytest.fixture(scope="module")
def service(ray_session, digits_victim):
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    spec = VictimSpec("lenet5", SHAPE, 10)          # no dataset needed by the `none` defense
    actor, owner = service_actor(spec, ray_session.put(digits_victim.model.state_dict()), None,
                                 ServiceConfig(max_batch=512, max_wait_ms=2.0, num_cpus=0.5))
    ray_session.get(actor.ready.remote())
    yield actor, owner
    ray_session.kill(actor)


def softmax(model, x):
    with torch.inference_mode():
        return torch.softmax(model(torch.as_tensor(x)), 1).numpy()


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_query_client_uneven_queries_use_budget_exactly(ray_session, service, digits_victim):
    from orchestrator.attackers import RayQueryClient, spawn_attackers
    from workloads.attacks import BudgetExceeded

    ray = ray_session
    service, owner = service
    workers, ids, budgets = spawn_attackers(service, owner, "uneven", 3, 100, query_batch=7, max_in_flight=2, num_cpus=0.25)
    try:
        assert budgets == [34, 33, 33]
        client = RayQueryClient(workers, budgets)
        x = torch.rand((100, *SHAPE), generator=torch.Generator().manual_seed(5))
        parts = [client.query(x[:1]), client.query(x[1:6].numpy()), client.query(x[6:61]), client.query(x[61:100])]
        assert [len(p) for p in parts] == [1, 5, 55, 39]
        np.testing.assert_allclose(np.concatenate(parts), softmax(digits_victim.model, x), atol=1e-5)
        assert client.used == client.budget == 100 and client.remaining == [0, 0, 0]
        ledger = ray.get(service.ledger.remote(owner))
        assert [ledger[c]["images"] for c in ids] == budgets
        with pytest.raises(BudgetExceeded):
            client.query(x[:1])
        stats = ray.get([w.stats.remote() for w in workers])
        assert [s["images"] for s in stats] == budgets
    finally:
        for w in workers:
            ray.kill(w)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_benign_client_streams_in_order_with_latencies(ray_session, service, digits_victim):
    from orchestrator.attackers import BenignClient

    ray = ray_session
    service, owner = service
    x = digits_victim.data.x_test.numpy()
    key = ray.get(service.register.remote(owner, "benign-t", len(x), "benign"))
    benign = BenignClient.options(num_cpus=0.25).remote(service, "benign-t", key, 100)
    try:
        probs, latencies = ray.get(benign.run.remote(x))
        np.testing.assert_allclose(probs, softmax(digits_victim.model, x), atol=1e-5)
        assert len(latencies) == -(-len(x) // 100) and all(l > 0 for l in latencies)
        rec = ray.get(service.ledger.remote(owner))["benign-t"]
        assert rec["kind"] == "benign" and rec["images"] == len(x)
    finally:
        ray.kill(benign)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_worker_killed_mid_attack_is_restarted_and_resumes_its_stream(ray_session, digits_victim):
    """Kill one of two workers while its slice is streaming: Ray restarts it and retries its call, the service answers
    the requests it already answered from its record, and the query finishes with every image answered in order and
    charged once (ledger == budget)."""
    import threading
    import time

    from orchestrator.attackers import RayQueryClient, spawn_attackers
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    ray = ray_session
    service, owner = service_actor(VictimSpec("lenet5", SHAPE, 10), ray.put(digits_victim.model.state_dict()), None,
                                   ServiceConfig(max_batch=512, max_wait_ms=15.0, num_cpus=0.25))
    workers, ids, budgets = spawn_attackers(service, owner, "kill", 2, 800, query_batch=8, max_in_flight=2,
                                            num_cpus=0.25, timeout_s=60)
    try:
        client = RayQueryClient(workers, budgets, timeout_s=60)
        x = np.random.default_rng(12).random((800, *SHAPE), dtype=np.float32)
        first = client.query(x[:100])                          # stream 0 completes normally
        out = {}
        thread = threading.Thread(target=lambda: out.update(answers=client.query(x[100:])))
        thread.start()
        deadline = time.time() + 30
        while ray.get(service.ledger.remote(owner))[ids[0]]["images"] < 50 + 80 and time.time() < deadline:
            time.sleep(0.005)
        charged_at_kill = ray.get(service.ledger.remote(owner))[ids[0]]["images"]
        ray.kill(workers[0], no_restart=False)                 # SIGKILL-like: the process dies mid-stream
        thread.join(60)
        assert not thread.is_alive() and "answers" in out
        assert 50 + 80 <= charged_at_kill < 400                # killed after stream 1 began, before it finished

        answers = np.concatenate([first, out["answers"]])
        np.testing.assert_allclose(answers, softmax(digits_victim.model, x), atol=1e-5)   # all, in order
        ledger = ray.get(service.ledger.remote(owner))
        assert [ledger[c]["images"] for c in ids] == budgets == [400, 400]                 # charged once each
        assert ledger[ids[0]]["replayed"] > 0 and ledger[ids[1]]["replayed"] == 0
        log = [r for r in ray.get(service.request_log.remote(owner)) if r["client"] in ids]
        assert sum(r["images"] for r in log) == 800 and len({(r["client"], r["seq"]) for r in log}) == len(log)
        stats = ray.get([w.stats.remote() for w in workers])
        assert [s["restarted"] for s in stats] == [True, False] and [s["images"] for s in stats] == [400, 400]
        assert client.used == client.budget == 800
    finally:
        for actor in [*workers, service]:
            ray.kill(actor)

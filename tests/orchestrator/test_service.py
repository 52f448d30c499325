"""VictimService with real Ray: concurrent clients, ledger, validation, budgets, dynamic batching."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

SHAPE = (1, 8, 8)


def clean_answers(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(np.asarray(x, np.float32))), 1).numpy()


def cause_message(err: BaseException) -> str:
    """The service-side message of an error that crossed Ray (without Ray's traceback header)."""
    return str(getattr(err, "cause", None) or err)


@pytest.fixture(scope="module")
def service(ray_session, digits_victim):
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    spec = VictimSpec("lenet5", SHAPE, 10, config=digits_victim.config)
    cfg = ServiceConfig(max_batch=256, max_wait_ms=5.0, max_request=64, num_cpus=0.5)
    actor = service_actor(spec, ray_session.put(digits_victim.model.state_dict()), None, cfg)
    info = ray_session.get(actor.ready.remote())
    assert info["shape"] == SHAPE and info["device"] == "cpu"
    yield actor
    ray_session.kill(actor)


def test_concurrent_workers_ledger_order_and_batching(ray_session, service, digits_victim):
    from orchestrator.attackers import RayQueryClient, spawn_attackers

    ray = ray_session
    workers, ids, budgets = spawn_attackers(service, "conc", 4, 600, query_batch=16, max_in_flight=3, num_cpus=0.25)
    try:
        assert budgets == [150] * 4
        client = RayQueryClient(workers, budgets)
        x = np.random.default_rng(1).random((600, *SHAPE), dtype=np.float32)   # distinct images, in order
        answers = np.concatenate([client.query(x[:250]), client.query(x[250:351]), client.query(x[351:])])
        assert answers.shape == (600, 10) and client.used == 600
        # every image answered once, in order, with the model's own output for that row
        np.testing.assert_allclose(answers, clean_answers(digits_victim.model, x), rtol=0, atol=1e-5)

        ledger = ray.get(service.ledger.remote())
        assert [ledger[c]["images"] for c in ids] == [150] * 4
        assert sum(ledger[c]["images"] for c in ids) == 600
        log = [r for r in ray.get(service.request_log.remote()) if r["client"] in ids]
        assert sum(r["images"] for r in log) == 600
        for c in ids:   # no request lost or duplicated: each client's seqs are 0..k-1 once each
            seqs = sorted(r["seq"] for r in log if r["client"] == c)
            assert seqs == list(range(len(seqs))) and len(seqs) == ledger[c]["batches"]
            assert ledger[c]["seconds"] > 0 and ledger[c]["refused"] == ledger[c]["rejected"] == 0
        # dynamic batching merged requests of different clients into one forward
        assert max(r["served_batch_images"] for r in log) > 16
        by_batch = {}
        for r in log:
            by_batch.setdefault(r["batch"], set()).add(r["client"])
        assert max(len(c) for c in by_batch.values()) > 1
        assert all(r["queue_ms"] >= 0 and r["compute_ms"] > 0 for r in log)
        stats = ray.get(service.stats.remote())
        assert stats["served_batches"] >= 1 and stats["defense_ms_mean"] >= 0

        # past the budget: refused locally by the client, and by the service for a worker, nothing charged
        from workloads.attacks import BudgetExceeded

        with pytest.raises(BudgetExceeded):
            client.query(x[:1])
        with pytest.raises(BudgetExceeded) as err:
            ray.get(workers[0].query.remote(x[:5]))
        msg = cause_message(err.value)
        assert "'conc/w0'" in msg and "150 used" in msg and "budget 150" in msg
        after = ray.get(service.ledger.remote())
        assert after["conc/w0"]["images"] == 150 and after["conc/w0"]["refused"] == 1
    finally:
        for w in workers:
            ray.kill(w)


def test_budget_refusal_charges_nothing(ray_session, service, digits_victim):
    from workloads.attacks import BudgetExceeded

    ray = ray_session
    ray.get(service.register.remote("budgeted", 50))
    x = np.random.default_rng(2).random((40, *SHAPE), dtype=np.float32)
    ray.get(service.query.remote("budgeted", x))
    with pytest.raises(BudgetExceeded) as err:
        ray.get(service.query.remote("budgeted", x[:20]))
    assert "'budgeted'" in cause_message(err.value) and "40 used" in cause_message(err.value)
    out = ray.get(service.query.remote("budgeted", x[:10]))       # exactly up to the budget is fine
    np.testing.assert_allclose(out, clean_answers(digits_victim.model, x[:10]), atol=1e-5)
    rec = ray.get(service.ledger.remote())["budgeted"]
    assert (rec["images"], rec["batches"], rec["refused"]) == (50, 2, 1)
    with pytest.raises(ValueError, match="not registered"):
        ray.get(service.query.remote("nobody", x[:1]))


def test_bad_batches_rejected_while_good_client_is_served(ray_session, service, digits_victim):
    from orchestrator.attackers import AttackerWorker
    from orchestrator.service import InvalidQuery

    ray = ray_session
    ray.get(service.register.remote("good", 10_000))
    ray.get(service.register.remote("bad", 10_000))
    good = AttackerWorker.options(num_cpus=0.25).remote(service, "good", 8, 1)
    try:
        x_good = np.random.default_rng(3).random((960, *SHAPE), dtype=np.float32)   # 120 sequential requests
        good_ref = good.query.remote(x_good)
        deadline = time.time() + 30
        while ray.get(service.ledger.remote())["good"]["batches"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        barrage_start = time.time()

        ok = np.random.default_rng(4).random((4, *SHAPE), dtype=np.float32)
        nan = ok.copy()
        nan[1, 0, 2, 3] = np.nan
        inf = ok.astype(np.float64)
        inf[2, 0, 0, 0] = np.inf
        cases = {
            "x.values": [nan, inf],
            "x.shape": [np.zeros((4, 1, 9, 9), np.float32), np.zeros((4, 64), np.float32), np.zeros((4, 3, 8, 8), np.float32)],
            "x.dtype": [(ok * 16).astype(np.int64), np.array([[[["a"] * 8] * 8]] * 4)],
            "x.n": [np.zeros((0, *SHAPE), np.float32), np.zeros((65, *SHAPE), np.float32)],
            "x": [ok.tolist()],
        }
        n_bad = 0
        for field, batches in cases.items():
            for bad in batches:
                n_bad += 1
                with pytest.raises(InvalidQuery) as err:
                    ray.get(service.query.remote("bad", bad))
                msg = cause_message(err.value)
                assert f"{field}: " in msg and "'bad'" in msg and "\n" not in msg, msg
        barrage_end = time.time()
        # castable floating dtypes are accepted (float64 -> float32)
        np.testing.assert_allclose(ray.get(service.query.remote("bad", ok.astype(np.float64))),
                                   clean_answers(digits_victim.model, ok), atol=1e-5)

        answers = ray.get(good_ref)
        np.testing.assert_allclose(answers, clean_answers(digits_victim.model, x_good), atol=1e-5)
        ledger = ray.get(service.ledger.remote())
        assert ledger["bad"]["rejected"] == n_bad and ledger["bad"]["images"] == 4
        assert ledger["good"]["images"] == 960 and ledger["good"]["rejected"] == 0
        good_rows = [r for r in ray.get(service.request_log.remote()) if r["client"] == "good"]
        assert len(good_rows) == 120
        # the good client kept being answered while (and after) the bad batches were rejected
        assert any(r["ts"] >= barrage_start for r in good_rows), (barrage_start, barrage_end)
    finally:
        ray.kill(good)


@pytest.mark.parametrize("defense", [{"name": "gaussian", "params": {"sigma": 0.1}},
                                     {"name": "dcp", "params": {"beta": 0.9}}])
def test_defended_answers_to_concurrent_clients_are_the_defense_of_each_row(ray_session, digits_victim, defense):
    """Merged batches from several clients: each answer is the defense applied to that row's clean posterior,
    and the ledger's L1 is the perturbation each client actually received."""
    from orchestrator.attackers import RayQueryClient, spawn_attackers
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor
    from workloads.defenses import DefenseConfig, DefenseContext, build_defense

    ray = ray_session
    cfg = ServiceConfig(max_batch=256, max_wait_ms=20.0, max_request=64, num_cpus=0.5)
    service = service_actor(VictimSpec("lenet5", SHAPE, 10, config=digits_victim.config),
                            ray.put(digits_victim.model.state_dict()), DefenseConfig(**defense), cfg)
    workers, ids, budgets = spawn_attackers(service, "def", 3, 300, query_batch=10, max_in_flight=4, num_cpus=0.25)
    try:
        x = digits_victim.data.x_pool[:300].numpy()
        answers = RayQueryClient(workers, budgets).query(x)
        clean = torch.from_numpy(clean_answers(digits_victim.model, x))
        local = build_defense(DefenseConfig(**defense), DefenseContext(digits_victim.model, digits_victim.data,
                                                                       "lenet5"))
        expected = local(clean, torch.from_numpy(x)).numpy()
        assert np.abs(expected - clean.numpy()).sum(1).mean() > 0.01        # the defense does change answers
        np.testing.assert_allclose(answers, expected, atol=1e-5)
        log = [r for r in ray.get(service.request_log.remote()) if r["client"] in ids]
        assert max(r["served_batch_images"] for r in log) > 10               # requests were merged
        ledger = ray.get(service.ledger.remote())
        assert sum(ledger[c]["l1"] for c in ids) == pytest.approx(np.abs(answers - clean.numpy()).sum(), rel=1e-4)
    finally:
        for actor in [*workers, service]:
            ray.kill(actor)

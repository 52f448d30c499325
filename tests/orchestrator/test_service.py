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
    actor, owner = service_actor(spec, ray_session.put(digits_victim.model.state_dict()), None, cfg)
    info = ray_session.get(actor.ready.remote())
    assert info["shape"] == SHAPE and info["device"] == "cpu" and info["input_range"] == (0.0, 1.0)
    yield actor, owner
    ray_session.kill(actor)


def test_concurrent_workers_ledger_order_and_batching(ray_session, service, digits_victim):
    from orchestrator.attackers import RayQueryClient, spawn_attackers

    ray = ray_session
    service, owner = service
    workers, ids, budgets = spawn_attackers(service, owner, "conc", 4, 600, query_batch=16, max_in_flight=3, num_cpus=0.25)
    try:
        assert budgets == [150] * 4
        client = RayQueryClient(workers, budgets)
        x = np.random.default_rng(1).random((600, *SHAPE), dtype=np.float32)   # distinct images, in order
        answers = np.concatenate([client.query(x[:250]), client.query(x[250:351]), client.query(x[351:])])
        assert answers.shape == (600, 10) and client.used == 600
        # every image answered once, in order, with the model's own output for that row
        np.testing.assert_allclose(answers, clean_answers(digits_victim.model, x), rtol=0, atol=1e-5)

        ledger = ray.get(service.ledger.remote(owner))
        assert [ledger[c]["images"] for c in ids] == [150] * 4
        assert sum(ledger[c]["images"] for c in ids) == 600
        log = [r for r in ray.get(service.request_log.remote(owner)) if r["client"] in ids]
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
        stats = ray.get(service.stats.remote(owner))
        assert stats["served_batches"] >= 1 and stats["defense_ms_mean"] >= 0
        # the compute thread's busy time is the sum of the log's compute times, and it ran on a core part of it
        served = {r["batch"]: r["compute_ms"] for r in ray.get(service.request_log.remote(owner))}
        assert stats["compute_ms"] == pytest.approx(sum(served.values()), rel=1e-6)
        assert 0 < stats["compute_cpu_ms"] <= stats["compute_ms"] * 1.05

        # past the budget: refused locally by the client, and by the service for a worker, nothing charged
        from workloads.attacks import BudgetExceeded

        with pytest.raises(BudgetExceeded):
            client.query(x[:1])
        with pytest.raises(BudgetExceeded) as err:
            ray.get(workers[0].query.remote(x[:5]))
        msg = cause_message(err.value)
        assert "'conc/w0'" in msg and "150 used" in msg and "budget 150" in msg
        after = ray.get(service.ledger.remote(owner))
        assert after["conc/w0"]["images"] == 150 and after["conc/w0"]["refused"] == 1
    finally:
        for w in workers:
            ray.kill(w)


def test_budget_refusal_charges_nothing(ray_session, service, digits_victim):
    from workloads.attacks import BudgetExceeded

    from orchestrator.service import UnknownClient

    ray = ray_session
    service, owner = service
    key = ray.get(service.register.remote(owner, "budgeted", 50))
    x = np.random.default_rng(2).random((40, *SHAPE), dtype=np.float32)
    ray.get(service.query.remote(key, x))
    with pytest.raises(BudgetExceeded) as err:
        ray.get(service.query.remote(key, x[:20]))
    assert "'budgeted'" in cause_message(err.value) and "40 used" in cause_message(err.value)
    out = ray.get(service.query.remote(key, x[:10]))       # exactly up to the budget is fine
    np.testing.assert_allclose(out, clean_answers(digits_victim.model, x[:10]), atol=1e-5)
    assert ray.get(service.usage.remote(key)) == {"client_id": "budgeted", "images": 50, "reserved": 0, "budget": 50}
    rec = ray.get(service.ledger.remote(owner))["budgeted"]
    assert (rec["images"], rec["batches"], rec["refused"]) == (50, 2, 1)
    with pytest.raises(UnknownClient, match="unknown client key"):
        ray.get(service.query.remote("budgeted", x[:1]))       # the client id is not its key


def test_bad_batches_rejected_while_good_client_is_served(ray_session, service, digits_victim):
    from orchestrator.attackers import AttackerWorker
    from orchestrator.service import InvalidQuery

    ray = ray_session
    service, owner = service
    good_key = ray.get(service.register.remote(owner, "good", 10_000))
    bad_key = ray.get(service.register.remote(owner, "bad", 10_000))
    good = AttackerWorker.options(num_cpus=0.25).remote(service, "good", good_key, 8, 1)
    try:
        x_good = np.random.default_rng(3).random((960, *SHAPE), dtype=np.float32)   # 120 sequential requests
        good_ref = good.query.remote(x_good)
        deadline = time.time() + 30
        while ray.get(service.ledger.remote(owner))["good"]["batches"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        barrage_start = time.time()

        ok = np.random.default_rng(4).random((4, *SHAPE), dtype=np.float32)
        nan = ok.copy()
        nan[1, 0, 2, 3] = np.nan
        inf = ok.astype(np.float64)
        inf[2, 0, 0, 0] = np.inf
        above, below = ok.copy(), ok.copy()
        above[3, 0, 7, 7] = 1.0 + 1e-6
        below[0, 0, 0, 0] = -1e-6
        cases = {
            "x.values": [nan, inf, above, below, np.full((4, *SHAPE), 3e38, np.float32)],
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
                    ray.get(service.query.remote(bad_key, bad))
                msg = cause_message(err.value)
                assert f"{field}: " in msg and "'bad'" in msg and "\n" not in msg, msg
        barrage_end = time.time()
        # castable floating dtypes are accepted (float64 -> float32)
        np.testing.assert_allclose(ray.get(service.query.remote(bad_key, ok.astype(np.float64))),
                                   clean_answers(digits_victim.model, ok), atol=1e-5)

        answers = ray.get(good_ref)
        np.testing.assert_allclose(answers, clean_answers(digits_victim.model, x_good), atol=1e-5)
        ledger = ray.get(service.ledger.remote(owner))
        assert ledger["bad"]["rejected"] == n_bad and ledger["bad"]["images"] == 4
        assert ledger["good"]["images"] == 960 and ledger["good"]["rejected"] == 0
        good_rows = [r for r in ray.get(service.request_log.remote(owner)) if r["client"] == "good"]
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
    service, owner = service_actor(VictimSpec("lenet5", SHAPE, 10, config=digits_victim.config),
                                   ray.put(digits_victim.model.state_dict()), DefenseConfig(**defense), cfg)
    workers, ids, budgets = spawn_attackers(service, owner, "def", 3, 300, query_batch=10, max_in_flight=4, num_cpus=0.25)
    try:
        x = digits_victim.data.x_pool[:300].numpy()
        answers = RayQueryClient(workers, budgets).query(x)
        clean = torch.from_numpy(clean_answers(digits_victim.model, x))
        local = build_defense(DefenseConfig(**defense), DefenseContext(digits_victim.model, digits_victim.data,
                                                                       "lenet5"))
        expected = local(clean, torch.from_numpy(x)).numpy()
        assert np.abs(expected - clean.numpy()).sum(1).mean() > 0.01        # the defense does change answers
        np.testing.assert_allclose(answers, expected, atol=1e-5)
        log = [r for r in ray.get(service.request_log.remote(owner)) if r["client"] in ids]
        assert max(r["served_batch_images"] for r in log) > 10               # requests were merged
        ledger = ray.get(service.ledger.remote(owner))
        assert sum(ledger[c]["l1"] for c in ids) == pytest.approx(np.abs(answers - clean.numpy()).sum(), rel=1e-4)
    finally:
        for actor in [*workers, service]:
            ray.kill(actor)


def local_defense(name: str, params: dict, digits_victim):
    from workloads.defenses import DefenseConfig, DefenseContext, build_defense

    return build_defense(DefenseConfig(name, params), DefenseContext(digits_victim.model, None, "lenet5"))


def merged_service(ray, digits_victim, defense, input_range=(0.0, 1.0), **cfg):
    """A service that merges 20 requests of 4 images into one forward (max_batch 80, generous max_wait)."""
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor
    from workloads.defenses import DefenseConfig

    cfg = {"max_batch": 80, "max_wait_ms": 2000.0, "max_request": 64, "num_cpus": 0.25, **cfg}
    actor, owner = service_actor(VictimSpec("lenet5", SHAPE, 10, input_range=input_range),
                                 ray.put(digits_victim.model.state_dict()), DefenseConfig(*defense),
                                 ServiceConfig(**cfg))
    ray.get(actor.ready.remote())
    return actor, owner


def twenty_requests(ray, actor, owner, bad_value: float):
    """19 honest clients and one sending every pixel = bad_value, all in one merged batch; returns
    (honest images, {client: outcome}) where an outcome is the answer or the exception."""
    keys = ray.get([actor.register.remote(owner, f"c{i}", 100) for i in range(20)])
    x = np.random.default_rng(7).random((20, 4, *SHAPE), dtype=np.float32)
    x[7] = bad_value
    refs = [actor.query.remote(k, x[i]) for i, k in enumerate(keys)]
    outcomes = {}
    for i, ref in enumerate(refs):
        try:
            outcomes[f"c{i}"] = ray.get(ref)
        except Exception as e:
            outcomes[f"c{i}"] = e
    return x, keys, outcomes


def test_extreme_pixels_are_rejected_and_the_merged_honest_requests_are_answered(ray_session, digits_victim):
    """The reproduction: a batch of 3e38 pixels among 19 honest requests under `gaussian` (on main all 20 failed)."""
    from orchestrator.service import InvalidQuery

    ray = ray_session
    actor, owner = merged_service(ray, digits_victim, ("gaussian", {"sigma": 0.1}), max_batch=76)
    try:
        x, _, outcomes = twenty_requests(ray, actor, owner, 3e38)
        assert isinstance(outcomes.pop("c7"), InvalidQuery)
        defend = local_defense("gaussian", {"sigma": 0.1}, digits_victim)
        for i, answer in ((int(c[1:]), a) for c, a in outcomes.items()):
            assert isinstance(answer, np.ndarray), answer
            xi = torch.from_numpy(x[i])
            np.testing.assert_allclose(answer, defend(torch.from_numpy(clean_answers(digits_victim.model, x[i])), xi),
                                       atol=1e-5)
        ledger = ray.get(actor.ledger.remote(owner))
        assert ledger["c7"]["rejected"] == 1 and ledger["c7"]["images"] == 0
        assert sum(ledger[c]["images"] for c in outcomes) == 19 * 4
        assert {r["served_batch_images"] for r in ray.get(actor.request_log.remote(owner))} == {76}   # one forward
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("defense", [("gaussian", {"sigma": 0.1}), ("none", {})])
def test_a_request_whose_answer_is_not_finite_fails_alone_and_is_not_charged(ray_session, digits_victim, defense):
    """A victim declared without an input bound: 3e38 pixels pass validation and overflow its logits inside the merged
    batch; the defense stays NaN-safe and row-local, only that request fails, its charge rolled back."""
    from orchestrator.service import VictimFailure

    ray = ray_session
    actor, owner = merged_service(ray, digits_victim, defense, input_range=(-np.inf, np.inf))
    try:
        x, keys, outcomes = twenty_requests(ray, actor, owner, 3e38)
        err = outcomes.pop("c7")
        assert isinstance(err, VictimFailure) and "not finite for 4 image(s)" in cause_message(err), err
        defend = local_defense(*defense, digits_victim)
        for i, answer in ((int(c[1:]), a) for c, a in outcomes.items()):
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_allclose(answer, defend(torch.from_numpy(clean_answers(digits_victim.model, x[i])),
                                                      torch.from_numpy(x[i])), atol=1e-5)
        ledger = ray.get(actor.ledger.remote(owner))
        assert (ledger["c7"]["images"], ledger["c7"]["failed"], ledger["c7"]["batches"]) == (0, 1, 0)
        assert ray.get(actor.usage.remote(keys[7]))["reserved"] == 0       # the whole budget is free again
        assert sum(ledger[c]["images"] for c in outcomes) == 19 * 4
        assert {r["served_batch_images"] for r in ray.get(actor.request_log.remote(owner))} == {80}  # merged with it
    finally:
        ray.kill(actor)


def test_back_pressure_caps_the_images_a_client_has_queued(ray_session, digits_victim):
    from orchestrator.service import Overloaded

    ray = ray_session
    actor, owner = merged_service(ray, digits_victim, ("none", {}), max_batch=64, max_wait_ms=300.0, max_queued=128)
    try:
        key = ray.get(actor.register.remote(owner, "flood", 10**7))
        calm = ray.get(actor.register.remote(owner, "calm", 100))
        x = np.random.default_rng(8).random((32, *SHAPE), dtype=np.float32)
        refs = [actor.query.remote(key, x) for _ in range(30)]          # 960 images at once, cap 128
        calm_answer = ray.get(actor.query.remote(calm, x[:4]))
        answered, throttled = 0, 0
        for ref in refs:
            try:
                np.testing.assert_allclose(ray.get(ref), clean_answers(digits_victim.model, x), atol=1e-5)
                answered += 1
            except Overloaded as e:
                assert "cap of 128 (service.max_queued)" in cause_message(e)
                throttled += 1
        assert answered >= 4 and throttled >= 1 and answered + throttled == 30
        np.testing.assert_allclose(calm_answer, clean_answers(digits_victim.model, x[:4]), atol=1e-5)
        rec = ray.get(actor.ledger.remote(owner))["flood"]
        assert (rec["images"], rec["batches"], rec["throttled"]) == (32 * answered, answered, throttled)
        assert ray.get(actor.usage.remote(key))["reserved"] == 0
    finally:
        ray.kill(actor)


@pytest.mark.timeout(120)
def test_soak_many_clients_many_batches_no_lost_or_duplicated_answers_bounded_memory(ray_session, digits_victim,
                                                                                      tmp_path):
    """24 clients x 40 requests (with request ids, some sent twice) against one service: every request answered
    once with its own answer and charged once; the request log streams to Parquet parts (at most one chunk in
    memory); the record of answers covers each client's current stream only."""
    from orchestrator import ledger as request_logs
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    ray = ray_session
    clients, requests, per, chunk = 24, 40, 4, 50
    actor, owner = service_actor(VictimSpec("lenet5", SHAPE, 10), ray.put(digits_victim.model.state_dict()), None,
                                 ServiceConfig(max_batch=256, max_wait_ms=5.0, max_request=64, num_cpus=0.5,
                                               log_chunk=chunk), log_dir=tmp_path / "log")
    try:
        keys = ray.get([actor.register.remote(owner, f"s{c}", requests * per, "attacker", {"attack": "soak"})
                        for c in range(clients)])
        x = np.random.default_rng(9).random((clients, requests, per, *SHAPE), dtype=np.float32)
        expected = clean_answers(digits_victim.model, x.reshape(-1, *SHAPE)).reshape(clients, requests, per, 10)
        peak_in_memory, answered = 0, 0
        for stream in range(requests // 10):            # each client sends 10 requests per stream, all at once,
            refs = {}                                   # and resends the last one: answered from the record
            for c in range(clients):
                for i in range(10):
                    refs[c, 10 * stream + i] = actor.query.remote(keys[c], x[c, 10 * stream + i], (stream, i))
                refs[c, 10 * stream + 9, "again"] = actor.query.remote(keys[c], x[c, 10 * stream + 9], (stream, 9))
            peak_in_memory = max(peak_in_memory, ray.get(actor.stats.remote(owner))["log_rows_in_memory"])
            for (c, r, *_), answer in zip(refs, ray.get(list(refs.values()), timeout=60)):
                np.testing.assert_allclose(answer, expected[c, r], atol=1e-5)
                answered += 1
        assert answered == clients * (requests + requests // 10)

        ledger = ray.get(actor.ledger.remote(owner))
        for c in range(clients):
            rec = ledger[f"s{c}"]
            assert (rec["images"], rec["batches"], rec["replayed"]) == (requests * per, requests, requests // 10)
        stats = ray.get(actor.stats.remote(owner))
        assert peak_in_memory < chunk and stats["log_rows_in_memory"] < chunk
        assert stats["replies_held"] <= clients * 10                 # only each client's current stream
        ray.get(actor.flush_log.remote(owner))
        rows = request_logs.read(tmp_path / "log")
        assert len(rows) == clients * requests and len(list((tmp_path / "log").glob("part-*.parquet"))) >= 19
        assert len({(row["client"], row["seq"]) for row in rows}) == clients * requests     # none duplicated
        assert {row["attack"] for row in rows} == {"soak"} and sum(row["images"] for row in rows) == x.size // 64
    finally:
        ray.kill(actor)


# ------------------------------------------------------------------ the engine in-process: faults inside the service
def engine(digits_victim, **cfg):
    from orchestrator.admission import new_token
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, _Service

    owner = new_token()
    return _Service(VictimSpec("lenet5", SHAPE, 10), digits_victim.model.state_dict(), None,
                    ServiceConfig(num_cpus=1, **cfg), owner=owner), owner


def test_a_batcher_that_dies_fails_every_request_it_held_and_the_next_request_is_served(digits_victim):
    import asyncio

    from orchestrator.service import VictimFailure

    svc, owner = engine(digits_victim, max_batch=8, max_wait_ms=30_000.0, max_request=8)
    x = np.random.default_rng(10).random((8, *SHAPE), dtype=np.float32)

    async def scenario():
        keys = [await svc.register(owner, f"h{i}", 100) for i in range(3)]
        held = [asyncio.create_task(svc.query(k, x[:2])) for k in keys]     # 6 of 8 images: the batcher waits
        await asyncio.sleep(0.2)
        svc._batcher_task.cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 5)
        answer = await asyncio.wait_for(svc.query(keys[0], x), 10)          # a full batch: served at once
        return outcomes, answer, await svc.ledger(owner)

    outcomes, answer, ledger = asyncio.run(scenario())
    assert all(isinstance(o, VictimFailure) and "batcher stopped" in str(o) for o in outcomes), outcomes
    np.testing.assert_allclose(answer, clean_answers(digits_victim.model, x), atol=1e-5)
    assert [ledger[f"h{i}"]["images"] for i in range(3)] == [8, 0, 0]
    assert [ledger[f"h{i}"]["failed"] for i in range(3)] == [1, 1, 1]


def test_a_merged_batch_whose_compute_raises_is_retried_request_by_request(digits_victim):
    """Fault injection: a defense that raises whenever one client's marked image is in its batch (as a CUDA
    out-of-memory on a large merged batch, or a defense bug on one input, would)."""
    import asyncio

    from orchestrator.service import VictimFailure

    svc, owner = engine(digits_victim, max_batch=20, max_wait_ms=2000.0, max_request=8)
    honest = svc.defense

    def faulty(probs, x):
        if (x[:, 0, 0, 0] == 0.5).any():
            raise RuntimeError("defense broke on a marked image")
        return honest(probs, x)

    svc.defense = faulty
    x = np.random.default_rng(11).random((5, 4, *SHAPE), dtype=np.float32) * 0.4
    x[2, 1, 0, 0, 0] = 0.5

    async def scenario():
        keys = [await svc.register(owner, f"m{i}", 4) for i in range(5)]
        outcomes = await asyncio.wait_for(asyncio.gather(*(svc.query(k, x[i]) for i, k in enumerate(keys)),
                                                         return_exceptions=True), 20)
        return outcomes, await svc.ledger(owner), await svc.stats(owner), svc.log.rows()

    outcomes, ledger, stats, rows = asyncio.run(scenario())
    assert isinstance(outcomes[2], VictimFailure) and "defense broke on a marked image" in str(outcomes[2])
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(outcomes[i], clean_answers(digits_victim.model, x[i]), atol=1e-5)
    assert [ledger[f"m{i}"]["images"] for i in range(5)] == [4, 4, 0, 4, 4] and ledger["m2"]["failed"] == 1
    assert stats["served_batches"] == 4 and {r["served_batch_images"] for r in rows} == {4}   # retried alone


def test_request_ids_answer_resends_from_the_record_and_refuse_misuse(ray_session, service, digits_victim):
    from orchestrator.service import InvalidQuery

    ray = ray_session
    service, owner = service
    key = ray.get(service.register.remote(owner, "ids", 12))
    x = np.random.default_rng(13).random((4, *SHAPE), dtype=np.float32)
    first = ray.get(service.query.remote(key, x, (0, 0)))
    np.testing.assert_array_equal(ray.get(service.query.remote(key, x, (0, 0))), first)     # resent: not charged
    other = x.copy()
    other[2, 0, 5, 5] = 1.0 - other[2, 0, 5, 5]
    for bad_id, images, message in (((0, 0), other, "(0, 0) was already used for other images"),
                                    ((0, -1), x, "request_id: expected (stream, seq)"),
                                    ("0-0", x, "request_id: expected (stream, seq)")):
        with pytest.raises(InvalidQuery, match=message.replace("(", r"\(").replace(")", r"\)")):
            ray.get(service.query.remote(key, images, bad_id))
    ray.get(service.query.remote(key, x, (1, 0)))                 # a new stream forgets the old one's answers
    with pytest.raises(InvalidQuery, match="stream 0 is older than the client's current stream 1"):
        ray.get(service.query.remote(key, x, (0, 0)))
    rec = ray.get(service.ledger.remote(owner))["ids"]
    assert (rec["images"], rec["batches"], rec["replayed"], rec["rejected"]) == (8, 2, 1, 4)

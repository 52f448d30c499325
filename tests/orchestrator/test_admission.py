"""Capabilities and registration on a real VictimService actor: only key-bearing queries reach the model, the owner
token guards registration and ledgers, nothing underscored is callable, `register` rejects bad arguments in one line."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

SHAPE = (1, 8, 8)
PUBLIC = {"ready", "query", "explain", "redeem", "usage", "register", "ledger", "stats", "request_log", "flush_log",
          "reset"}


def cause_message(err: BaseException) -> str:
    return str(getattr(err, "cause", None) or err)


@pytest.fixture(scope="module")
def service(ray_session, digits_victim):
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor

    actor, owner = service_actor(VictimSpec("lenet5", SHAPE, 10), ray_session.put(digits_victim.model.state_dict()),
                                 None, ServiceConfig(max_wait_ms=1.0, num_cpus=0.25))
    ray_session.get(actor.ready.remote())
    yield actor, owner
    ray_session.kill(actor)


def test_the_handle_exposes_only_the_public_methods(ray_session, service):
    actor, _ = service
    exposed = {m for m in dir(actor) if not m.startswith("__")}     # Ray's own: __ray_call__, __ray_terminate__...
    assert exposed == PUBLIC, exposed
    with pytest.raises(AttributeError):
        actor.__init__.remote("a new owner token")                   # listed by Ray, but not callable remotely
    for internal in ("_compute", "_admit", "_charge", "_client", "_serve", "engine", "_Service__init__"):
        with pytest.raises(AttributeError):
            getattr(actor, internal)


def test_only_key_bearing_queries_reach_the_model_and_only_the_owner_registers(ray_session, service):
    from orchestrator.service import NotOwner, UnknownClient

    ray = ray_session
    actor, owner = service
    x = np.random.default_rng(0).random((3, *SHAPE), dtype=np.float32)
    key = ray.get(actor.register.remote(owner, "cap", 10))
    other = ray.get(actor.register.remote(owner, "cap2", np.int64(10)))     # numpy integers are integers
    assert isinstance(key, str) and len(key) >= 40 and key != other and owner not in (key, other)
    assert ray.get(actor.query.remote(key, x)).shape == (3, 10)

    for wrong in ("cap", owner, "", None, key[:-1], 42):          # an id, the owner token, garbage: no model access
        with pytest.raises(UnknownClient):
            ray.get(actor.query.remote(wrong, x))
        with pytest.raises(UnknownClient):
            ray.get(actor.usage.remote(wrong))
    calls = {"register": ("thief", 10**9), "ledger": (), "stats": (), "request_log": (), "flush_log": (), "reset": ()}
    for method, args in calls.items():
        for wrong in (key, None, owner[:-1] + ("A" if owner[-1] != "A" else "B")):   # a client key is not the owner's
            with pytest.raises(NotOwner, match=method):
                ray.get(getattr(actor, method).remote(wrong, *args))
    ledger = ray.get(actor.ledger.remote(owner))
    assert "thief" not in ledger
    assert ledger["cap"]["images"] == 3 and ledger["cap2"]["images"] == 0      # charged to the key's client only
    assert "key" not in ledger["cap"]                                          # the ledger never shows keys


@pytest.mark.parametrize("args, field", [
    (("", 10), "client_id: expected a non-empty string, got ''"),
    (("  ", 10), "client_id: expected a non-empty string"),
    ((3, 10), "client_id: expected a non-empty string, got 3"),
    ((None, 10), "client_id: expected a non-empty string, got None"),
    (("r", -1), "budget: expected an integer >= 0, got -1"),
    (("r", 1.5), "budget: expected an integer >= 0, got 1.5"),
    (("r", True), "budget: expected an integer >= 0, got True"),
    (("r", "10"), "budget: expected an integer >= 0, got '10'"),
    (("r", None), "budget: expected an integer >= 0, got None"),
    (("r", 10, ""), "kind: expected a non-empty string"),
    (("dup", 1), "client_id: 'dup' is already registered"),
])
def test_register_rejects_bad_arguments_in_one_line(ray_session, service, args, field):
    ray = ray_session
    actor, owner = service
    if args[0] == "dup":
        ray.get(actor.register.remote(owner, "dup", 1))
    with pytest.raises(ValueError) as err:
        ray.get(actor.register.remote(owner, *args))
    msg = cause_message(err.value)
    assert msg.startswith("register: ") and field in msg and "\n" not in msg.strip(), msg

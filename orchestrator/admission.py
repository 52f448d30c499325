"""Admission to the VictimService: who may call it (capabilities), what a request may hold (validation), and
what it costs (the per-client ledger). No Ray and no torch here; the service calls these before a request
is queued, so a refused request costs nothing and touches no other client.

Capabilities. The service creator holds an owner token (`new_token()`, given to the service at construction);
`register`, `ledger`, `stats` and `request_log` need it. `register` returns a fresh client key
(`secrets.token_urlsafe`, 256 bits) that the owner hands to that client's worker; `query` needs a key and is
charged to the client the key was issued for. `Clients.resolve(key)` is the one place a key becomes a client.

Idempotent requests. A client may name each request `(stream, seq)`: a request repeated with the id of one
already accepted in the client's current stream is answered from the service's record and not charged
again, so a worker restarted mid-stream can resend its stream from the start. The record keeps the answers
of the client's current stream only (a newer stream id drops the older one's), and one request's images
only until it is answered.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import math
import secrets
from fractions import Fraction
from typing import Any

import numpy as np


class InvalidQuery(ValueError):
    """A query batch failed validation (type, dtype, shape, size, values or request id); nothing was charged."""


class UnknownClient(PermissionError):
    """A call with a client key this service never issued."""


class NotOwner(PermissionError):
    """An owner-only call (register, ledger, stats, request_log) without the service's owner token."""


class Overloaded(RuntimeError):
    """A client already has its cap of images queued (back-pressure); nothing was charged, retry later."""


class VictimFailure(RuntimeError):
    """The victim could not answer this request (its forward or defense failed, or gave non-finite
    posteriors); nothing was charged, other requests are unaffected."""


def new_token() -> str:
    """An unguessable secret (256 bits, URL-safe) for an owner token or a client key."""
    return secrets.token_urlsafe(32)


def check_owner(token: Any, owner: str, method: str) -> None:
    if not (isinstance(token, str) and hmac.compare_digest(token.encode(), owner.encode())):
        raise NotOwner(f"{method}: needs the service's owner token")


def check_registration(client_id: Any, budget: Any, kind: Any) -> tuple[str, int, str]:
    """The validated (client_id, budget, kind) of a `register` call, or a one-line ValueError naming the field."""
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError(f"register: client_id: expected a non-empty string, got {client_id!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"register: budget: expected an integer >= 0, got {budget!r}")
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"register: kind: expected a non-empty string, got {kind!r}")
    return client_id, int(budget), kind


def check_input_range(input_range: Any) -> tuple[float, float]:
    """A victim's declared input range (low, high), low < high (either may be infinite)."""
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range: expected (low, high), got {input_range!r}") from None
    if math.isnan(low) or math.isnan(high) or not low < high:
        raise ValueError(f"input_range: expected low < high, got {input_range!r}")
    return low, high


@dataclasses.dataclass
class ClientRecord:
    """One client's ledger and state inside the service."""

    client_id: str
    budget: int                  # images this client may have answered in total
    kind: str = "attacker"       # "attacker" | "benign" | anything the caller uses to group clients
    tags: dict = dataclasses.field(default_factory=dict)   # constant columns of this client's request-log rows
    images: int = 0              # images answered and charged
    batches: int = 0             # requests answered
    seconds: float = 0.0         # service time of answered requests (queueing + compute)
    reserved: int = 0            # images (victim evaluations) accepted and queued, not yet charged
    queued: int = 0              # input images of this client's queued requests (what back-pressure caps)
    refused: int = 0             # requests refused because of the budget
    rejected: int = 0            # requests rejected by input validation
    throttled: int = 0           # requests refused because the client had its cap of images queued
    failed: int = 0              # requests the victim could not answer (not charged)
    replayed: int = 0            # repeated requests answered from the record (not charged again)
    seq: int = 0                 # number of the next accepted request
    l1_exact: Fraction = Fraction(0)   # Σ over answered images of ‖defended − clean‖₁ (the defense's perturbation),
                                 # summed exactly: the same total whatever order concurrent requests are answered in
    stream: int = -1             # the client's current request stream (see `Request.request_id`)
    replies: dict = dataclasses.field(default_factory=dict)   # seq in the current stream -> its Request
    state: dict = dataclasses.field(default_factory=dict)     # for gates/defenses: PoW tickets, leakage, ...

    @property
    def l1(self) -> float:
        return float(self.l1_exact)

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in
                ("client_id", "kind", "budget", "images", "batches", "seconds", "refused", "rejected", "throttled",
                 "failed", "replayed", "l1")}


@dataclasses.dataclass
class Request:
    """One accepted client batch on its way through the batcher. `x` is dropped once it is answered."""

    client: ClientRecord
    seq: int
    x: np.ndarray | None
    n: int                       # input images
    cost: int                    # images charged: n for a query, n x the evaluations per image for an explanation
    future: asyncio.Future
    t_submit: float
    request_id: tuple[int, int] | None = None
    fingerprint: bytes = b""
    explain: Any = None          # (ExplainRequest, weights) for an explanation request; None for a query


class Clients:
    """The registered clients: by key (to serve them) and by id (for the owner's ledger)."""

    def __init__(self):
        self._by_key: dict[str, ClientRecord] = {}
        self.by_id: dict[str, ClientRecord] = {}

    def register(self, client_id: Any, budget: Any, kind: Any = "attacker", tags: dict | None = None) -> str:
        client_id, budget, kind = check_registration(client_id, budget, kind)
        if client_id in self.by_id:
            raise ValueError(f"register: client_id: {client_id!r} is already registered")
        if tags is not None and not isinstance(tags, dict):
            raise ValueError(f"register: tags: expected a mapping, got {type(tags).__name__}")
        key = new_token()
        self._by_key[key] = self.by_id[client_id] = ClientRecord(client_id, budget, kind, dict(tags or {}))
        return key

    def resolve(self, key: Any) -> ClientRecord:
        record = self._by_key.get(key) if isinstance(key, str) else None
        if record is None:
            raise UnknownClient("unknown client key: not issued by this service (register returns one)")
        return record


def validate(rec: ClientRecord, x: Any, shape: tuple[int, ...], input_range: tuple[float, float],
             max_request: int) -> np.ndarray:
    """x as a float32 (n, *shape) array of finite values inside the victim's input range, 1 <= n <= max_request;
    else InvalidQuery naming the field (counted in `rec.rejected`)."""
    def bad(field: str, msg: str):
        rec.rejected += 1
        return InvalidQuery(f"client {rec.client_id!r}: {field}: {msg}")

    if not isinstance(x, np.ndarray):
        raise bad("x", f"expected a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise bad("x.dtype", f"expected a floating-point array (float32), got {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise bad("x.shape", f"expected (n, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    n = len(x)
    if not 1 <= n <= max_request:
        raise bad("x.n", f"expected 1..{max_request} images per request, got {n}")
    low, high = input_range
    lo_value, hi_value = float(x.min()), float(x.max())      # NaN in x makes both NaN: one pass each
    if math.isfinite(lo_value) and math.isfinite(hi_value) and low <= lo_value and hi_value <= high:
        return x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(n, -1).all(1))
        raise bad("x.values", f"{int((~finite).sum())} non-finite values (NaN/inf) in {len(rows)} image(s), "
                              f"first at image {int(rows[0])}")
    if lo_value < low or hi_value > high:
        outside = (x < low) | (x > high)
        rows = np.flatnonzero(outside.reshape(n, -1).any(1))
        first = x[rows[0]][outside[rows[0]]][0]
        raise bad("x.values", f"{int(outside.sum())} values outside the victim's input range [{low:g}, {high:g}] "
                              f"in {len(rows)} image(s), first at image {int(rows[0])} ({float(first):g})")
    return x.astype(np.float32, copy=False)


def check_request_id(rec: ClientRecord, request_id: Any) -> tuple[int, int] | None:
    """`request_id` as (stream, seq) of non-negative ints, stream not older than the client's current one."""
    if request_id is None:
        return None
    if (not isinstance(request_id, (tuple, list)) or len(request_id) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in request_id)):
        rec.rejected += 1
        raise InvalidQuery(f"client {rec.client_id!r}: request_id: expected (stream, seq), two integers >= 0, "
                           f"got {request_id!r}")
    stream, seq = int(request_id[0]), int(request_id[1])
    if stream < rec.stream:
        rec.rejected += 1
        raise InvalidQuery(f"client {rec.client_id!r}: request_id: stream {stream} is older than the client's "
                           f"current stream {rec.stream}")
    return stream, seq


def fingerprint(x: np.ndarray) -> bytes:
    """A cheap fingerprint of a batch (every 16th value and the sum of all): guards against a client reusing a
    request id for other images by mistake. For 256 CIFAR-shaped images it takes 0.6 ms, a full blake2b 3.7 ms,
    their LeNet forward 23 ms (one thread, this machine)."""
    flat = x.reshape(len(x), -1)
    return hashlib.blake2b(flat[:, ::16].tobytes() + np.float64(flat.sum(dtype=np.float64)).tobytes(),
                           digest_size=16).digest()


def replay(rec: ClientRecord, request_id: tuple[int, int] | None, x: np.ndarray) -> Request | None:
    """The accepted request a repeated `request_id` names (answered from the record, not charged again), or None.
    A newer stream replaces the client's record of the older one."""
    if request_id is None:
        return None
    stream, seq = request_id
    if stream > rec.stream:
        rec.stream, rec.replies = stream, {}
    request = rec.replies.get(seq)
    if request is None:
        return None
    if request.n != len(x) or request.fingerprint != fingerprint(x):
        rec.rejected += 1
        raise InvalidQuery(f"client {rec.client_id!r}: request_id: {request_id} was already used for other images")
    rec.replayed += 1
    return request


def reserve(rec: ClientRecord, n: int, cost: int, max_queued: int, what: str) -> None:
    """Hold `cost` images of the client's budget for a queued request of n input images (`what` names it);
    BudgetExceeded, or Overloaded when the client already has `max_queued` input images queued."""
    from workloads.attacks import BudgetExceeded

    used = rec.images + rec.reserved
    if used + cost > rec.budget:
        rec.refused += 1
        raise BudgetExceeded(f"client {rec.client_id!r}: {what} exceeds its budget "
                             f"({used} used, budget {rec.budget}); nothing was charged")
    if rec.queued + n > max_queued:
        rec.throttled += 1
        raise Overloaded(f"client {rec.client_id!r}: {rec.queued} images already queued, {what} would pass "
                         f"the cap of {max_queued} (service.max_queued); nothing was charged, retry after answers arrive")
    rec.reserved += cost
    rec.queued += n

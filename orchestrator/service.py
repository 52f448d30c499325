"""VictimService: the defended victim behind a query API, as a Ray async actor.

One service per trial holds the victim model (on CUDA when the actor was given a GPU) and its output
defense. Clients (attacker workers, the benign client) send batches of images; the service

1. resolves the caller's client key (`orchestrator.admission`: capabilities) and validates each batch
   *before* it is queued (dtype, exact (C, H, W) shape, 1..max_request images, finite values inside the
   victim's declared input range) — a bad one gets a one-line `InvalidQuery` naming the field, nothing is
   charged and other clients' requests are untouched;
2. answers a repeated request id from its record (a restarted worker resends its stream), else checks the
   client's image budget (`BudgetExceeded`) and its cap of queued images (`Overloaded`, back-pressure) —
   nothing is charged for a refused batch;
3. queues the batch; one batcher task concatenates queued requests up to `max_batch` images or
   `max_wait_ms`, runs ONE forward pass + defense for all of them (in a compute thread, so the event
   loop keeps accepting requests meanwhile; the next batch is handed to the thread before the previous one's
   answers are sent, so the thread never waits for the event loop) and splits the answer back. If that compute raises, each of
   its requests is retried alone, so only the request that causes a failure fails; a request whose
   answer is not finite fails alone (`VictimFailure`, not charged). If the batcher itself dies, every
   request it held fails at once and the next request starts a new batcher;
4. charges the client (images, requests, seconds) when its answer is computed and appends a row to the
   request log (streamed to Parquet parts when the service was given a `log_dir`);
5. hands the answer to the `Gate`, which decides when (and whether) it is released.

The Ray actor `VictimService` exposes only its public methods and keeps the engine (`_Service`) in an
attribute, so nothing underscored is callable through the handle: `ready()` (the interface: shape, classes,
input range, request limits) for anyone; `query(key, x, request_id)`, `explain(key, x, ...)` and `usage(key)`
for a registered client;
`register`, `ledger`, `stats`, `request_log`, `flush_log` and `reset` (serve the next trial of the same victim
with another defense, as a fresh service: see `TrialActors` in trial.py) for the owner (the token
`service_actor` returns). Per-client state lives in the engine (`ClientRecord`, one per client) so later additions plug in
without rewrites:

* a proof-of-work gate (orchestrator/pow_gate.py): a `Gate` whose `release` answers with a challenge
  instead of the posteriors, keeps the computed answer in `record.state` and releases it from
  `redeem(key, ticket, stamp)` once the stamp verifies; its difficulty follows a leakage estimate also
  kept in `record.state`. Clients treat a `Challenge` reply by minting a stamp and redeeming it.
* `explain(key, x, mode, weights, explainer, samples, sigma, request_id)`: gradient explanations of the
  victim (workloads.explanations), off unless `service.explanations` is true. It resolves the client with
  `_client(key)` and validates, admits and charges through the same `_validate` / `_admit` / `_charge`
  path, records and ledger as `query`; an explanation is charged its victim evaluations
  (`ExplainRequest.cost`: K per image for a full Jacobian, n per image for SmoothGrad). The batcher serves
  queries and explanations from the same queue: queries in one forward, explanation requests with the same
  settings in one batched gradient computation, both in the compute thread. The output defense applies to
  the prediction that comes with every explanation; `service.explanation_noise` adds Gaussian noise to the
  explanations (a defense knob of its own). Log rows carry `request` ("query" / "explain") and `inputs`
  (images sent; `images` is what was charged).
Each new entry point needs its one-line delegating method on the `VictimService` actor.

Timing: for every served (forward) batch the service measures the clean cost (forward + softmax) and
the defended cost (+ defense), so the added serving latency per image (`defense_latency_us`) is the
total defense time over the images served (`stats()["defense_us_per_image"]`), whatever the batching.
The perturbation ‖defended − clean‖₁ of every answered image is summed per client (`l1` in the ledger),
so how much a defense moves the attacker's own queries is measured, not only the test set's.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import ray

from orchestrator import admission
from orchestrator.admission import (ClientRecord, InvalidQuery, NotOwner, Overloaded, Request, UnknownClient,
                                    VictimFailure)
from orchestrator.ledger import RequestLog

CPU_FORWARD_BATCH = 256  # a CPU forward of 2048 LeNet images runs at half the speed of 256 (heist bench)
# The GIL hand-over interval of the service's process (Python's default is 5 ms). The compute thread gives the
# GIL up inside every torch op and must get it back for the next one; while the event loop thread runs Python
# (receiving, validating and answering requests) each hand-back waited up to 5 ms, which held the compute
# thread at ~0.6x the raw forward with client batches of 16 (docs/performance.md).
SWITCH_INTERVAL_S = 2e-4
# Served batches in flight: one computing, the next already handed to the compute thread, so it never waits for
# the event loop to answer the previous batch's requests and collect the next one.
PIPELINE_DEPTH = 2

__all__ = ["ClientRecord", "Gate", "InvalidQuery", "NotOwner", "OpenGate", "Overloaded", "Request", "UnknownClient",
           "VictimFailure", "VictimService", "VictimSpec", "service_actor"]


class Gate(Protocol):
    """Decides when a computed answer is released to its client.

    `release` is awaited after the answer was computed and charged; whatever it returns is the reply to
    the client's `query` call. It may use and update `record.state`.
    """

    async def release(self, record: ClientRecord, request: Request, answer: np.ndarray) -> Any: ...

    # Optional: `bind(service)`, called once when the service starts (e.g. to use its model and device);
    # `redeem(record, ticket, stamp)`, which the service's `redeem` calls for a gate that answers with
    # challenges. Per-client totals a gate keeps in `record.state["ledger"]` appear in `ledger()`.


class OpenGate:
    """Releases every answer at once (no proof of work)."""

    async def release(self, record: ClientRecord, request: Request, answer: np.ndarray) -> np.ndarray:
        return answer


@dataclasses.dataclass(frozen=True)
class VictimSpec:
    """What the service needs to rebuild the victim: architecture, input shape, classes, input range.

    `input_range` is part of the victim's interface: every pixel of a query must lie in [low, high] (images
    are in [0, 1] for every dataset here); a query outside it is rejected before it reaches the model.
    `config` (a workloads.victims.VictimConfig) lets the actor load the victim's dataset itself for the
    defense's DefenseContext (deterministic from the config, so nothing large crosses the object store);
    None gives the defense no dataset (fine for defenses that do not use one, e.g. in the benchmark).
    """

    arch: str
    shape: tuple[int, int, int]
    num_classes: int
    config: Any = None
    seed: int = 0
    input_range: tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass
class ServedStats:
    """Running totals over served batches: constant memory however long the service runs."""

    served: int = 0              # served batches, queries and explanations (the `batch` number of log rows)
    batches: int = 0             # served query batches (forward + defense), over which the timings are
    images: int = 0
    max_images: int = 0
    forward_ms: float = 0.0
    defense_ms: float = 0.0
    compute_ms: float = 0.0      # wall time the compute thread spent on served batches (queries and explanations)
    compute_cpu_ms: float = 0.0  # CPU time it got meanwhile: below compute_ms = it waited for a core (preempted)

    def add(self, images: int, forward_ms: float, defense_ms: float) -> int:
        """Count one served query batch; returns its number."""
        self.batches += 1
        self.images += images
        self.max_images = max(self.max_images, images)
        self.forward_ms += forward_ms
        self.defense_ms += defense_ms
        return self.next()

    def next(self) -> int:
        """The number of the next served batch (an explanation batch counts here only)."""
        self.served += 1
        return self.served - 1


class _Service:
    """The service's engine: clients, validation, batching, compute. The `VictimService` actor wraps one and
    exposes only its public methods (so the underscored ones here are not reachable through a Ray handle)."""

    def __init__(self, spec: VictimSpec, state_dict: dict, defense=None, service=None,
                 num_threads: int | None = None, gate: Gate | None = None, *, owner: str,
                 log_dir: str | None = None):
        import torch

        from orchestrator.config import ServiceConfig
        from workloads.models import build_model

        if not isinstance(owner, str) or len(owner) < 16:
            raise ValueError("owner: expected the owner token (a secret string, see admission.new_token)")
        self._owner = owner
        self.cfg = service or ServiceConfig()
        self.num_threads = max(1, int(num_threads or self.cfg.num_cpus))
        torch.set_num_threads(self.num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.forward_batch = self.cfg.forward_batch
        if self.forward_batch is None:  # auto: small CPU forwards stay in cache (heist bench); one GPU forward
            self.forward_batch = 0 if self.device.type == "cuda" else CPU_FORWARD_BATCH
        self.shape = tuple(int(s) for s in spec.shape)
        self.num_classes = spec.num_classes
        self.input_range = admission.check_input_range(spec.input_range)
        model = build_model(spec.arch, self.shape, spec.num_classes)
        model.load_state_dict(state_dict)
        self.model = model.to(self.device).eval()
        self._spec = spec
        self._data = spec.config.load_data() if spec.config is not None else None
        self._torch = torch
        self._queue: asyncio.Queue | None = None
        self._batcher_task: asyncio.Task | None = None
        self._serving: set[asyncio.Task] = set()     # served batches in flight (a reference keeps each alive)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="victim-compute",
                                        initializer=torch.set_num_threads, initargs=(self.num_threads,))
        self._configure(defense, gate, log_dir)

    def _configure(self, defense, gate: Gate | None, log_dir: str | None) -> None:
        """Everything a trial sets: the defense (built afresh), the gate, the request log, no clients, zeroed
        statistics and freshly seeded explanation streams: a service after `reset` is a freshly started one."""
        from workloads.defenses import DefenseConfig, DefenseContext, build_defense
        from workloads.seeds import derive_seed

        torch, spec = self._torch, self._spec
        ctx = DefenseContext(victim=self.model, dataset=self._data, arch=spec.arch, seed=spec.seed, device=self.device)
        self.defense = build_defense(defense or DefenseConfig(), ctx)
        self.gate = gate or OpenGate()
        if hasattr(self.gate, "bind"):
            self.gate.bind(self)
        self._explain_rng = torch.Generator(self.device).manual_seed(derive_seed("explainer/sampling", spec.seed))
        self._explain_noise_rng = torch.Generator(self.device).manual_seed(derive_seed("defense/noise", spec.seed))
        self.clients = admission.Clients()
        self.log = RequestLog(log_dir, self.cfg.log_chunk)
        self.served = ServedStats()
        self._t0, self._wall0 = time.perf_counter(), time.time()

    # ---------------------------------------------------------------- the interface, owner-only calls
    async def ready(self) -> dict:
        """Await construction; returns the victim's interface (shape, classes, input range, request limits)
        and where it is served."""
        self._ensure_batcher()
        return {"device": str(self.device), "shape": self.shape, "num_classes": self.num_classes,
                "input_range": self.input_range, "threads": self.num_threads, "max_batch": self.cfg.max_batch,
                "forward_batch": self.forward_batch, "max_wait_ms": self.cfg.max_wait_ms,
                "max_request": self.cfg.max_request, "max_queued": self.cfg.max_queued,
                "gate": type(self.gate).__name__}

    async def reset(self, owner: str, defense=None, gate: Gate | None = None, log_dir: str | None = None) -> dict:
        """Serve the next trial with the same victim: a new defense (a DefenseConfig), gate and request log, no
        clients, zeroed statistics and explanation streams seeded as at the start — what a fresh service would
        be, without a new process, model or dataset load. The previous log must have been flushed; refused
        while requests are being served. Returns `ready()`."""
        admission.check_owner(owner, self._owner, "reset")
        busy = sum(r.queued for r in self.clients.by_id.values())
        if busy or self._serving:
            raise RuntimeError(f"reset: {busy} images are still queued or being served; reset between trials")
        self._configure(defense, gate, log_dir)
        return await self.ready()

    async def register(self, owner: str, client_id: str, budget: int, kind: str = "attacker",
                       tags: dict | None = None) -> str:
        """Register `client_id` with an image budget; returns the client's key (hand it to that client only).
        `tags` are constant columns of the client's request-log rows. Registering an existing id raises."""
        admission.check_owner(owner, self._owner, "register")
        return self.clients.register(client_id, budget, kind, tags)

    async def ledger(self, owner: str) -> dict[str, dict]:
        """Per-client totals: images, batches (requests), seconds, refused, rejected, throttled, failed, replayed,
        l1, budget, kind."""
        admission.check_owner(owner, self._owner, "ledger")
        return {cid: rec.summary() | rec.state.get("ledger", {}) for cid, rec in self.clients.by_id.items()}

    async def request_log(self, owner: str, since: int = 0) -> list[dict]:
        """Per-request rows from index `since`: client, kind, seq, images, l1, queue_ms, compute_ms,
        served_batch_images, batch (served-batch number), t (s since the service started), ts (unix time the
        request arrived), plus the client's tags."""
        admission.check_owner(owner, self._owner, "request_log")
        return self.log.rows(since)

    async def flush_log(self, owner: str) -> dict:
        """Write the buffered request-log rows to the log directory; returns rows written and still in memory."""
        admission.check_owner(owner, self._owner, "flush_log")
        self.log.flush()
        return {"rows": len(self.log), "in_memory": len(self.log.buffer), "parts": self.log.parts}

    async def stats(self, owner: str) -> dict:
        """Served-batch statistics; `defense_ms_mean` is the added (defended - clean) cost per batch; `compute_cpu_ms`
        / `compute_ms` is the share of its busy time the compute thread was running on a core."""
        admission.check_owner(owner, self._owner, "stats")
        s = self.served
        n = max(s.batches, 1)
        return {"served_batches": s.batches, "images": s.images, "mean_batch_images": s.images / n,
                "max_batch_images": s.max_images, "forward_ms_mean": s.forward_ms / n,
                "defense_ms_mean": s.defense_ms / n,
                "defense_us_per_image": s.defense_ms * 1e3 / s.images if s.images else 0.0,
                "compute_ms": s.compute_ms, "compute_cpu_ms": s.compute_cpu_ms,
                "log_rows": len(self.log), "log_rows_in_memory": len(self.log.buffer),
                "replies_held": sum(len(r.replies) for r in self.clients.by_id.values()),
                "device": str(self.device), "threads": self.num_threads}

    # ---------------------------------------------------------------- the query path (key-bearing)
    async def usage(self, key: str) -> dict:
        """The calling client's own totals: images answered, images queued, budget."""
        rec = self._client(key)
        return {"client_id": rec.client_id, "images": rec.images, "reserved": rec.reserved, "budget": rec.budget}

    async def query(self, key: str, x, request_id: tuple[int, int] | None = None) -> Any:
        """Answer the batch x (n, C, H, W) of the client holding `key` with defended posteriors (n, K) float32.

        `request_id` = (stream, seq) makes the request idempotent: repeating it (with the same images) while
        it is in the client's current stream returns the same answer and charges nothing more."""
        rec = self._client(key)
        x = self._validate(rec, x)
        request_id = admission.check_request_id(rec, request_id)
        request = admission.replay(rec, request_id, x) or self._admit(rec, x, request_id)
        answer = await asyncio.shield(request.future)   # a cancelled caller does not cancel the computation
        return await self.gate.release(rec, dataclasses.replace(request, x=x), answer)   # the gate sees the images

    async def redeem(self, key: str, ticket: str, stamp: str) -> Any:
        """Release the answer the gate withheld behind challenge `ticket`, once, for a valid `stamp`."""
        rec = self._client(key)
        if not hasattr(self.gate, "redeem"):
            raise ValueError(f"client {rec.client_id!r}: this service's gate ({type(self.gate).__name__}) "
                             f"issues no challenges")
        return self.gate.redeem(rec, ticket, stamp)

    async def explain(self, key: str, x, mode: str = "top1", weights=None, explainer: str = "vanilla",
                      samples: int = 50, sigma: float = 0.15, request_id: tuple[int, int] | None = None) -> Any:
        """Gradient explanations of the batch x of the client holding `key` (workloads.explanations): the reply
        is (defended posteriors (n, K), explanations (n, rows, C, H, W)), both float32; charged
        `ExplainRequest.cost` victim evaluations per image. `request_id` as for `query`."""
        from workloads.explanations import check_weights

        rec = self._client(key)
        setting = self._explain_request(rec, mode, explainer, samples, sigma)
        x = self._validate(rec, x)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
        try:
            check_weights(weights, len(x), self.num_classes, setting.mode)
        except ValueError as e:
            rec.rejected += 1
            raise InvalidQuery(f"client {rec.client_id!r}: {e}") from None
        request_id = admission.check_request_id(rec, request_id)
        request = admission.replay(rec, request_id, x) or self._admit(
            rec, x, request_id, cost=len(x) * setting.cost(self.num_classes), explain=(setting, weights))
        answer = await asyncio.shield(request.future)
        return await self.gate.release(rec, request, answer)

    def _explain_request(self, rec: ClientRecord, mode, explainer, samples, sigma):
        from workloads.config import ConfigError
        from workloads.explanations import ExplainRequest

        if not self.cfg.explanations:
            rec.rejected += 1
            raise InvalidQuery(f"client {rec.client_id!r}: service.explanations: explanations are off for this "
                               f"service (set service.explanations: true to serve them)")
        try:
            return ExplainRequest(mode, explainer, samples, sigma)
        except ConfigError as e:
            rec.rejected += 1
            raise InvalidQuery(f"client {rec.client_id!r}: {e}") from None

    def _client(self, key: str) -> ClientRecord:
        """The client a key was issued to (the one place a caller becomes a client); UnknownClient otherwise."""
        return self.clients.resolve(key)

    def _validate(self, rec: ClientRecord, x) -> np.ndarray:
        return admission.validate(rec, x, self.shape, self.input_range, self.cfg.max_request)

    def _admit(self, rec: ClientRecord, x: np.ndarray, request_id: tuple[int, int] | None = None, *, cost: int = 0,
               explain=None) -> Request:
        """Reserve the request's cost (`cost` images, default one per image) and queue it."""
        n, cost = len(x), cost or len(x)
        what = f"a query of {n} images" if explain is None else f"an explanation of {n} images ({cost} evaluations)"
        admission.reserve(rec, n, cost, self.cfg.max_queued, what)
        loop = asyncio.get_running_loop()
        request = Request(rec, rec.seq, x, n, cost, loop.create_future(), time.perf_counter(), request_id,
                          admission.fingerprint(x) if request_id is not None else b"", explain)
        rec.seq += 1
        if request_id is not None:
            rec.replies[request_id[1]] = request
        self._ensure_batcher()
        self._queue.put_nowait(request)
        return request

    def _charge(self, req: Request, answer: Any, l1: float, t_start: float, t_end: float, served: int,
                batch_id: int) -> None:
        """Charge an answered request to its client, log it and hand its answer to the waiting caller(s)."""
        rec = req.client
        rec.reserved -= req.cost
        rec.queued -= req.n
        rec.images += req.cost
        rec.batches += 1
        rec.seconds += t_end - req.t_submit
        rec.l1_exact += Fraction(l1)
        self.log.append({"client": rec.client_id, "kind": rec.kind, "seq": req.seq, "images": req.cost, "l1": l1,
                         "request": "query" if req.explain is None else "explain", "inputs": req.n,
                         "queue_ms": (t_start - req.t_submit) * 1e3, "compute_ms": (t_end - t_start) * 1e3,
                         "served_batch_images": served, "batch": batch_id,
                         "t": req.t_submit - self._t0, "ts": self._wall0 + (req.t_submit - self._t0), **rec.tags})
        req.x = None
        req.future.set_result(answer)

    def _fail(self, req: Request, error: Exception) -> None:
        """Fail an unanswered request: its images go back to the client's budget, its id may be sent again."""
        if req.future.done():
            return
        rec = req.client
        rec.reserved -= req.cost
        rec.queued -= req.n
        rec.failed += 1
        if req.request_id is not None and rec.replies.get(req.request_id[1]) is req:
            del rec.replies[req.request_id[1]]
        req.x = None
        req.future.set_exception(error)
        req.future.exception()   # retrieved here, so a request nobody awaits any more leaves no warning

    # ---------------------------------------------------------------- dynamic batching
    def _ensure_batcher(self) -> None:
        if self._batcher_task is None or self._batcher_task.done():
            self._queue = self._queue or asyncio.Queue()
            self._batcher_task = asyncio.get_running_loop().create_task(self._batcher())

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        max_batch, max_wait = self.cfg.max_batch, self.cfg.max_wait_ms / 1e3
        slots = asyncio.Semaphore(PIPELINE_DEPTH)
        carry: Request | None = None
        batch: list[Request] = []
        try:
            while True:
                await slots.acquire()              # at most PIPELINE_DEPTH served batches in flight
                first = carry or await self._queue.get()
                carry, batch, n = None, [first], first.n
                deadline = loop.time() + max_wait
                while n < max_batch:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            req = await asyncio.wait_for(self._queue.get(), remaining)
                        except asyncio.TimeoutError:
                            break
                    else:
                        req = self._queue.get_nowait()
                    if n + req.n > max_batch:
                        carry = req          # does not fit: it opens the next batch
                        break
                    batch.append(req)
                    n += req.n
                task = loop.create_task(self._serve_owned(batch, slots))
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)
                batch = []
        except BaseException as e:   # fail every request held or queued: none may wait forever
            error = VictimFailure(f"the service's batcher stopped ({type(e).__name__}: {e}); nothing was charged")
            held = batch + ([carry] if carry is not None else [])
            while not self._queue.empty():
                held.append(self._queue.get_nowait())
            for req in held:
                self._fail(req, error)
            raise

    async def _serve_owned(self, batch: list[Request], slots: asyncio.Semaphore) -> None:
        """Serve a batch the batcher handed over; if serving it breaks, its unanswered requests fail (none waits
        forever). Frees the batcher's slot."""
        try:
            await self._serve(batch)
        except BaseException as e:
            error = VictimFailure(f"the service could not serve a batch ({type(e).__name__}: {e}); nothing was charged")
            for req in batch:
                self._fail(req, error)
            if not isinstance(e, Exception):
                raise
        finally:
            slots.release()

    async def _serve(self, batch: list[Request]) -> None:
        """Serve a batch: its queries in one forward, its explanation requests in one computation per setting."""
        groups: dict = {}
        for r in batch:
            if not r.future.done():
                groups.setdefault(None if r.explain is None else r.explain[0], []).append(r)
        for setting, requests in groups.items():
            await self._serve_group(setting, requests)

    async def _serve_group(self, setting, batch: list[Request]) -> None:
        """One computation (a forward + defense for queries, an explanation for `setting`) for the requests;
        each is answered and charged, or fails alone."""
        loop = asyncio.get_running_loop()
        x = np.concatenate([r.x for r in batch])               # a fresh, writable, contiguous buffer
        try:
            if setting is None:
                (answer, l1, fwd_ms, def_ms), t_start, t_end, cpu_s = await loop.run_in_executor(
                    self._pool, _timed, self._compute, x)
                grads = None
            else:
                weights = np.concatenate([r.explain[1] for r in batch]) if setting.mode == "vjp" else None
                (answer, grads, l1), t_start, t_end, cpu_s = await loop.run_in_executor(
                    self._pool, _timed, self._compute_explanations, x, setting, weights)
        except Exception as e:
            if len(batch) > 1:   # find the request(s) that fail: retry each alone
                for r in batch:
                    await self._serve_group(setting, [r])
            else:
                self._fail(batch[0], VictimFailure(f"client {batch[0].client.client_id!r}: the victim could not "
                                                   f"answer this request ({type(e).__name__}: {e}); nothing was charged"))
            return
        batch_id = self.served.add(len(x), fwd_ms, def_ms) if setting is None else self.served.next()
        self.served.compute_ms += (t_end - t_start) * 1e3
        self.served.compute_cpu_ms += cpu_s * 1e3
        finite = np.isfinite(answer).all(1) & np.isfinite(l1)
        if grads is not None:
            finite &= np.isfinite(grads.reshape(len(grads), -1)).all(1)
        lo = 0
        for r in batch:
            hi = lo + r.n
            if finite[lo:hi].all():
                reply = answer[lo:hi] if grads is None else (answer[lo:hi], grads[lo:hi])
                self._charge(r, reply, float(l1[lo:hi].sum()), t_start, t_end, len(x), batch_id)
            else:
                bad = np.flatnonzero(~finite[lo:hi])
                self._fail(r, VictimFailure(f"client {r.client.client_id!r}: the victim's answer is not finite for "
                                            f"{len(bad)} image(s) of this request, first at image {int(bad[0])}; "
                                            f"nothing was charged"))
            lo = hi

    def _compute_explanations(self, x: np.ndarray, setting, weights: np.ndarray | None):
        """Explanations (with explanation noise), the defended prediction at x and each row's
        ‖defended − clean‖₁. Runs in the compute thread."""
        from workloads.explanations import add_noise, explain

        torch = self._torch
        xt = torch.from_numpy(x).to(self.device)
        w = None if weights is None else torch.from_numpy(weights).to(self.device)
        probs, grads = explain(self.model, xt, setting, w, generator=self._explain_rng)
        grads = add_noise(grads, self.cfg.explanation_noise, self._explain_noise_rng)
        with torch.inference_mode():
            answer = self.defense(probs, xt)
            l1 = (answer.double() - probs.double()).abs().sum(1).cpu().numpy()
        return answer.float().cpu().numpy(), grads.float().cpu().numpy(), l1

    def _compute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One forward + softmax (clean) and the defense (defended), timed separately; the defended answers
        and each row's ‖defended − clean‖₁. Runs in the compute thread."""
        torch = self._torch
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device, non_blocking=True)
            t0 = time.perf_counter()
            chunks = xt.split(self.forward_batch or len(xt))
            probs = torch.cat([torch.softmax(self.model(c), 1) for c in chunks]) if len(chunks) > 1 \
                else torch.softmax(self.model(xt), 1)
            if cuda:
                torch.cuda.synchronize(self.device)
            t1 = time.perf_counter()
            out = self.defense(probs, xt)
            if cuda:
                torch.cuda.synchronize(self.device)
            t2 = time.perf_counter()
            l1 = (out.double() - probs.double()).abs().sum(1).cpu().numpy()
            answer = out.float().cpu().numpy()
        return answer, l1, (t1 - t0) * 1e3, (t2 - t1) * 1e3


def _timed(fn, *args):
    """fn(*args), the compute thread's own start and end times (not the wait for the thread) and the CPU seconds
    the thread got in between."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    out = fn(*args)
    return out, t0, time.perf_counter(), time.thread_time() - cpu0


@ray.remote
class VictimService:
    """The Ray actor: a `_Service` engine behind exactly these methods (Ray makes every method of an actor class
    callable through its handle, so the engine's underscored internals live on another object).

    Start it with `service_actor(...)`, which also makes the owner token. Besides these, Ray itself adds
    `__ray_call__` (runs any function on the actor): a raw handle is for trusted code only — see
    docs/guarantees.md, "Trust boundary".
    """

    def __init__(self, *args, **kwargs):
        sys.setswitchinterval(SWITCH_INTERVAL_S)     # this process is the service's own
        self.engine = _Service(*args, **kwargs)

    async def ready(self) -> dict:
        return await self.engine.ready()

    async def query(self, key: str, x, request_id: tuple[int, int] | None = None) -> Any:
        return await self.engine.query(key, x, request_id)

    async def explain(self, key: str, x, mode: str = "top1", weights=None, explainer: str = "vanilla",
                      samples: int = 50, sigma: float = 0.15, request_id: tuple[int, int] | None = None) -> Any:
        return await self.engine.explain(key, x, mode, weights, explainer, samples, sigma, request_id)

    async def redeem(self, key: str, ticket: str, stamp: str) -> Any:
        return await self.engine.redeem(key, ticket, stamp)

    async def usage(self, key: str) -> dict:
        return await self.engine.usage(key)

    async def register(self, owner: str, client_id: str, budget: int, kind: str = "attacker",
                       tags: dict | None = None) -> str:
        return await self.engine.register(owner, client_id, budget, kind, tags)

    async def reset(self, owner: str, defense=None, gate: Gate | None = None, log_dir: str | None = None) -> dict:
        return await self.engine.reset(owner, defense, gate, log_dir)

    async def ledger(self, owner: str) -> dict[str, dict]:
        return await self.engine.ledger(owner)

    async def request_log(self, owner: str, since: int = 0) -> list[dict]:
        return await self.engine.request_log(owner, since)

    async def flush_log(self, owner: str) -> dict:
        return await self.engine.flush_log(owner)

    async def stats(self, owner: str) -> dict:
        return await self.engine.stats(owner)


def service_actor(spec: VictimSpec, state_dict_ref, defense, service, *, gate: Gate | None = None,
                  name: str | None = None, log_dir: str | None = None) -> tuple[Any, str]:
    """Start a VictimService with the resources of `service` (a ServiceConfig); returns (actor handle, owner token).

    Keep the owner token with the code that registers clients and reads ledgers; give workers the handle and
    their own client key only. `log_dir` streams the request log there as Parquet parts (see ledger.RequestLog).
    Torch in the actor gets max(1, floor(num_cpus)) threads; with num_gpus > 0 Ray sets CUDA_VISIBLE_DEVICES and
    the model goes to CUDA when torch sees it (fractional GPUs allowed). The actor is not restarted when it dies
    (its ledger is in its memory): calls then fail with Ray's ActorDiedError.
    """
    owner = admission.new_token()
    opts = {"num_cpus": service.num_cpus, "num_gpus": service.num_gpus, "max_concurrency": 10_000}
    if name:
        opts["name"] = name
    actor = VictimService.options(**opts).remote(spec, state_dict_ref, defense, service, gate=gate, owner=owner,
                                                 log_dir=None if log_dir is None else str(log_dir))
    return actor, owner

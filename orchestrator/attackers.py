"""Clients of the VictimService: attacker workers, the RayQueryClient an attack talks to, the benign client.

* `AttackerWorker` (Ray actor): one registered client (its client id and the key `register` returned) with
  its own share of the attack's budget. It streams its slice of the images to the service in client batches
  of `query_batch`, keeping at most `max_in_flight` requests outstanding, and returns the answers in order.
* `RayQueryClient` implements `workloads.attacks.QueryClient`: `query(x)` splits x into contiguous
  slices sized by each worker's remaining budget, runs them on the workers concurrently and concatenates
  the answers in order, so every image is answered exactly once and charged exactly once. `explain(x,
  request, weights)` does the same with the service's `explain`, each image charged request.cost(K).
* `BenignClient` (Ray actor): streams the test set through the service as its own client and returns the
  defended posteriors plus per-batch latencies (`run`; an AttackerWorker has it too).
* Long-lived workers (trial.TrialActors): a worker streams as one client after another. Each call may carry
  its client's binding `(client_id, key, query_batch, max_in_flight)` (`register_attackers` returns them,
  `RayQueryClient(..., clients=...)` passes them), which re-binds the worker, with fresh counters, first.

Restarts: a worker killed mid-stream is restarted by Ray (`WORKER_RESTARTS`) and its call is retried; each
call carries a stream number and each request its place in the stream, `(stream, i)`, so the service answers
the requests it already answered from its record without charging them again: the call finishes with every
image charged once. Every wait is bounded (`timeout_s`) and names what it waited for.

This module imports only numpy and Ray at the top, so the worker processes stay light (no torch import).
"""
from __future__ import annotations

import collections
import time

import numpy as np
import ray

from orchestrator.waits import wait_for

WORKER_RESTARTS = 3          # times Ray restarts a dead worker (and retries its call) before the call fails
DEFAULT_TIMEOUT_S = 3600.0


class _Streamer:
    """Sends images to the service as one client, in batches, with a bounded number in flight."""

    def __init__(self, service, client_id: str, key: str, batch: int, max_in_flight: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.service = service
        self.timeout_s = float(timeout_s)
        self._bind((client_id, key, batch, max_in_flight))

    def _bind(self, client: tuple[str, str, int, int]) -> None:
        """Stream as `client` = (client_id, key, batch, max_in_flight) from now on, with fresh counters."""
        self.client = tuple(client)
        self.client_id, self.key = client[0], client[1]
        self.batch, self.max_in_flight = int(client[2]), max(1, int(client[3]))
        self.requests = 0      # requests answered for this client by this incarnation of the worker
        self.seconds = 0.0
        self.hashes = self.stamps = 0         # proof of work: hashes computed, stamps minted
        self.mint_seconds = 0.0

    def bind(self, client) -> None:
        """Stream as `client` = (client_id, key, batch, max_in_flight) when it is not the current one (a long-lived
        worker serves one client after another; each call carries its binding, so a worker Ray restarted with
        its first binding is re-bound by the retried call). None keeps the current client."""
        if client is not None and tuple(client) != self.client:
            self._bind(client)

    def _run(self, x: np.ndarray, stream: int | None = None, send=None) -> tuple[np.ndarray, list[float]]:
        """Answers for x in order, and each request's latency (submit to answer, ms).

        `send(lo, hi, request_id)` submits x[lo:hi] and returns the reply's ref (default: a query). Tuple
        replies (explanations) come back as a tuple of arrays. With a `stream` number the i-th request goes
        out as request id (stream, i), so resending the same call (after a restart) is answered from the
        service's record for what it already answered. On an error the requests already in flight are still
        awaited (the service charges them), then the first error is raised.
        """
        pending: collections.deque = collections.deque()
        answers: list[np.ndarray] = []
        latencies: list[float] = []
        t_run = time.perf_counter()
        send = send or (lambda lo, hi, request_id: self.service.query.remote(self.key, x[lo:hi], request_id))

        def collect_oldest():
            ref, t, i = pending.popleft()
            reply = wait_for(ref, f"the service's answer to client {self.client_id!r}, request {i}", self.timeout_s)
            answers.append(self._answer(reply))
            latencies.append((time.perf_counter() - t) * 1e3)
            self.requests += 1

        try:
            for i, lo in enumerate(range(0, len(x), self.batch)):
                while len(pending) >= self.max_in_flight:
                    collect_oldest()
                request_id = None if stream is None else (stream, i)
                pending.append((send(lo, min(lo + self.batch, len(x)), request_id), time.perf_counter(), i))
            while pending:
                collect_oldest()
        except Exception:
            while pending:
                try:
                    collect_oldest()
                except Exception:
                    pass
            raise
        finally:
            self.seconds += time.perf_counter() - t_run
        if not answers:
            return np.zeros((0, 0), np.float32), latencies
        if isinstance(answers[0], tuple):
            return tuple(np.concatenate(parts) for parts in zip(*answers)), latencies
        return np.concatenate(answers), latencies

    def _answer(self, reply) -> np.ndarray:
        """Turn the service's reply into posteriors (or an explanation's (posteriors, explanations)). With
        the OpenGate the reply is the answer itself; a proof-of-work `Challenge` is solved here, in this
        actor, and redeemed for the answer."""
        from orchestrator.pow_gate import Challenge

        if isinstance(reply, Challenge):
            from workloads.pow.hashcash import mint

            stamp = None
            if not reply.simulated:
                t = time.perf_counter()
                stamp, hashes = mint(reply.challenge, reply.bits)
                self.mint_seconds += time.perf_counter() - t
                self.hashes += hashes
                self.stamps += 1
            reply = ray.get(self.service.redeem.remote(self.key, reply.ticket, stamp))
        if isinstance(reply, tuple) and all(isinstance(r, np.ndarray) for r in reply):
            return reply
        if not isinstance(reply, np.ndarray):
            raise TypeError(f"client {self.client_id!r}: the service replied with a {type(reply).__name__}, "
                            f"not posteriors (a gate challenge this client cannot answer)")
        return reply

    def run(self, x: np.ndarray, stream: int | None = None, client=None) -> tuple[np.ndarray, list[float]]:
        """Answers for x (in order) and per-request latencies in ms; `client` as in `bind`."""
        self.bind(client)
        return self._run(x, stream)

    def stats(self) -> dict:
        """images: answered and charged by the service for the current client (its ledger, so a restart loses
        nothing); requests, seconds, hashes, stamps and mint_seconds (proof of work): this incarnation's, for
        this client; restarted: whether Ray restarted this worker."""
        usage = wait_for(self.service.usage.remote(self.key), f"the service's usage of client {self.client_id!r}",
                         self.timeout_s)
        return {"client_id": self.client_id, "images": usage["images"], "requests": self.requests,
                "seconds": self.seconds, "hashes": self.hashes, "stamps": self.stamps,
                "mint_seconds": self.mint_seconds,
                "restarted": ray.get_runtime_context().was_current_actor_reconstructed}


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS)
class AttackerWorker(_Streamer):
    """One attacker query stream, registered with the service as its own client."""

    def __init__(self, service, client_id: str, key: str, query_batch: int = 256, max_in_flight: int = 4,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(service, client_id, key, query_batch, max_in_flight, timeout_s)

    def query(self, x: np.ndarray, lo: int = 0, hi: int | None = None, stream: int | None = None,
              client=None) -> np.ndarray:
        """Answers for x[lo:hi] (x may be a shared ObjectRef'd array; the slice is a view). Give a `stream`
        number (increasing from call to call) to make the call safe to retry; `client` =
        (client_id, key, query_batch, max_in_flight) re-binds the worker to another client first."""
        self.bind(client)
        return self._run(x[lo:hi], stream)[0]

    def explain(self, x: np.ndarray, lo: int, hi: int, weights: np.ndarray | None, request: dict,
                stream: int | None = None, client=None) -> tuple[np.ndarray, np.ndarray]:
        """Explanations for x[lo:hi] (`request`: ExplainRequest fields; weights[lo:hi] for mode vjp), each
        image charged the request's cost in victim evaluations; `stream` and `client` as for `query`."""
        self.bind(client)
        x = x[lo:hi]
        w = None if weights is None else weights[lo:hi]
        return self._run(x, stream, lambda a, b, request_id: self.service.explain.remote(
            self.key, x[a:b], weights=None if w is None else w[a:b], request_id=request_id, **request))[0]

    def num_classes(self) -> int:
        return int(wait_for(self.service.ready.remote(), "the victim service's interface (ready)",
                            self.timeout_s)["num_classes"])

    def timed_query(self, x: np.ndarray, lo: int = 0, hi: int | None = None) -> tuple[float, float, int, list[float]]:
        """Like `query`, but returns (start, end, images, per-request latencies in ms) instead of answers
        (benchmarks); start and end are wall-clock times."""
        t0 = time.time()
        out, latencies = self._run(x[lo:hi])
        return t0, time.time(), len(out), latencies


@ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS)
class BenignClient(_Streamer):
    """A legitimate user: streams a data set through the defended API, one batch at a time by default."""

    def __init__(self, service, client_id: str, key: str, batch: int = 256, max_in_flight: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(service, client_id, key, batch, max_in_flight, timeout_s)


def split_budget(budget: int, n: int) -> list[int]:
    """`budget` images split over at most `n` workers as evenly as possible (no zero shares)."""
    n = max(1, min(int(n), int(budget)))
    q, r = divmod(int(budget), n)
    return [q + (i < r) for i in range(n)]


def allocate(n: int, remaining: list[int]) -> list[int]:
    """Split n images over workers with `remaining` budgets: as even as possible, never above a
    worker's remaining budget (water-filling). Requires n <= sum(remaining)."""
    if n > sum(remaining):
        raise ValueError(f"cannot place {n} images in remaining budgets {remaining}")
    sizes = [0] * len(remaining)
    left = n
    while left:
        open_ = [i for i, r in enumerate(remaining) if r - sizes[i] > 0]
        share, extra = divmod(left, len(open_))
        for j, i in enumerate(open_):
            take = min(share + (j < extra), remaining[i] - sizes[i])
            sizes[i] += take
            left -= take
    return sizes


def register_attackers(service, owner: str, prefix: str, n: int, budget: int, *, query_batch: int = 256,
                       max_in_flight: int = 4, tags: dict | None = None,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[list[tuple], list[str], list[int]]:
    """Register up to `n` attacker clients `<prefix>/w<i>` with their share of `budget` (with the service's
    owner token; `tags` go into their request-log rows). Returns (clients, client_ids, budgets), each client the
    (client_id, key, query_batch, max_in_flight) binding a worker's calls carry."""
    budgets = split_budget(budget, n)
    ids = [f"{prefix}/w{i}" for i in range(len(budgets))]
    keys = wait_for([service.register.remote(owner, cid, b, "attacker", tags) for cid, b in zip(ids, budgets)],
                    f"the service to register {len(ids)} attacker clients", timeout_s)
    return [(cid, key, int(query_batch), int(max_in_flight)) for cid, key in zip(ids, keys)], ids, budgets


def start_workers(service, clients: list[tuple], *, num_cpus: float = 0.25, num_gpus: float = 0.0,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> list:
    """One AttackerWorker per client binding (the caller owns the actors: ray.kill them when done)."""
    return [AttackerWorker.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(service, *client, timeout_s)
            for client in clients]


def spawn_attackers(service, owner: str, prefix: str, n: int, budget: int, *, query_batch: int = 256,
                    max_in_flight: int = 4, num_cpus: float = 0.25, num_gpus: float = 0.0, tags: dict | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[list, list[str], list[int]]:
    """`register_attackers`, then one new AttackerWorker per client. Returns (workers, client_ids, budgets)."""
    clients, ids, budgets = register_attackers(service, owner, prefix, n, budget, query_batch=query_batch,
                                               max_in_flight=max_in_flight, tags=tags, timeout_s=timeout_s)
    return start_workers(service, clients, num_cpus=num_cpus, num_gpus=num_gpus, timeout_s=timeout_s), ids, budgets


class RayQueryClient:
    """A `workloads.attacks.QueryClient` over N AttackerWorkers: each `query(x)` is split across the workers
    (sized by their remaining budgets), run concurrently and reassembled in order."""

    def __init__(self, workers: list, budgets: list[int], timeout_s: float = DEFAULT_TIMEOUT_S,
                 clients: list[tuple] | None = None):
        if len(workers) != len(budgets) or not workers or (clients is not None and len(clients) != len(workers)):
            raise ValueError("RayQueryClient needs one budget per worker and at least one worker")
        self.clients = clients or [None] * len(workers)   # the client each (long-lived) worker streams as
        self.timeout_s = float(timeout_s)
        self.calls = 0          # each call is one stream number on every worker, so a retried call is idempotent
        self.workers = list(workers)
        self.shares = [int(b) for b in budgets]
        self.remaining = list(self.shares)
        self.budget = sum(self.shares)
        self.used = 0
        self.num_classes: int | None = None

    def query(self, x) -> np.ndarray:
        from workloads.attacks import BudgetExceeded

        if not isinstance(x, np.ndarray) and hasattr(x, "numpy"):   # a torch tensor
            x = x.detach().cpu().numpy()
        n = len(x)
        if self.used + n > self.budget:
            raise BudgetExceeded(f"query of {n} images exceeds budget ({self.used}/{self.budget} used)")
        if n == 0:
            raise ValueError("query: expected at least one image, got 0")
        ref = ray.put(x)
        done = self._fan_out(allocate(n, self.remaining), f"a query of {n} images",
                             lambda worker, lo, hi, stream, client: worker.query.remote(ref, lo, hi, stream, client))
        for i, size, _ in done:
            self.remaining[i] -= size
        self.used += n
        out = np.concatenate([answer for _, _, answer in done])
        if len(out) != n:   # guards the invariant the attacks rely on
            raise RuntimeError(f"RayQueryClient: {len(out)} answers for {n} images")
        return out

    def explain(self, x, request, weights=None) -> tuple[np.ndarray, np.ndarray]:
        """(defended posteriors, explanations) for x, split across the workers; each image is charged
        request.cost(K) victim evaluations (K asked once from the service)."""
        import dataclasses

        from workloads.attacks import BudgetExceeded

        if self.num_classes is None:
            self.num_classes = wait_for(self.workers[0].num_classes.remote(), "the number of classes", self.timeout_s)
        per_image = request.cost(self.num_classes)
        n = len(x)
        if n == 0:
            raise ValueError("explain: expected at least one image, got 0")
        if self.used + n * per_image > self.budget:
            raise BudgetExceeded(f"explanation of {n} images ({n * per_image} evaluations) exceeds budget "
                                 f"({self.used}/{self.budget} used)")
        fits = [r // per_image for r in self.remaining]
        if n > sum(fits):
            raise BudgetExceeded(f"explanation of {n} images at {per_image} evaluations each does not fit the "
                                 f"workers' remaining budgets {self.remaining}")
        sizes = allocate(n, fits)
        ref = ray.put(np.ascontiguousarray(x, dtype=np.float32))
        wref = None if weights is None else ray.put(np.asarray(weights, dtype=np.float32))
        spec = dataclasses.asdict(request)
        done = self._fan_out(sizes, f"an explanation of {n} images",
                             lambda worker, lo, hi, stream, client: worker.explain.remote(ref, lo, hi, wref, spec,
                                                                                         stream, client))
        for i, size, _ in done:
            self.remaining[i] -= size * per_image
        self.used += n * per_image
        return np.concatenate([a[0] for _, _, a in done]), np.concatenate([a[1] for _, _, a in done])

    def _fan_out(self, sizes: list[int], what: str, call) -> list[tuple[int, int, object]]:
        """One call (one stream number) split across the workers: `call(worker, lo, hi, stream, client)` for each
        worker with a non-empty share of rows; returns (worker index, rows, answer) per call. On any failure
        the budgets are re-read from the service (`_resync`) and the error propagates."""
        stream, self.calls = self.calls, self.calls + 1
        calls, lo = [], 0
        for i, size in enumerate(sizes):
            if size:
                calls.append((i, size, call(self.workers[i], lo, lo + size, stream, self.clients[i])))
                lo += size
        try:
            answers = wait_for([c for _, _, c in calls], f"{len(calls)} attacker worker(s) to answer {what}",
                               self.timeout_s)
        except Exception:
            self._resync()
            raise
        return [(i, size, answer) for (i, size, _), answer in zip(calls, answers)]

    def _bound(self) -> list:
        """The workers, each bound to its client first when clients are named (a worker that got no call yet
        may still stream as another)."""
        if self.clients[0] is not None:
            wait_for([w.bind.remote(c) for w, c in zip(self.workers, self.clients)], "the workers to bind",
                     self.timeout_s)
        return self.workers

    def stats(self) -> list[dict]:
        """Each worker's `stats()` for its client, in order."""
        return wait_for([w.stats.remote() for w in self._bound()], "the attacker workers' stats", self.timeout_s)

    def _resync(self) -> None:
        """After a failed query, recount from the workers what was actually answered (and charged)."""
        try:
            answered = [s["images"] for s in wait_for([w.stats.remote() for w in self._bound()],
                                                      "the attacker workers' stats", self.timeout_s)]
        except Exception:
            return
        self.remaining = [share - a for share, a in zip(self.shares, answered)]
        self.used = sum(answered)

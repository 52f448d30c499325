"""VictimService: the defended victim behind a query API, as a Ray async actor.

One service per trial holds the victim model (on CUDA when the actor was given a GPU) and its output
defense. Clients (attacker workers, the benign client) send batches of images; the service

1. validates each batch *before* it is queued (dtype, exact (C, H, W) shape, 1..max_request images,
   finite values) and rejects a bad one with a one-line `InvalidQuery` naming the field — nothing is
   charged and other clients' requests are untouched;
2. checks the client's image budget (images answered + images still queued + this batch) and refuses a
   batch that would exceed it with `BudgetExceeded` — nothing is charged;
3. queues the batch; one batcher task concatenates queued requests up to `max_batch` images or
   `max_wait_ms`, runs ONE forward pass + defense for all of them (in a compute thread, so the event
   loop keeps accepting requests meanwhile) and splits the answer back;
4. charges the client (images, requests, seconds) and appends a row to the per-request log;
5. hands the answer to the `Gate`, which decides when (and whether) it is released.

Per-client state lives in the service (`ClientRecord`, one per registered client id) so that later
additions plug in without rewrites:

* a proof-of-work gate: a `Gate` whose `release` answers with a challenge instead of the posteriors,
  keeps the computed answer in `record.state` and releases it from a new `redeem(client_id, ticket,
  stamp)` method once the stamp verifies; its difficulty can follow a leakage estimate also kept in
  `record.state`. Clients then treat a non-ndarray reply as a challenge.
* `explain(client_id, x, mode, weights, explainer, samples, sigma)`: gradient explanations of the
  victim (workloads.explanations), off unless `service.explanations` is true. It validates, admits and
  charges through the same `_validate` / `_admit` / `_charge` path, records and ledger as `query`; an
  explanation is charged its victim evaluations (`ExplainRequest.cost`: K per image for a full Jacobian,
  n per image for SmoothGrad). The batcher serves queries and explanations from the same queue: queries
  in one forward, explanation requests with the same settings in one batched gradient computation, both
  in the compute thread. The output defense applies to the prediction that comes with every explanation;
  `service.explanation_noise` adds Gaussian noise to the explanations (a defense knob of its own).
  Log rows carry `request` ("query" / "explain") and `inputs` (images sent; `images` is what was charged).

Timing: for every served (forward) batch the service measures the clean cost (forward + softmax) and
the defended cost (+ defense), so the added serving latency per image (`defense_latency_us`) is the
total defense time over the images served (`stats()["defense_us_per_image"]`), whatever the batching.
The perturbation ‖defended − clean‖₁ of every answered image is summed per client (`l1` in the ledger),
so how much a defense moves the attacker's own queries is measured, not only the test set's.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import ray


CPU_FORWARD_BATCH = 256  # a CPU forward of 2048 LeNet images runs at half the speed of 256 (heist bench)


class InvalidQuery(ValueError):
    """A query batch failed validation (type, dtype, shape, size or values); nothing was charged."""


class UnknownClient(ValueError):
    """A query from a client id that was never registered with the service."""


@dataclasses.dataclass
class ClientRecord:
    """One client's ledger and state inside the service."""

    client_id: str
    budget: int                  # images this client may have answered in total
    kind: str = "attacker"       # "attacker" | "benign" | anything the caller uses to group clients
    images: int = 0              # images answered and charged
    batches: int = 0             # requests answered
    seconds: float = 0.0         # service time of answered requests (queueing + compute)
    reserved: int = 0            # images accepted and queued, not yet answered
    refused: int = 0             # requests refused because of the budget
    rejected: int = 0            # requests rejected by input validation
    seq: int = 0                 # number of the next accepted request
    l1: float = 0.0              # Σ over answered images of ‖defended − clean‖₁ (the defense's perturbation)
    state: dict = dataclasses.field(default_factory=dict)  # for gates/defenses: PoW tickets, leakage, ...

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in
                ("client_id", "kind", "budget", "images", "batches", "seconds", "refused", "rejected", "l1")}


@dataclasses.dataclass
class Request:
    """One accepted client batch on its way through the batcher."""

    client: ClientRecord
    seq: int
    x: np.ndarray
    future: asyncio.Future
    t_submit: float
    cost: int = 0                # images charged (0: len(x), one per image)
    explain: Any = None          # (ExplainRequest, weights) for an explanation request; None for a query

    def __post_init__(self):
        self.cost = self.cost or len(self.x)


class Gate(Protocol):
    """Decides when a computed answer is released to its client.

    `release` is awaited after the answer was computed and charged; whatever it returns is the reply to
    the client's `query` call. It may use and update `record.state`.
    """

    async def release(self, record: ClientRecord, request: Request, answer: np.ndarray) -> Any: ...


class OpenGate:
    """Releases every answer at once (no proof of work)."""

    async def release(self, record: ClientRecord, request: Request, answer: np.ndarray) -> np.ndarray:
        return answer


@dataclasses.dataclass(frozen=True)
class VictimSpec:
    """What the service needs to rebuild the victim: architecture, input shape, classes.

    `config` (a workloads.victims.VictimConfig) lets the actor load the victim's dataset itself for the
    defense's DefenseContext (deterministic from the config, so nothing large crosses the object store);
    None gives the defense no dataset (fine for defenses that do not use one, e.g. in the benchmark).
    """

    arch: str
    shape: tuple[int, int, int]
    num_classes: int
    config: Any = None
    seed: int = 0


class _Service:
    """The actor's body (undecorated, so the logic is importable without Ray actor machinery)."""

    def __init__(self, spec: VictimSpec, state_dict: dict, defense=None, service=None,
                 num_threads: int | None = None, gate: Gate | None = None):
        import torch

        from orchestrator.config import ServiceConfig
        from workloads.defenses import DefenseConfig, DefenseContext, build_defense
        from workloads.models import build_model
        from workloads.seeds import derive_seed

        self.cfg = service or ServiceConfig()
        self.num_threads = max(1, int(num_threads or self.cfg.num_cpus))
        torch.set_num_threads(self.num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.forward_batch = self.cfg.forward_batch
        if self.forward_batch is None:  # auto: small CPU forwards stay in cache (heist bench); one GPU forward
            self.forward_batch = 0 if self.device.type == "cuda" else CPU_FORWARD_BATCH
        self.shape = tuple(int(s) for s in spec.shape)
        self.num_classes = spec.num_classes
        model = build_model(spec.arch, self.shape, spec.num_classes)
        model.load_state_dict(state_dict)
        self.model = model.to(self.device).eval()
        data = spec.config.load_data() if spec.config is not None else None
        ctx = DefenseContext(victim=self.model, dataset=data, arch=spec.arch, seed=spec.seed, device=self.device)
        self.defense = build_defense(defense or DefenseConfig(), ctx)
        self.gate = gate or OpenGate()
        self._explain_rng = torch.Generator(self.device).manual_seed(derive_seed("explainer/sampling", spec.seed))
        self._explain_noise_rng = torch.Generator(self.device).manual_seed(derive_seed("defense/noise", spec.seed))
        self.clients: dict[str, ClientRecord] = {}
        self._log: list[dict] = []
        self._batches: list[tuple[int, float, float]] = []   # (images, forward_ms, defense_ms) per served batch
        self._served = 0                                       # served batches, queries and explanations
        self._queue: asyncio.Queue | None = None
        self._batcher_task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="victim-compute",
                                        initializer=torch.set_num_threads, initargs=(self.num_threads,))
        self._t0, self._wall0 = time.perf_counter(), time.time()
        self._torch = torch

    # ---------------------------------------------------------------- clients and ledger
    async def ready(self) -> dict:
        """Await construction; returns what the service serves and where."""
        self._ensure_batcher()
        return {"device": str(self.device), "shape": self.shape, "num_classes": self.num_classes,
                "threads": self.num_threads, "max_batch": self.cfg.max_batch,
                "forward_batch": self.forward_batch, "max_wait_ms": self.cfg.max_wait_ms,
                "max_request": self.cfg.max_request, "gate": type(self.gate).__name__}

    async def register(self, client_id: str, budget: int, kind: str = "attacker") -> None:
        """Register `client_id` with an image budget; registering an existing id raises."""
        if client_id in self.clients:
            raise ValueError(f"client {client_id!r} is already registered")
        if int(budget) < 0:
            raise ValueError(f"budget: expected >= 0, got {budget!r}")
        self.clients[client_id] = ClientRecord(str(client_id), int(budget), kind)

    async def ledger(self) -> dict[str, dict]:
        """Per-client totals: images, batches (requests), seconds, refused, rejected, budget, kind."""
        return {cid: rec.summary() for cid, rec in self.clients.items()}

    async def request_log(self, since: int = 0) -> list[dict]:
        """Per-request rows from index `since`: client, kind, seq, images, queue_ms, compute_ms,
        served_batch_images, batch (served-batch number), t (s since the service started), ts (unix time
        the request arrived)."""
        return self._log[since:]

    async def stats(self) -> dict:
        """Served-batch statistics; `defense_ms_mean` is the added (defended - clean) cost per batch."""
        b = np.asarray(self._batches, dtype=np.float64).reshape(-1, 3)
        n = len(b)
        return {"served_batches": n, "images": int(b[:, 0].sum()) if n else 0,
                "mean_batch_images": float(b[:, 0].mean()) if n else 0.0,
                "max_batch_images": int(b[:, 0].max()) if n else 0,
                "forward_ms_mean": float(b[:, 1].mean()) if n else 0.0,
                "defense_ms_mean": float(b[:, 2].mean()) if n else 0.0,
                "defense_us_per_image": float(b[:, 2].sum() * 1e3 / b[:, 0].sum()) if n else 0.0,
                "device": str(self.device), "threads": self.num_threads}

    # ---------------------------------------------------------------- the query path
    async def query(self, client_id: str, x) -> Any:
        """Answer client `client_id`'s batch x (n, C, H, W) with defended posteriors (n, K) float32."""
        rec = self._client(client_id)
        x = self._validate(rec, x)
        request = self._admit(rec, x)
        try:
            answer, l1, t_start, t_end, served, batch_id = await request.future
        except BaseException:
            rec.reserved -= len(x)
            raise
        self._charge(rec, request, l1, t_start, t_end, served, batch_id)
        return await self.gate.release(rec, request, answer)

    async def explain(self, client_id: str, x, mode: str = "top1", weights=None, explainer: str = "vanilla",
                      samples: int = 50, sigma: float = 0.15) -> Any:
        """Gradient explanations of client `client_id`'s batch x (workloads.explanations): the reply is
        (defended posteriors (n, K), explanations (n, rows, C, H, W)), both float32; charged
        `ExplainRequest.cost` victim evaluations per image."""
        from workloads.explanations import check_weights

        rec = self._client(client_id)
        request = self._explain_request(rec, x, mode, weights, explainer, samples, sigma)
        x = self._validate(rec, x)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
        try:
            check_weights(weights, len(x), self.num_classes, request.mode)
        except ValueError as e:
            rec.rejected += 1
            raise InvalidQuery(f"client {rec.client_id!r}: {e}") from None
        req = self._admit(rec, x, cost=len(x) * request.cost(self.num_classes), explain=(request, weights))
        try:
            answer, l1, t_start, t_end, served, batch_id = await req.future
        except BaseException:
            rec.reserved -= req.cost
            raise
        self._charge(rec, req, l1, t_start, t_end, served, batch_id)
        return await self.gate.release(rec, req, answer)

    def _explain_request(self, rec: ClientRecord, x, mode, weights, explainer, samples, sigma):
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

    def _client(self, client_id: str) -> ClientRecord:
        try:
            return self.clients[client_id]
        except KeyError:
            raise UnknownClient(f"client {client_id!r} is not registered with the service") from None

    def _validate(self, rec: ClientRecord, x) -> np.ndarray:
        def bad(field: str, msg: str):
            rec.rejected += 1
            return InvalidQuery(f"client {rec.client_id!r}: {field}: {msg}")

        if not isinstance(x, np.ndarray):
            raise bad("x", f"expected a numpy array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise bad("x.dtype", f"expected a floating-point array (float32), got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise bad("x.shape", f"expected (n, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        n = len(x)
        if not 1 <= n <= self.cfg.max_request:
            raise bad("x.n", f"expected 1..{self.cfg.max_request} images per request, got {n}")
        x = x.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            bad_rows = np.flatnonzero(~finite.reshape(n, -1).all(1))
            raise bad("x.values", f"{int((~finite).sum())} non-finite values (NaN/inf) in {len(bad_rows)} "
                                  f"image(s), first at image {int(bad_rows[0])}")
        return x

    def _admit(self, rec: ClientRecord, x: np.ndarray, cost: int = 0, explain=None) -> Request:
        from workloads.attacks import BudgetExceeded

        n = cost or len(x)
        used = rec.images + rec.reserved
        if used + n > rec.budget:
            rec.refused += 1
            what = f"a query of {n} images" if explain is None else f"an explanation of {len(x)} images ({n} evaluations)"
            raise BudgetExceeded(f"client {rec.client_id!r}: {what} exceeds its budget "
                                 f"({used} used, budget {rec.budget}); nothing was charged")
        rec.reserved += n
        request = Request(rec, rec.seq, x, asyncio.get_running_loop().create_future(), time.perf_counter(), n, explain)
        rec.seq += 1
        self._ensure_batcher()
        self._queue.put_nowait(request)
        return request

    def _charge(self, rec: ClientRecord, req: Request, l1: float, t_start: float, t_end: float, served: int,
                batch_id: int) -> None:
        n = req.cost
        rec.reserved -= n
        rec.images += n
        rec.batches += 1
        rec.seconds += t_end - req.t_submit
        rec.l1 += l1
        self._log.append({"client": rec.client_id, "kind": rec.kind, "seq": req.seq, "images": n, "l1": l1,
                          "request": "query" if req.explain is None else "explain", "inputs": len(req.x),
                          "queue_ms": (t_start - req.t_submit) * 1e3, "compute_ms": (t_end - t_start) * 1e3,
                          "served_batch_images": served, "batch": batch_id,
                          "t": req.t_submit - self._t0, "ts": self._wall0 + (req.t_submit - self._t0)})

    # ---------------------------------------------------------------- dynamic batching
    def _ensure_batcher(self) -> None:
        if self._batcher_task is None or self._batcher_task.done():
            self._queue = self._queue or asyncio.Queue()
            self._batcher_task = asyncio.get_running_loop().create_task(self._batcher())

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        max_batch, max_wait = self.cfg.max_batch, self.cfg.max_wait_ms / 1e3
        carry: Request | None = None
        while True:
            first = carry or await self._queue.get()
            carry, batch, n = None, [first], len(first.x)
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
                if n + len(req.x) > max_batch:
                    carry = req          # does not fit: it opens the next batch
                    break
                batch.append(req)
                n += len(req.x)
            await self._serve(batch, n)

    async def _serve(self, batch: list[Request], n: int) -> None:
        batch = [r for r in batch if not r.future.done()]      # cancelled callers
        groups: dict = {}                                      # queries (None) and each explanation setting
        for r in batch:
            groups.setdefault(None if r.explain is None else r.explain[0], []).append(r)
        for setting, requests in groups.items():
            await (self._serve_queries(requests) if setting is None else self._serve_explanations(setting, requests))

    async def _serve_explanations(self, request, batch: list[Request]) -> None:
        """One batched explanation computation for requests with the same ExplainRequest."""
        x = np.concatenate([r.x for r in batch])
        weights = np.concatenate([r.explain[1] for r in batch]) if request.mode == "vjp" else None
        t_start = time.perf_counter()
        try:
            probs, grads, l1 = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._compute_explanations, x, request, weights)
        except Exception as e:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(RuntimeError(f"victim explanation failed: {type(e).__name__}: {e}"))
            return
        t_end = time.perf_counter()
        batch_id, self._served = self._served, self._served + 1
        lo = 0
        for r in batch:
            hi = lo + len(r.x)
            if not r.future.done():
                r.future.set_result(((probs[lo:hi], grads[lo:hi]), float(l1[lo:hi].sum()), t_start, t_end, len(x),
                                     batch_id))
            lo = hi

    def _compute_explanations(self, x: np.ndarray, request, weights: np.ndarray | None):
        """Explanations (with explanation noise), the defended prediction at x and each row's
        ‖defended − clean‖₁. Runs in the compute thread."""
        from workloads.explanations import add_noise, explain

        torch = self._torch
        xt = torch.from_numpy(x).to(self.device)
        w = None if weights is None else torch.from_numpy(weights).to(self.device)
        probs, grads = explain(self.model, xt, request, w, generator=self._explain_rng)
        grads = add_noise(grads, self.cfg.explanation_noise, self._explain_noise_rng)
        with torch.inference_mode():
            answer = self.defense(probs, xt)
            l1 = (answer.double() - probs.double()).abs().sum(1).cpu().numpy()
        return answer.float().cpu().numpy(), grads.float().cpu().numpy(), l1

    async def _serve_queries(self, batch: list[Request]) -> None:
        x = np.concatenate([r.x for r in batch])               # a fresh, writable, contiguous buffer
        t_start = time.perf_counter()
        try:
            probs, l1, fwd_ms, def_ms = await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, x)
        except Exception as e:  # a model/defense failure fails this batch's requests, not the service
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(RuntimeError(f"victim forward failed: {type(e).__name__}: {e}"))
            return
        t_end = time.perf_counter()
        batch_id, self._served = self._served, self._served + 1
        self._batches.append((len(x), fwd_ms, def_ms))
        lo = 0
        for r in batch:
            hi = lo + len(r.x)
            if not r.future.done():
                r.future.set_result((probs[lo:hi], float(l1[lo:hi].sum()), t_start, t_end, len(x), batch_id))
            lo = hi

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


@ray.remote
class VictimService(_Service):
    """The Ray actor. `VictimService.options(num_cpus=..., num_gpus=...).remote(spec, state_ref, defense,
    service, gate=...)`; `service_actor(...)` does that from a ServiceConfig."""


def service_actor(spec: VictimSpec, state_dict_ref, defense, service, *, gate: Gate | None = None,
                  name: str | None = None):
    """Start a VictimService with the resources of `service` (a ServiceConfig); returns the actor handle.

    Torch in the actor gets max(1, floor(num_cpus)) threads; with num_gpus > 0 Ray sets
    CUDA_VISIBLE_DEVICES and the model goes to CUDA when torch sees it (fractional GPUs allowed).
    """
    opts = {"num_cpus": service.num_cpus, "num_gpus": service.num_gpus, "max_concurrency": 10_000}
    if name:
        opts["name"] = name
    return VictimService.options(**opts).remote(spec, state_dict_ref, defense, service, gate=gate)

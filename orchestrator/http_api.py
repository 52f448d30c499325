"""The HTTP front end of a served VictimService (`heist serve`): a Starlette ASGI app run by uvicorn.

Why Starlette + uvicorn in the `heist serve` process, forwarding each HTTP request as ONE call to the service
actor: the actor stays the single place where requests are validated, admitted, batched and charged, so its
dynamic batching (concurrent HTTP requests of all clients merge into one forward, exactly as attacker workers'
do), its budgets and its request log (the Parquet ledger trials write) stay exact — an HTTP request is answered
and charged by the same code path as a trial's query. Ray Serve was the other candidate: its replicas batch
on their own (`@serve.batch`) and each replica would need its own copy of the victim and ledger, so the budget
of one key would be split over replicas; keeping the one actor keeps one ledger. Starlette (not FastAPI on top)
because the bodies are raw `.npy` bytes and every error must be our own JSON object, not a validation schema's.

Endpoints (client key or owner token as `Authorization: Bearer <token>`):

    POST /v1/predict   client key; body .npy (Content-Type application/x-npy) or JSON {"x": nested list},
                       images (n, C, H, W) float in the value range; replies posteriors (n, K) float32 as JSON
                       {"posteriors": [...]} or as .npy when `Accept: application/x-npy`
    POST /v1/explain   client key, when the service serves explanations; JSON {"x", "mode", "explainer",
                       "samples", "sigma", "weights"}; replies {"posteriors", "explanations"} (or .npz)
    GET  /v1/budget    client key; {"client_id", "budget", "used", "reserved", "remaining"}
    GET  /v1/info      no key; what a client must know: input shape, classes, value range, max request,
                       body limit, rate limit, defense name, formats
    POST /v1/keys      owner token; JSON {"client_id", "budget", "kind"} -> {"client_id", "key", "budget"}
    GET  /v1/ledger    owner token; the service's per-client totals

Errors are JSON `{"error": {"status", "type", "field", "value", "message"}}` with the status: 400 malformed,
401 unknown or missing key, 402 over budget, 403 not the owner, 404/405 no such endpoint, 409 client id taken,
413 oversized (body over `max_body_bytes` or more images than `max_request`), 415 unsupported content type,
429 rate limited or too many images queued (with Retry-After), 500 the victim failed, 503 the service died,
504 timed out. A refused request is not charged and writes no ledger row (the service's refusal counters —
`rejected`, `refused`, `throttled` in `/v1/ledger` — count the ones that reached it). Only a 504 may still be
charged: the service answers a request it accepted even when the HTTP caller stopped waiting.

No pickle anywhere: `.npy` is read with `allow_pickle=False` and object arrays are refused.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import math
import re
import time
from typing import Any

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.admission import InvalidQuery, NotOwner, Overloaded, UnknownClient, VictimFailure

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON_TYPE = "application/json"
NPY_TYPES = (NPY, "application/npy", "application/octet-stream")


class ApiError(Exception):
    """An HTTP error reply: status, the request field at fault and its value, a one-line message."""

    def __init__(self, status: int, field: str, value: Any, message: str, kind: str = "ApiError",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.value, self.message, self.kind = status, field, value, message, kind
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        value = self.value if isinstance(self.value, (int, float, str, bool, type(None), list, dict)) else str(self.value)
        return JSONResponse({"error": {"status": self.status, "type": self.kind, "field": self.field, "value": value,
                                       "message": self.message}}, status_code=self.status, headers=self.headers)


class TokenBucket:
    """`rate` requests per second with bursts of up to `burst` (the classic token bucket)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.t = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a request may go now (a token is taken), else the seconds until the next token."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


_SERVICE_FIELD = re.compile(r"^(?:client '.*?'|register): ([A-Za-z_][\w.\[\]]*): (.*)$")


def _service_error(e: Exception, status: int) -> ApiError:
    """An ApiError for a service exception whose message reads `client 'id': field: message ... got value`."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    m = _SERVICE_FIELD.match(text)
    field, rest = (m.group(1), m.group(2)) if m else ("x", text)
    got = rest.rpartition("got ")[2] if "got " in rest else None
    return ApiError(status, field, got, text, type(e).__name__)


class Frontend:
    """The app's state: the service actor and its owner token, the victim's interface, the HTTP limits, the keys
    issued through `POST /v1/keys` (key -> client id) and one rate bucket per key."""

    def __init__(self, service, owner: str, interface: dict, http, defense: str, victim: dict | None = None):
        self.service, self.owner, self.http = service, owner, http
        self.interface = interface
        self.shape = tuple(int(s) for s in interface["shape"])
        self.max_request = int(interface["max_request"])
        self.max_body = http.body_limit(self.shape, self.max_request)
        self.explanations = bool(interface.get("explanations", False))
        self.defense = defense
        self.victim = victim or {}
        self.keys: dict[str, str] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def info(self) -> dict:
        lo, hi = self.interface["input_range"]
        return {"input_shape": list(self.shape), "num_classes": int(self.interface["num_classes"]),
                "classes": list(range(int(self.interface["num_classes"]))), "value_range": [lo, hi],
                "dtype": "float32", "max_request": self.max_request, "max_body_bytes": self.max_body,
                "rate_limit": self.http.rate_limit, "burst": self.http.burst, "defense": self.defense,
                "explanations": self.explanations, "request_formats": [NPY, JSON_TYPE],
                "response_formats": [JSON_TYPE, NPY], **self.victim}

    # ------------------------------------------------------------------ calls to the service actor
    async def call(self, ref, n: int | None = None) -> Any:
        """Await a service call; its exceptions as ApiErrors (`n`: the images of the request, for a 402's value)."""
        try:
            return await asyncio.wait_for(ref, self.http.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "request", self.http.request_timeout_s,
                           f"no answer within {self.http.request_timeout_s:g} s (http.request_timeout_s); an "
                           f"accepted request is still answered and charged", "Timeout") from None
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            raise self._error(cause, n) from None
        except RayActorError as e:
            raise ApiError(503, "service", None, f"the victim service died ({str(e).strip().splitlines()[0]})",
                           "ServiceDied") from None

    def _error(self, e: BaseException, n: int | None = None) -> ApiError:
        from workloads.attacks import BudgetExceeded

        if isinstance(e, UnknownClient):
            return ApiError(401, "Authorization", None, str(e), "UnknownClient")
        if isinstance(e, BudgetExceeded):
            return ApiError(402, "x.n", n, str(e), "BudgetExceeded")
        if isinstance(e, Overloaded):
            return ApiError(429, "x.n", n, str(e), "Overloaded", {"Retry-After": "1"})
        if isinstance(e, NotOwner):
            return ApiError(403, "Authorization", None, str(e), "NotOwner")
        if isinstance(e, InvalidQuery):
            return _service_error(e, 400)
        if isinstance(e, VictimFailure):
            return _service_error(e, 500)
        if isinstance(e, ValueError):
            return _service_error(e, 400)
        return ApiError(500, "service", None, f"{type(e).__name__}: {e}", type(e).__name__)

    # ------------------------------------------------------------------ request parts
    def bearer(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization", auth[:16] or None,
                           "Authorization: expected 'Bearer <key>' with the API key the owner issued", "MissingKey")
        return token.strip()

    def client_key(self, request: Request, limited: bool = True) -> str:
        """The caller's key; 401 for a key this front end never issued, 429 when its rate bucket is empty."""
        key = self.bearer(request)
        if key not in self.keys:
            raise ApiError(401, "Authorization", key[:4] + "...",
                           "Authorization: unknown API key (not issued by this server's owner)", "UnknownClient")
        if limited and self.http.rate_limit > 0:
            wait = self.buckets[key].take()
            if wait > 0:
                raise ApiError(429, "rate", self.http.rate_limit,
                               f"client {self.keys[key]!r}: rate limit of {self.http.rate_limit:g} requests/s "
                               f"(burst {self.http.burst}) reached; retry in {wait:.2f} s; nothing was charged",
                               "RateLimited", {"Retry-After": str(max(1, math.ceil(wait)))})
        return key

    def check_owner(self, request: Request) -> None:
        token = self.bearer(request)
        if not hmac.compare_digest(token.encode(), self.owner.encode()):
            raise ApiError(403, "Authorization", None, "Authorization: this endpoint needs the owner token", "NotOwner")

    async def body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes `max_body_bytes`."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "Content-Length", length, f"Content-Length: expected a byte count, got {length!r}")
            if int(length) > self.max_body:
                raise ApiError(413, "body", int(length), f"body: {length} bytes exceeds the limit of {self.max_body} "
                                                         f"bytes (http.max_body_bytes); send fewer images per request",
                               "TooLarge")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, "body", size, f"body: more than {self.max_body} bytes (http.max_body_bytes)",
                               "TooLarge")
            chunks.append(chunk)
        return b"".join(chunks)

    def images(self, x: Any, field: str = "x") -> np.ndarray:
        """x as a float array; 400 when it is not numbers, 413 when it holds more than max_request images."""
        try:
            arr = np.asarray(x, dtype=np.float32) if not isinstance(x, np.ndarray) else x
        except (TypeError, ValueError) as e:
            raise ApiError(400, field, None, f"{field}: expected a nested list of numbers of shape (n, "
                                             f"{', '.join(map(str, self.shape))}) ({e})", "InvalidQuery") from None
        if arr.dtype.kind not in "fiu":
            raise ApiError(400, f"{field}.dtype", str(arr.dtype), f"{field}.dtype: expected float32, got {arr.dtype}",
                           "InvalidQuery")
        if arr.ndim >= 1 and len(arr) > self.max_request:
            raise ApiError(413, f"{field}.n", int(len(arr)), f"{field}.n: {len(arr)} images in one request; at most "
                                                              f"{self.max_request} (max_request)", "TooLarge")
        return arr

    async def decode(self, request: Request) -> tuple[np.ndarray, dict]:
        """The images of a request body (.npy or JSON) and, for JSON, the other fields."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in NPY_TYPES + (JSON_TYPE,):
            raise ApiError(415, "Content-Type", ctype or None,
                           f"Content-Type: expected {NPY} or {JSON_TYPE}, got {ctype or 'none'!r}", "UnsupportedType")
        body = await self.body(request)
        if ctype in NPY_TYPES:
            if not body.startswith(b"\x93NUMPY"):
                raise ApiError(400, "body", f"{len(body)} bytes", "body: not a .npy file (it must start with the "
                                                                  "\\x93NUMPY magic; numpy.save writes one)", "Malformed")
            try:
                arr = np.load(io.BytesIO(body), allow_pickle=False)
            except Exception as e:
                raise ApiError(400, "body", f"{len(body)} bytes",
                               f"body: not a .npy array without pickled objects ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})", "Malformed") from None
            if not isinstance(arr, np.ndarray):
                raise ApiError(400, "body", type(arr).__name__, "body: expected one .npy array", "Malformed")
            return self.images(arr), {}
        try:
            data = json.loads(body)
        except ValueError as e:
            raise ApiError(400, "body", f"{len(body)} bytes", f"body: not JSON ({e})", "Malformed") from None
        if not isinstance(data, dict) or "x" not in data:
            raise ApiError(400, "x", None, "x: required (the JSON body is {\"x\": [[[[...]]]]})", "Malformed")
        return self.images(data["x"]), data

    @staticmethod
    def reply(request: Request, arrays: dict[str, np.ndarray]) -> Response:
        accept = request.headers.get("accept", "")
        if NPY in accept and len(arrays) == 1:
            buf = io.BytesIO()
            np.save(buf, next(iter(arrays.values())), allow_pickle=False)
            return Response(buf.getvalue(), media_type=NPY)
        if NPZ in accept:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return Response(buf.getvalue(), media_type=NPZ)
        return JSONResponse({k: v.tolist() for k, v in arrays.items()})


def build_app(front: Frontend) -> Starlette:
    """The Starlette app of a Frontend."""

    def endpoint(fn):
        async def handle(request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as e:
                return e.response()
        return handle

    async def predict(request: Request) -> Response:
        key = front.client_key(request)
        x, _ = await front.decode(request)
        answer = await front.call(front.service.query.remote(key, x), len(x) if x.ndim else None)
        return front.reply(request, {"posteriors": answer})

    async def explain(request: Request) -> Response:
        key = front.client_key(request)
        if not front.explanations:
            raise ApiError(404, "path", "/v1/explain", "explanations are off for this service "
                                                       "(service.explanations: false)", "NotServed")
        x, data = await front.decode(request)
        unknown = sorted(set(data) - {"x", "mode", "explainer", "samples", "sigma", "weights"})
        if unknown:
            raise ApiError(400, unknown[0], data[unknown[0]], f"{unknown[0]}: unknown field", "Malformed")
        opts = {k: data[k] for k in ("mode", "explainer", "samples", "sigma") if k in data}
        weights = front.images(data["weights"], "weights") if data.get("weights") is not None else None
        posteriors, explanations = await front.call(front.service.explain.remote(key, x, weights=weights, **opts),
                                                    len(x) if x.ndim else None)
        return front.reply(request, {"posteriors": posteriors, "explanations": explanations})

    async def budget(request: Request) -> Response:
        key = front.client_key(request, limited=False)
        usage = await front.call(front.service.usage.remote(key))
        return JSONResponse({"client_id": usage["client_id"], "budget": usage["budget"], "used": usage["images"],
                             "reserved": usage["reserved"],
                             "remaining": usage["budget"] - usage["images"] - usage["reserved"]})

    async def info(request: Request) -> Response:
        return JSONResponse(front.info())

    async def keys(request: Request) -> Response:
        front.check_owner(request)
        try:
            data = json.loads(await front.body(request))
        except ValueError as e:
            raise ApiError(400, "body", None, f"body: not JSON ({e})", "Malformed") from None
        if not isinstance(data, dict) or set(data) - {"client_id", "budget", "kind"}:
            bad = sorted(set(data) - {"client_id", "budget", "kind"})[0] if isinstance(data, dict) else "body"
            raise ApiError(400, bad, None, f"{bad}: expected a JSON object with client_id, budget and kind",
                           "Malformed")
        client_id, kind = data.get("client_id"), data.get("kind", "attacker")
        if client_id in front.keys.values():
            raise ApiError(409, "client_id", client_id, f"client_id: {client_id!r} already has a key", "Conflict")
        key = await front.call(front.service.register.remote(front.owner, client_id, data.get("budget"), kind,
                                                             {"client_kind": kind if isinstance(kind, str) else ""}))
        front.keys[key] = client_id
        if front.http.rate_limit > 0:
            front.buckets[key] = TokenBucket(front.http.rate_limit, front.http.burst)
        return JSONResponse({"client_id": client_id, "key": key, "budget": data.get("budget"), "kind": kind},
                            status_code=201)

    async def ledger(request: Request) -> Response:
        front.check_owner(request)
        return JSONResponse(await front.call(front.service.ledger.remote(front.owner)))

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return ApiError(status, "path", request.url.path, f"path: no endpoint {request.method} {request.url.path} "
                                                          f"(see GET /v1/info)", "NotFound").response()

    routes = [Route("/v1/predict", endpoint(predict), methods=["POST"]),
              Route("/v1/explain", endpoint(explain), methods=["POST"]),
              Route("/v1/budget", endpoint(budget), methods=["GET"]),
              Route("/v1/info", endpoint(info), methods=["GET"]),
              Route("/v1/keys", endpoint(keys), methods=["POST"]),
              Route("/v1/ledger", endpoint(ledger), methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})

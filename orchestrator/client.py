"""A small Python client of `heist serve` (see orchestrator/http_api.py). Needs only numpy and the standard
library: importing it imports neither Ray nor torch, so any attack tool can use it.

    from orchestrator.client import Client
    victim = Client("http://127.0.0.1:8000", key)       # the key `heist serve-keys` printed
    victim.info()          # input_shape, num_classes, value_range, max_request, defense, ...
    probs = victim.predict(x)                           # x: (n, C, H, W) float32 in value_range -> (n, K)
    victim.remaining()     # images left in this key's budget

`predict` splits x into requests of at most the server's `max_request` images (and its body limit) and sends
them one after another over one kept-alive connection (one Client per thread). Budget: with
`all_or_nothing=True` (the default) a call the remaining budget cannot cover is refused before anything is
sent (`OverBudget`, nothing charged; a call of one request is refused whole by the server, a longer one by
checking `remaining()` first); with `all_or_nothing=False` the images the budget covers are sent and
answered, then `OverBudget` is raised carrying those answers (`e.answered`), so nothing charged is lost.
(Another holder of the same key can still spend the budget between the check and the requests; then too the
answers already charged come back in `e.answered`.) A 429 (rate limit, or too many images queued) is retried
after the server's Retry-After, for at most `max_wait_s` in total per call.

Every server error is raised as `HeistError` (or its subclass `OverBudget` for 402) with the server's `status`,
`field`, `value` and `message`.
"""
from __future__ import annotations

import http.client
import io
import json
import time
import urllib.parse

import numpy as np

NPY = "application/x-npy"


class HeistError(Exception):
    """An error reply of the server: HTTP `status`, the request `field` at fault, its `value`, the `message`."""

    def __init__(self, status: int, field: str | None, value, message: str, kind: str = ""):
        super().__init__(f"{status} {kind}: {message}" if kind else f"{status}: {message}")
        self.status, self.field, self.value, self.message, self.kind = status, field, value, message, kind


class OverBudget(HeistError):
    """The key's budget cannot cover the call. `answered` holds the posteriors of the leading images that were
    answered (and charged) before the refusal; None when nothing was sent."""

    def __init__(self, message: str, answered: np.ndarray | None = None, status: int = 402, value=None):
        super().__init__(status, "budget", value, message, "OverBudget")
        self.answered = answered


class _Connection:
    """One kept-alive HTTP/1.1 connection to the server; reconnects when the server closed it."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http://host:port, got {url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one request. A kept-alive connection the server has closed while idle
        is reopened and the request sent once more (the server closed it before reading the request)."""
        reused = self.conn is not None
        try:
            return self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
        return self._send(method, path, body, headers)

    def _send(self, method, path, body, headers):
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self.conn = cls(self.host, self.port, timeout=self.timeout)
        self.conn.request(method, self.prefix + path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.headers, resp.read()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _raise_for(status: int, body: bytes, answered: np.ndarray | None = None) -> None:
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        raise HeistError(status, None, None, body[:200].decode("utf-8", "replace")) from None
    if status == 402:
        raise OverBudget(err["message"], answered, value=err.get("value"))
    raise HeistError(status, err.get("field"), err.get("value"), err.get("message", ""), err.get("type", ""))


class Client:
    """A client of one `heist serve` API key. Not thread-safe: use one Client per thread."""

    def __init__(self, url: str, key: str, *, all_or_nothing: bool = True, timeout_s: float = 120.0,
                 max_wait_s: float = 60.0):
        self.url, self.key = url.rstrip("/"), key
        self.all_or_nothing = all_or_nothing
        self.max_wait_s = float(max_wait_s)
        self._http = _Connection(self.url, timeout_s)
        self._info: dict | None = None

    # ---------------------------------------------------------------------- plain calls
    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              accept: str = "application/json", deadline: float | None = None):
        headers = {"Authorization": f"Bearer {self.key}", "Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        deadline = deadline if deadline is not None else time.monotonic() + self.max_wait_s
        while True:
            status, resp_headers, data = self._http.request(method, path, body, headers)
            if status != 429:
                return status, resp_headers, data
            wait = float(resp_headers.get("Retry-After", 1))
            if time.monotonic() + wait > deadline:
                return status, resp_headers, data
            time.sleep(wait)

    def _json(self, method: str, path: str) -> dict:
        status, _, data = self._call(method, path)
        if status != 200:
            _raise_for(status, data)
        return json.loads(data)

    def info(self) -> dict:
        """What the server says a client must know: input_shape, num_classes, value_range, max_request,
        max_body_bytes, rate_limit, defense, explanations (cached after the first call)."""
        if self._info is None:
            self._info = self._json("GET", "/v1/info")
        return self._info

    def budget(self) -> dict:
        """This key's budget, used (answered), reserved (queued) and remaining images."""
        return self._json("GET", "/v1/budget")

    def remaining(self) -> int:
        """Images this key may still have answered."""
        return int(self.budget()["remaining"])

    # ---------------------------------------------------------------------- predictions
    def request_size(self) -> int:
        """Images per request: the server's max_request, fewer when its body limit is smaller."""
        info = self.info()
        image_bytes = 4 * int(np.prod(info["input_shape"]))
        return max(1, min(int(info["max_request"]), (int(info["max_body_bytes"]) - 256) // image_bytes))

    def predict(self, x) -> np.ndarray:
        """Defended posteriors (n, K) float32 for images x (n, C, H, W); charges n images (see the module
        docstring for the budget modes)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x: expected a batch of images (n, C, H, W) with n >= 1, got shape {x.shape}")
        n, size = len(x), self.request_size()
        if n > size or not self.all_or_nothing:    # one request is refused whole by the server: no check needed
            remaining = self.remaining()
            if n > remaining:
                if self.all_or_nothing:
                    raise OverBudget(f"a call of {n} images exceeds the {remaining} images left in this key's "
                                     f"budget; nothing was sent (all_or_nothing)", value=n)
                x = x[:remaining]
        answers: list[np.ndarray] = []
        for lo in range(0, len(x), size):
            buf = io.BytesIO()
            np.save(buf, x[lo:lo + size], allow_pickle=False)
            status, _, data = self._call("POST", "/v1/predict", buf.getvalue(), NPY, NPY)
            if status != 200:
                _raise_for(status, data, np.concatenate(answers) if answers else None)
            answers.append(np.load(io.BytesIO(data), allow_pickle=False))
        answered = np.concatenate(answers) if answers else np.zeros((0, self.info()["num_classes"]), np.float32)
        if len(x) < n:
            raise OverBudget(f"{n} images asked, the budget covered {len(x)}: those were answered (in "
                             f"`answered`), the rest not sent", answered, value=n)
        return answered

    def explain(self, x, mode: str = "top1", explainer: str = "vanilla", samples: int = 50, sigma: float = 0.15,
                weights=None) -> tuple[np.ndarray, np.ndarray]:
        """(defended posteriors, gradient explanations) for one request of images x, when the service serves
        explanations; charged the service's victim evaluations per image."""
        body = {"x": np.asarray(x, dtype=np.float32).tolist(), "mode": mode, "explainer": explainer,
                "samples": samples, "sigma": sigma}
        if weights is not None:
            body["weights"] = np.asarray(weights, dtype=np.float32).tolist()
        status, _, data = self._call("POST", "/v1/explain", json.dumps(body).encode(), "application/json",
                                     "application/x-npz")
        if status != 200:
            _raise_for(status, data)
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        return arrays["posteriors"], arrays["explanations"]

    def predict_fn(self):
        """`predict` as a plain function x -> posteriors (what black-box wrappers such as ART's take)."""
        return self.predict

    def close(self) -> None:
        self._http.close()


def _owner_call(url: str, owner_token: str, method: str, path: str, body: dict | None = None) -> dict:
    conn = _Connection(url.rstrip("/"), 60.0)
    try:
        headers = {"Authorization": f"Bearer {owner_token}", "Content-Type": "application/json"}
        status, _, data = conn.request(method, path, None if body is None else json.dumps(body).encode(), headers)
    finally:
        conn.close()
    if status not in (200, 201):
        _raise_for(status, data)
    return json.loads(data)


def issue_key(url: str, owner_token: str, client_id: str, budget: int, kind: str = "attacker") -> str:
    """Issue an API key for `client_id` with an image budget (owner only); returns the key."""
    return _owner_call(url, owner_token, "POST", "/v1/keys",
                       {"client_id": client_id, "budget": budget, "kind": kind})["key"]


def ledger(url: str, owner_token: str) -> dict:
    """The server's per-client totals (owner only): images, batches, refused, rejected, throttled, budget, ..."""
    return _owner_call(url, owner_token, "GET", "/v1/ledger")

"""`heist serve X.yaml`: a defended victim as a long-lived HTTP prediction API (see orchestrator/http_api.py
for the endpoints and why the front end forwards to one VictimService actor).

The command loads the victim (from the victim cache, training it once, or from `victim.checkpoint`), starts a
named VictimService actor with the config's defense and service settings, streaming its request log (the same
Parquet ledger a trial writes) to `<state_dir>/ledger/`, writes the owner token to `<state_dir>/owner_token`
(mode 0600) and `<state_dir>/server.json` (url, pid, paths), then serves HTTP until SIGINT or SIGTERM. On
either signal it stops accepting connections, lets the requests in flight finish (they are charged), writes
the rest of the request log and the per-client totals (`<state_dir>/ledger.json`), stops the actor and exits 0.
The request log is also flushed every `http.flush_every_s` seconds, so a crash loses at most that much.

Keys: the owner issues each client an API key with an image budget, `heist serve-keys URL CLIENT_ID BUDGET`
(reads the owner token from `<state_dir>/owner_token`) or `POST /v1/keys` with the owner token. Keys and budgets
live as long as the server: a restarted server starts a new ledger and issues new keys.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from orchestrator.config import ServiceConfig
from orchestrator.errors import UserError
from workloads.config import ConfigError, above, parse, positive
from workloads.defenses import DefenseConfig
from workloads.victims import VictimConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """The HTTP front end: where it listens and what it lets through."""

    host: str = "127.0.0.1"          # loopback by default; any other address exposes the API beyond this machine
    port: int = 8000                 # 0 = any free port (written to server.json and printed)
    max_body_bytes: int | None = None   # request body limit; None = what max_request images need as JSON
    rate_limit: float = 0.0          # requests per second per API key (predict, explain); 0 = unlimited
    burst: int = 10                  # requests a key may send at once before the rate limit applies
    request_timeout_s: float = 60.0  # the longest a request waits for the service (then 504)
    flush_every_s: float = 10.0      # write the buffered request log to Parquet this often (0 = only at exit)
    graceful_s: float = 10.0         # on SIGINT/SIGTERM, how long requests in flight may take to finish

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host: expected an address, got {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0..65535, got {self.port!r}")
        if self.max_body_bytes is not None:
            positive("max_body_bytes", self.max_body_bytes, 1024)
        positive("rate_limit", self.rate_limit, 0)
        positive("burst", self.burst)
        above("request_timeout_s", self.request_timeout_s)
        positive("flush_every_s", self.flush_every_s, 0)
        positive("graceful_s", self.graceful_s, 0)

    def body_limit(self, shape: tuple[int, ...], max_request: int) -> int:
        """The body limit: `max_body_bytes`, else room for max_request images as JSON (about 24 bytes a value)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        values = max_request
        for s in shape:
            values *= int(s)
        return 24 * values + 4096


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`heist serve`: which victim, behind which defense and service settings, on which address."""

    name: str = "heist-victim"       # the service actor's Ray name (ray list actors)
    victim: VictimConfig = VictimConfig()
    defense: DefenseConfig = DefenseConfig()
    service: ServiceConfig = ServiceConfig()
    http: HttpConfig = HttpConfig()
    state_dir: str | None = None     # owner token, server.json, ledger/; None = ./heist-serve/<name>
    cache_dir: str | None = None     # victim cache; None = ~/.cache/heist/victims
    startup_timeout_s: float = 600.0  # the longest the service actor may take to start

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ConfigError(f"name: expected a name without '/', got {self.name!r}")
        if self.defense.name == "pow":
            raise ConfigError("defense.name: the HTTP front end does not serve the proof-of-work challenge yet; "
                              "got 'pow'")
        above("startup_timeout_s", self.startup_timeout_s)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or Path("heist-serve") / self.name).expanduser().resolve()


def load_serve(path, overrides=()) -> ServeConfig:
    """The ServeConfig of a YAML file with `--set KEY=VALUE` overrides applied (`--set defense.name=X` to another
    defense drops the file's defense params: they belong to the other defense)."""
    from orchestrator.trial import apply_override
    from workloads.config import load_yaml

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top of the YAML, got {type(data).__name__}")
    names = [a.partition("=")[2].strip() for a in overrides if a.partition("=")[0].strip() == "defense.name"]
    if names and (data.get("defense") or {}).get("name", "none") != names[-1]:
        data["defense"] = {"name": names[-1], "params": {}}
    for assignment in overrides:
        apply_override(data, assignment)
    return parse(ServeConfig, data)


def _check_state_dir(state: Path) -> Path:
    """The run's ledger directory; refuses a state dir that holds an earlier run's ledger (it would be overwritten)."""
    ledger = state / "ledger"
    if any(ledger.glob("part-*.parquet")) or (state / "ledger.json").exists():
        raise ConfigError(f"state_dir: {str(state)!r} holds the ledger of an earlier run; move it away or set "
                          f"another state_dir")
    ledger.mkdir(parents=True, exist_ok=True)
    return ledger


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)   # IPPROTO_TCP: asyncio then sets
                                                                           # TCP_NODELAY (else +40 ms a reply)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"http.port: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's Server with its signal handling left to `serve_http` (which flushes the ledger before exiting)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve_http(front, sock: socket.socket, http: HttpConfig, stop: asyncio.Event | None = None) -> None:
    """Serve the front end's app on `sock` until SIGINT/SIGTERM (main thread) or `stop` is set; then let requests in
    flight finish (`http.graceful_s`) and return. Flushes the request log every `http.flush_every_s`."""
    import threading

    from orchestrator.http_api import build_app

    config = uvicorn.Config(build_app(front), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=http.graceful_s, timeout_keep_alive=30)
    server = _Server(config)
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        def on_signal():
            server.force_exit = server.should_exit     # a second signal stops waiting for requests in flight
            server.should_exit = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)

    async def flusher():
        while http.flush_every_s > 0:
            await asyncio.sleep(http.flush_every_s)
            await front.service.flush_log.remote(front.owner)

    async def watch_stop():
        await stop.wait()
        server.should_exit = True

    tasks = [loop.create_task(flusher())] + ([loop.create_task(watch_stop())] if stop is not None else [])
    try:
        await server.serve(sockets=[sock])
    finally:
        for t in tasks:
            t.cancel()


def run(cfg: ServeConfig) -> int:
    """Serve `cfg` until SIGINT/SIGTERM; leaves the complete ledger in `<state_dir>/ledger`."""
    import ray

    from orchestrator.http_api import Frontend
    from orchestrator.service import VictimSpec, service_actor
    from orchestrator.trial import _kill
    from orchestrator.waits import wait_for
    from workloads.victims import load_or_train

    state = cfg.state_path
    ledger_dir = _check_state_dir(state)
    sock = _bind(cfg.http.host, cfg.http.port)
    if cfg.http.host not in LOOPBACK:
        print(f"heist serve: warning: listening on {cfg.http.host}: API keys travel in clear text over HTTP; put a "
              f"TLS proxy in front", file=sys.stderr)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    service = None
    try:
        total = ray.cluster_resources()
        for field, res, amount in (("service.num_cpus", "CPU", cfg.service.num_cpus),
                                   ("service.num_gpus", "GPU", cfg.service.num_gpus)):
            if amount > total.get(res, 0.0):
                raise ConfigError(f"{field}: {amount:g} {res} requested, but the Ray cluster has "
                                  f"{total.get(res, 0.0):g} {res} in total")
        victim = load_or_train(cfg.victim, cfg.cache_dir)
        data = victim.data
        spec = VictimSpec(cfg.victim.arch, data.shape, data.num_classes, config=cfg.victim, seed=cfg.victim.seed)
        service, owner = service_actor(spec, ray.put(victim.model.state_dict()), cfg.defense, cfg.service,
                                       name=cfg.name, log_dir=str(ledger_dir))
        interface = wait_for(service.ready.remote(), "the victim service to start", cfg.startup_timeout_s)
        interface["explanations"] = cfg.service.explanations
        front = Frontend(service, owner, interface, cfg.http, cfg.defense.name,
                         {"dataset": cfg.victim.dataset, "arch": cfg.victim.arch, "victim_key": cfg.victim.key})
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        _write_private(state / "owner_token", owner + "\n")
        (state / "server.json").write_text(json.dumps(
            {"url": url, "pid": os.getpid(), "name": cfg.name, "owner_token_file": str(state / "owner_token"),
             "ledger_dir": str(ledger_dir), "victim_accuracy": victim.accuracy, "victim_key": cfg.victim.key,
             "defense": cfg.defense.name}, indent=2) + "\n")
        print(f"heist serve: {cfg.name} ({cfg.victim.dataset} {cfg.victim.arch}, test accuracy "
              f"{victim.accuracy:.4f}, defense {cfg.defense.name}) on {url}\n"
              f"heist serve: owner token in {state / 'owner_token'}; ledger in {ledger_dir}\n"
              f"heist serve: issue a key: heist serve-keys {url} CLIENT_ID BUDGET --state-dir {state}", flush=True)
        asyncio.run(serve_http(front, sock, cfg.http))
        wait_for(service.flush_log.remote(owner), "the service to write its request log", cfg.http.request_timeout_s)
        totals = wait_for(service.ledger.remote(owner), "the service's ledger", cfg.http.request_timeout_s)
        (state / "ledger.json").write_text(json.dumps(totals, indent=2) + "\n")
        images = sum(t["images"] for t in totals.values())
        print(f"heist serve: stopped; {images} images charged to {len(totals)} client(s); ledger in {ledger_dir}",
              flush=True)
        return 0
    finally:
        sock.close()
        if service is not None:
            _kill([service])
        if started and ray.is_initialized():
            ray.shutdown()


def main(args) -> int:
    """`heist serve CONFIG [--set k=v ...]`."""
    return run(load_serve(args.config, getattr(args, "set", None) or []))

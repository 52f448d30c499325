"""`heist bench --serve`: HTTP predict throughput of `heist serve` vs the actor path vs the raw forward.

In one run, for the LeNet of `--dataset` (random weights, uniform-noise images, no defense):

* raw: forward + softmax in this process in batches of `--batch` (and of the service's forward size), the
  service actor's torch thread count (`heist bench`'s raw rows);
* actor: N AttackerWorker actors send the images in requests of `--batch` through one VictimService, ONE
  request in flight per worker (`heist bench`'s service rows with in_flight 1);
* http: N client processes (orchestrator.client.Client, one kept-alive connection each, one request in flight)
  send the same images as `.npy` requests of `--batch` to the HTTP front end of `heist serve` (run in a thread
  of this process, as in the command), which forwards each to its own VictimService with the same settings.

Images/s are from the first client's start to the last one's end, best of `repeats`; `ratio` divides by the
best raw figure of the run, `vs actor` by the actor row with the same N. Every client, the front end and the
actor share this machine's cores, so on a small machine the figures show contention as much as overhead.
"""
from __future__ import annotations

import time

import numpy as np


def _http_client(url: str, key: str, x_path: str, lo: int, hi: int, batch: int, ready, go, out) -> None:
    """A client process: connect and warm up, say `ready`, wait for `go`, send x[lo:hi] in requests of `batch`;
    put (start, end, images)."""
    from orchestrator.client import Client

    x = np.load(x_path, mmap_mode="r")
    client = Client(url, key)
    client.predict(np.array(x[lo:lo + 1]))           # connect and warm up (charged, not timed)
    ready.put(1)
    go.wait()
    t0 = time.time()
    for i in range(lo, hi, batch):
        client.predict(np.array(x[i:min(i + batch, hi)]))
    out.put((t0, time.time(), hi - lo))
    client.close()


def _http_rows(model, shape, x: np.ndarray, workers, batch: int, cfg, repeats: int, tmp: str) -> list[dict]:
    import asyncio
    import multiprocessing
    import threading

    import ray

    from orchestrator.http_api import Frontend
    from orchestrator.serve import HttpConfig, _bind, serve_http
    from orchestrator.service import VictimSpec, service_actor
    from orchestrator.trial import _kill

    service, owner = service_actor(VictimSpec("lenet5", shape, 10), ray.put(model.state_dict()), None, cfg)
    http = HttpConfig(port=0, flush_every_s=0)
    loop, stop, thread = asyncio.new_event_loop(), None, None
    try:
        interface = ray.get(service.ready.remote())
        front = Frontend(service, owner, interface, http, "none")
        keys = [ray.get(service.register.remote(owner, f"http-{i}", 10**12)) for i in range(max(workers))]
        front.keys.update({k: f"http-{i}" for i, k in enumerate(keys)})
        sock = _bind("127.0.0.1", 0)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        stop = asyncio.Event()
        thread = threading.Thread(target=loop.run_until_complete, args=(serve_http(front, sock, http, stop),),
                                  daemon=True)
        thread.start()
        x_path = f"{tmp}/x.npy"
        np.save(x_path, x)
        ctx = multiprocessing.get_context("spawn")
        rows = []
        for n in workers:
            bounds = np.linspace(0, len(x), n + 1).astype(int)
            runs = []
            for _ in range(repeats):
                ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
                procs = [ctx.Process(target=_http_client, args=(url, keys[i], x_path, int(bounds[i]),
                                                                int(bounds[i + 1]), batch, ready, go, out))
                         for i in range(n)]
                for p in procs:
                    p.start()
                for _ in procs:
                    ready.get(timeout=120)
                go.set()
                timed = [out.get(timeout=600) for _ in procs]
                for p in procs:
                    p.join()
                span = max(e for _, e, _ in timed) - min(s for s, _, _ in timed)
                runs.append(sum(k for _, _, k in timed) / span)
            rows.append({"config": f"http, {n} client{'s' if n > 1 else ''}", "workers": n, "path": "http",
                         "images_per_s": max(runs), "median_images_per_s": float(np.median(runs))})
        return rows
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(30)
        _kill([service])


def run_serve_bench(dataset: str = "fashion_mnist", workers=(1, 4, 8), batch: int = 256, images: int = 20480,
                    repeats: int = 3, num_cpus: float = 1.0, seed: int = 0) -> list[dict]:
    """Raw forward, actor path and HTTP path rows of one run (see the module docstring)."""
    import tempfile

    import ray

    from orchestrator.bench import SHAPES, TUNED, run_bench
    from orchestrator.config import ServiceConfig
    from workloads.models import build_model

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rows = run_bench(dataset, workers, batch, images, in_flight=1, num_cpus=num_cpus, repeats=repeats, seed=seed)
        for r in rows:
            r["path"] = "raw" if r["workers"] == 0 else "actor"
            r["config"] = r["config"].replace("service,", "actor,")
        shape = SHAPES[dataset]
        tuned = TUNED.get(dataset, TUNED["fashion_mnist"])
        cfg = ServiceConfig(max_batch=tuned["max_batch"], forward_batch=tuned["forward_batch"],
                            max_request=max(batch, 4096), num_cpus=num_cpus, num_gpus=0.0)
        model = build_model("lenet5", shape, 10, seed=seed).eval()
        x = np.random.default_rng(seed).random((images, *shape), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="heist-bench-serve-") as tmp:
            http_rows = _http_rows(model, shape, x, workers, batch, cfg, repeats, tmp)
        best_raw = max(r["images_per_s"] / r["ratio"] for r in rows)   # the run's best raw figure
        actor = {r["workers"]: r["images_per_s"] for r in rows if r["path"] == "actor"}
        for r in http_rows:
            r.update(ratio=r["images_per_s"] / best_raw, dataset=dataset, batch=batch, images=images, repeats=repeats,
                     threads=rows[0]["threads"])
        for r in rows + http_rows:
            if r["workers"]:
                r["vs_actor"] = r["images_per_s"] / actor[r["workers"]]
        return rows + http_rows
    finally:
        if started:
            ray.shutdown()


def format_rows(rows: list[dict]) -> str:
    head = f"{'configuration':<22} {'images/s':>9} {'median':>9} {'ratio':>6} {'vs actor':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        median = f"{r['median_images_per_s']:>9.0f}" if "median_images_per_s" in r else f"{'':>9}"
        vs = f"{r['vs_actor']:>9.2f}" if "vs_actor" in r else f"{'':>9}"
        lines.append(f"{r['config']:<22} {r['images_per_s']:>9.0f} {median} {r['ratio']:>6.2f} {vs}")
    return "\n".join(lines)


def main(args) -> int:
    """`heist bench --serve [--dataset D] [--workers 1,4,8] [--batch 256] [--images N] [--repeats R] [--json F]`."""
    import json
    from pathlib import Path

    from workloads.config import ConfigError

    try:
        workers = [int(w) for w in str(getattr(args, "workers", "1,4,8")).split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--workers: expected comma-separated integers, got {args.workers!r}") from None
    images = getattr(args, "images", None)
    rows = run_serve_bench(getattr(args, "dataset", "fashion_mnist"), workers, getattr(args, "batch", 256),
                           20480 if images in (None, 40960) else images, getattr(args, "repeats", None) or 3,
                           getattr(args, "num_cpus", None) or 1.0)
    r0 = rows[0]
    print(f"heist bench --serve: lenet5 on {r0['dataset']} shapes (random weights, no defense), requests of "
          f"{r0['batch']} images, one in flight per client, {r0['threads']} torch thread(s) in the service, "
          f"{r0['images']} images per run, best of {r0['repeats']}")
    print(format_rows(rows))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0

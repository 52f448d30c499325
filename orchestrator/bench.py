"""`heist bench`: VictimService serving throughput vs the raw in-process batched forward.

For the LeNet of `--dataset` it measures, in one run:

* raw: the model's forward + softmax in this process, in batches of each client batch size and of the
  service's forward size (`forward_batch`, else `max_batch`), with the torch thread count the service actor
  gets; best of `repeats`, measured before and after the service runs. `ratio` divides by the best raw
  figure of the whole run (conservative);
* service: the same images sent by 1, 4, 8, 16 ... AttackerWorker actors, each in client batches of every
  `--batch` size, through one VictimService (dynamic batching, no defense): images/s from the first
  worker's start to the last worker's end, best of `repeats`. Before each repeat the raw forward is
  measured again; `paired` is the median of service/raw over those back-to-back pairs, which is the
  figure to trust on a machine shared with other work (load changes during a run move both together).

Also shown per service row: p50 and p99 request latency (a worker's submit to its answer, over every
request of every repeat), the mean served (merged) batch, the fraction of the wall time the service's
compute thread was busy, and the service's own forward + softmax speed (`forward img/s`, from its stats:
below raw = the forward itself slowed down inside the actor, e.g. by contention for the GIL or the CPU), the
share of its busy time the compute thread was running on a core (`on CPU`; below 1 = preempted by other
threads and processes), and the cores (CPU seconds per wall second) the service process, the worker processes
and the whole machine used during the run (a single-node measurement: the workers run on this machine).

Throughput does not depend on the weights, so the model is randomly initialised (seed 0) and the
images are uniform noise; no dataset is read.

`heist bench --sweep` (orchestrator/bench_sweep.py) and `--memory` (orchestrator/bench_memory.py) measure
sweep efficiency and memory; `--defenses` and `--pow` the defenses' costs. `--json PATH` writes the rows.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import ray

# Service settings tuned on the 2-core development machine: 28x28 LeNet forwards are fastest in cache-sized
# chunks of 256, and a served batch of 256 lets the clients' in-flight requests (8 workers x 4 x 16 images =
# 512) fill the next batch while one computes; 8x8 LeNet forwards are so cheap that per-request overhead
# dominates, so merging many requests into one forward is what counts.
TUNED = {"fashion_mnist": {"max_batch": 256, "forward_batch": 256},
         "digits": {"max_batch": 4096, "forward_batch": 0}}

SHAPES = {"digits": (1, 8, 8), "fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "kmnist": (1, 28, 28),
          "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}


def raw_throughput(model, x: np.ndarray, batch: int, threads: int, repeats: int = 3) -> float:
    """Best images/s of forward + softmax over x in batches of `batch` with `threads` torch threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xt = torch.from_numpy(x)
        best = 0.0
        with torch.inference_mode():
            torch.softmax(model(xt[:batch]), 1)            # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                for c in xt.split(batch):
                    torch.softmax(model(c), 1).numpy()
                best = max(best, len(x) / (time.perf_counter() - t))
        return best
    finally:
        torch.set_num_threads(old)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def _machine_busy_seconds() -> float:
    """CPU seconds every core of this machine has been busy so far (all processes)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _pid(actor) -> int:
    import os

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _served_totals(service, owner) -> tuple[float, float, float, float]:
    """(images, forward ms, compute ms, compute CPU ms) the service has served so far."""
    s = ray.get(service.stats.remote(owner))
    return s["images"], s["forward_ms_mean"] * s["served_batches"], s["compute_ms"], s["compute_cpu_ms"]


def run_bench(dataset: str = "fashion_mnist", workers=(1, 4, 8, 16), batch=(256, 16), images: int = 40960, *,
              max_batch: int | None = None, forward_batch: int | None = None, max_wait_ms: float = 2.0,
              in_flight: int = 4, num_cpus: float = 1.0, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Run the benchmark; returns one row per configuration (the first rows are the raw forward). `batch` is a
    client batch size or a sequence of them; every worker count runs with every batch size."""
    from orchestrator.attackers import spawn_attackers
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor
    from orchestrator.trial import _kill
    from workloads.config import ConfigError, check_choice
    from workloads.defenses import DefenseConfig
    from workloads.models import build_model

    check_choice("--dataset", dataset, SHAPES)
    workers = [int(w) for w in workers]
    batches = [int(b) for b in ([batch] if isinstance(batch, int) else batch)]
    if not workers or min(workers) < 1 or not batches or min(batches) < 1 or images < max(batches):
        raise ConfigError(f"bench: expected workers >= 1, batch >= 1 and images >= batch; got workers={workers}, "
                          f"batch={batches}, images={images}")
    shape = SHAPES[dataset]
    tuned = TUNED.get(dataset, TUNED["fashion_mnist"])
    max_batch = max_batch or tuned["max_batch"]
    forward_batch = tuned["forward_batch"] if forward_batch is None else forward_batch
    threads = max(1, int(num_cpus))
    model = build_model("lenet5", shape, 10, seed=seed).eval()
    x = np.random.default_rng(seed).random((images, *shape), dtype=np.float32)

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    owned: list = []
    rows: list[dict] = []
    try:
        raw_batches = sorted({*batches, min(forward_batch or max_batch, images)})
        raw = {b: raw_throughput(model, x, b, threads, max(1, repeats)) for b in raw_batches}

        cfg = ServiceConfig(max_batch=max_batch, forward_batch=forward_batch, max_wait_ms=max_wait_ms,
                            max_request=max(max(batches), 4096), max_queued=max(16384, max(batches) * in_flight),
                            num_cpus=num_cpus, num_gpus=0.0)
        service, owner = service_actor(VictimSpec("lenet5", shape, 10), ray.put(model.state_dict()), DefenseConfig(),
                                       cfg)
        owned.append(service)
        info = ray.get(service.ready.remote())
        free_cpus = ray.cluster_resources().get("CPU", 1.0) - num_cpus
        worker_cpus = max(0.01, min(0.25, free_cpus / max(workers)))
        x_ref = ray.put(x)

        service_rows = []
        for b in batches:
            for n in workers:
                service_rows.append(_service_row(service, owner, model, x, x_ref, raw_batches, threads, n, b,
                                                 in_flight, worker_cpus, repeats, f"bench-{b}-{n}", owned,
                                                 spawn_attackers, _kill))
        raw_after = raw_throughput(model, x, max(raw, key=raw.get), threads, max(1, repeats))    # drift check
        best_raw = max(max(raw.values()), raw_after)
        for b, ips in raw.items():
            rows.append({"config": f"raw forward, batch {b}", "workers": 0, "batch": b, "images": images,
                         "seconds": images / ips, "images_per_s": ips, "mean_served_batch": float(b)})
        rows.extend(service_rows)
        for r in rows:
            r["ratio"] = r["images_per_s"] / best_raw
            r.update(dataset=dataset, threads=threads, max_batch=max_batch, forward_batch=forward_batch,
                     max_wait_ms=max_wait_ms, in_flight=in_flight, repeats=repeats, device=info["device"])
    finally:
        _kill(owned)
        if started:
            ray.shutdown()
    return rows


def _service_row(service, owner, model, x, x_ref, raw_batches, threads, n, batch, in_flight, worker_cpus, repeats,
                 prefix, owned, spawn_attackers, kill) -> dict:
    """`n` workers sending x in client batches of `batch`: the best of `repeats` timed runs, each paired with a raw
    forward measured just before it. Each run also reports the cores (CPU seconds per wall second) the service
    process, the worker processes and the whole machine used."""
    images = len(x)
    bounds = np.cumsum([0] + [len(s) for s in np.array_split(np.arange(images), n)])
    ws, _, _ = spawn_attackers(service, owner, prefix, n, repeats * images + n * batch, query_batch=batch,
                               max_in_flight=in_flight, num_cpus=worker_cpus)
    owned.extend(ws)
    try:
        ray.get([w.query.remote(x_ref, 0, batch) for w in ws])           # warm-up: one batch each
        service_pid, worker_pids = [_pid(service)], [_pid(w) for w in ws]

        def cpu_now():   # CPU seconds of the service, the workers and the machine, and the clock
            return _cpu_seconds(service_pid), _cpu_seconds(worker_pids), _machine_busy_seconds(), time.perf_counter()

        runs, latencies = [], []
        for _ in range(repeats):
            raw_now = max(raw_throughput(model, x, b, threads, 1) for b in raw_batches)   # paired raw
            log_from = len(ray.get(service.request_log.remote(owner)))
            served0, fwd0, wall0, oncpu0 = _served_totals(service, owner)
            cpu0 = cpu_now()
            timed = ray.get([w.timed_query.remote(x_ref, int(lo), int(hi))
                             for w, lo, hi in zip(ws, bounds[:-1], bounds[1:])])
            cpu1 = cpu_now()
            served1, fwd1, wall1, oncpu1 = _served_totals(service, owner)
            cores = [(b - a) / (cpu1[3] - cpu0[3]) for a, b in zip(cpu0[:3], cpu1[:3])]
            span = max(t[1] for t in timed) - min(t[0] for t in timed)
            sent = sum(t[2] for t in timed)
            latencies += [ms for t in timed for ms in t[3]]
            log = ray.get(service.request_log.remote(owner, log_from))
            served = {r["batch"]: r["served_batch_images"] for r in log}
            runs.append({"images": sent, "seconds": span, "images_per_s": sent / span,
                         "paired_ratio": sent / span / raw_now,
                         "mean_served_batch": float(np.mean(list(served.values()))),
                         "queue_ms_mean": float(np.mean([r["queue_ms"] for r in log])),
                         "compute_busy": (wall1 - wall0) / 1e3 / span,
                         "compute_on_cpu": (oncpu1 - oncpu0) / max(wall1 - wall0, 1e-9),
                         "cores_service": cores[0], "cores_workers": cores[1], "cores_machine": cores[2],
                         "forward_images_per_s": (served1 - served0) / max((fwd1 - fwd0) / 1e3, 1e-9)})
    finally:
        kill([owned.pop() for _ in ws])
    best = max(runs, key=lambda r: r["images_per_s"])
    return {"config": f"service, batch {batch}, {n} worker{'s' if n > 1 else ''}", "workers": n, "batch": batch,
            **best, "median_images_per_s": float(np.median([r["images_per_s"] for r in runs])),
            "paired_ratio": float(np.median([r["paired_ratio"] for r in runs])),
            "latency_p50_ms": float(np.percentile(latencies, 50)), "latency_p99_ms": float(np.percentile(latencies, 99))}


def format_rows(rows: list[dict]) -> str:
    head = (f"{'configuration':<32} {'images/s':>9} {'ratio':>6} {'paired':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'served batch':>13} {'compute busy':>13} {'forward img/s':>14} {'on CPU':>7} "
            f"{'cores: service':>15} {'workers':>8} {'machine':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['config']:<32} {r['images_per_s']:>9.0f} {r['ratio']:>6.2f}"
        if "compute_busy" in r:
            line += (f" {r['paired_ratio']:>7.2f} {r['latency_p50_ms']:>7.1f} {r['latency_p99_ms']:>7.1f}"
                     f" {r['mean_served_batch']:>13.0f} {r['compute_busy']:>13.2f} {r['forward_images_per_s']:>14.0f}"
                     f" {r['compute_on_cpu']:>7.2f} {r['cores_service']:>15.2f} {r['cores_workers']:>8.2f} {r['cores_machine']:>8.2f}")
        lines.append(line)
    return "\n".join(lines)


def _ints(text, flag: str) -> list[int]:
    from workloads.config import ConfigError

    try:
        return [int(w) for w in str(text).split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def write_json(path, rows) -> None:
    """Write a benchmark's rows (or dict) to `path` as JSON, beside the table."""
    Path(path).write_text(json.dumps(rows, indent=2, default=float) + "\n")


def main(args) -> int:
    """`heist bench [--dataset D] [--workers 1,4,8,16] [--batch 256,16] [--images N] [--json PATH]`; prints the
    table. `--sweep`, `--memory`, `--defenses`, `--pow`, `--serve` (orchestrator/bench_serve.py): those benchmarks
    instead."""
    repeats = getattr(args, "repeats", None)
    if getattr(args, "serve", False):
        from orchestrator.bench_serve import main as serve_main

        args.batch = _ints(getattr(args, "batch", 256), "--batch")[0]
        return serve_main(args)
    if getattr(args, "pow", False):
        out = run_pow_bench(getattr(args, "dataset", "fashion_mnist"), _ints(getattr(args, "batch", 256), "--batch")[0],
                            repeats=repeats or 5)
        print(format_pow(out))
        return _maybe_json(args, out)
    if getattr(args, "defenses", False):
        from orchestrator.bench_defenses import defense_costs, format_rows as format_costs, paper_comparison

        dataset, batch = getattr(args, "dataset", "fashion_mnist"), _ints(getattr(args, "batch", 256), "--batch")[0]
        print(f"heist bench --defenses: lenet5 on {dataset} test images (random weights), batch {batch}, "
              f"1 torch thread, best of {repeats or 20}")
        rows = defense_costs(dataset, batch, repeats or 20)
        print(format_costs(rows))
        return _maybe_json(args, {"rows": rows, "paper_comparison": paper_comparison(rows)})
    if getattr(args, "sweep", False):
        from orchestrator.bench_sweep import format_sweep, run_sweep_bench

        out = run_sweep_bench(getattr(args, "config", None) or "sweeps/quickstart.yaml",
                              trials=getattr(args, "trials", None), concurrency=getattr(args, "concurrent", False))
        print(format_sweep(out))
        return _maybe_json(args, out)
    if getattr(args, "memory", False):
        from orchestrator.bench_memory import format_memory, run_memory_bench

        out = run_memory_bench(getattr(args, "queries", None) or 1_000_000)
        print(format_memory(out))
        return _maybe_json(args, out)
    opts = {k: getattr(args, k) for k in ("max_batch", "forward_batch", "max_wait_ms", "in_flight", "num_cpus",
                                          "repeats")
            if getattr(args, k, None) is not None}
    rows = run_bench(getattr(args, "dataset", "fashion_mnist"),
                     _ints(getattr(args, "workers", "1,4,8,16"), "--workers"),
                     _ints(getattr(args, "batch", "256,16"), "--batch"), getattr(args, "images", 40960), **opts)
    r0 = rows[0]
    print(f"heist bench: lenet5 on {r0['dataset']} shapes (random weights), "
          f"{r0['threads']} torch thread(s), max_batch {r0['max_batch']}, forward_batch {r0['forward_batch']}, "
          f"max_wait {r0['max_wait_ms']} ms, {r0['in_flight']} in flight per worker, best of {r0['repeats']}, "
          f"device {r0['device']}")
    print(format_rows(rows))
    return _maybe_json(args, rows)


def _maybe_json(args, data) -> int:
    if getattr(args, "json", None):
        write_json(args.json, data)
    return 0


# ------------------------------------------------------------------------------------- proof of work
TRAIN_SIZES = {"digits": 719, "fashion_mnist": 50000, "mnist": 50000, "kmnist": 50000, "cifar10": 50000,
               "cifar100": 50000, "svhn": 50000}


def run_pow_bench(dataset: str = "fashion_mnist", batch: int = 256, seconds: float = 1.0, repeats: int = 5,
                  k: int = 300, seed: int = 0) -> dict:
    """Calibrated-PoW costs on this machine, one torch thread:

    * the minter's hash rate (hashcash SHA-1, prefix state reused) next to SHA-1 on fixed 64-byte inputs in
      a tight hashlib loop, both on one core;
    * per query batch of `batch`: the victim's forward + softmax, and each leakage estimator's accounting
      (its own forward, plus for PATE-kNN the k-nearest search over a training set of the dataset's size
      and the GNMax RDP), best of `repeats`.
    Random weights and training representations: the costs do not depend on their values."""
    import torch

    from workloads.config import check_choice
    from workloads.models import build_model
    from workloads.pow import hashcash
    from workloads.pow.pate_knn import build_estimator

    check_choice("--dataset", dataset, SHAPES)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"dataset": dataset, "batch": batch, "mint_rate": hashcash.mint_rate(seconds),
               "raw_sha1_rate": hashcash.raw_rate(seconds)}
        out["mint_over_raw"] = out["mint_rate"] / out["raw_sha1_rate"]
        shape = SHAPES[dataset]
        model = build_model("lenet5", shape, 10, seed=seed).eval()
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand((batch, *shape), generator=gen)
        n_train = TRAIN_SIZES[dataset]
        reps = torch.log_softmax(torch.randn((n_train, 10), generator=gen) * 5, 1).double()
        labels = torch.randint(0, 10, (n_train,), generator=gen)

        def best(fn) -> float:
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times) * 1e3

        with torch.inference_mode():
            out["forward_ms"] = best(lambda: torch.softmax(model(x), 1).numpy())
        for name in ("pknn", "entropy", "gap"):
            est = build_estimator(name, model, train_reps=reps, train_labels=labels, k=min(k, n_train))
            out[f"{name}_ms"] = best(lambda: est.increments(x))
            out[f"{name}_over_forward"] = out[f"{name}_ms"] / out["forward_ms"]
        out["train_points"] = n_train
        return out
    finally:
        torch.set_num_threads(old)


def format_pow(r: dict) -> str:
    lines = [f"heist bench --pow: {r['dataset']} LeNet-5 shapes, batch {r['batch']}, 1 torch thread, "
             f"{r['train_points']} training points for PATE-kNN",
             f"{'hash rate (one core)':<34} {'hashes/s':>12}",
             f"{'hashcash minter (SHA-1, state reuse)':<34} {r['mint_rate']:>12,.0f}",
             f"{'raw SHA-1, fixed 64-byte inputs':<34} {r['raw_sha1_rate']:>12,.0f}   minter/raw {r['mint_over_raw']:.2f}",
             f"{'per query batch':<34} {'ms':>12} {'x forward':>10}",
             f"{'forward + softmax':<34} {r['forward_ms']:>12.2f} {1.0:>10.2f}"]
    for name in ("pknn", "entropy", "gap"):
        lines.append(f"{'accounting: ' + name:<34} {r[name + '_ms']:>12.2f} {r[name + '_over_forward']:>10.2f}")
    return "\n".join(lines)

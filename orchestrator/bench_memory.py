"""`heist bench --memory`: the service's memory over a long stream of queries.

The service engine runs in this process (no Ray: its memory is this process's) with its request log streamed to
Parquet parts in a temporary directory, serving the digits LeNet (random weights). `clients` clients send
`queries` images in requests of `request` images, `in_flight` requests at a time each (no request ids, so no
record of answers is kept; with ids a client's current stream of answers is held, see admission.py). At each
tenth of the stream it records this process's RSS, the log rows held in memory and the ledger's size: bounded
means flat after the first chunk, whatever the number of queries.
"""
from __future__ import annotations

import asyncio
import pickle
import tempfile
import time


def run_memory_bench(queries: int = 1_000_000, request: int = 16, clients: int = 8, in_flight: int = 8,
                     chunk: int = 4096) -> dict:
    import numpy as np
    import psutil
    import torch

    from orchestrator.admission import new_token
    from orchestrator.bench import SHAPES
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, _Service
    from workloads.models import build_model

    torch.set_num_threads(1)
    shape = SHAPES["digits"]
    model = build_model("lenet5", shape, 10, seed=0).eval()
    x = np.random.default_rng(0).random((request, *shape), dtype=np.float32)
    per_client = queries // clients // request          # requests per client
    proc = psutil.Process()
    owner = new_token()
    points: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="heist-bench-memory-") as tmp:
        svc = _Service(VictimSpec("lenet5", shape, 10), model.state_dict(), None,
                       ServiceConfig(max_batch=1024, max_wait_ms=1.0, log_chunk=chunk, num_cpus=1), owner=owner,
                       log_dir=tmp)

        async def client(key: str, c: int) -> None:
            for start in range(0, per_client, in_flight):
                await asyncio.gather(*[svc.query(key, x) for _ in range(min(in_flight, per_client - start))])
                if c == 0 and (start // in_flight) % max(1, per_client // in_flight // 10) == 0:
                    stats = await svc.stats(owner)
                    ledger = await svc.ledger(owner)
                    points.append({"queries": stats["images"], "rss_mb": proc.memory_info().rss / 2**20,
                                   "log_rows": stats["log_rows"], "log_rows_in_memory": stats["log_rows_in_memory"],
                                   "ledger_bytes": len(pickle.dumps(ledger)), "seconds": time.perf_counter() - t0})

        async def main() -> None:
            keys = [await svc.register(owner, f"c{i}", queries, "attacker", {"attack": "memory"})
                    for i in range(clients)]
            await asyncio.gather(*[client(k, i) for i, k in enumerate(keys)])
            stats = await svc.stats(owner)
            points.append({"queries": stats["images"], "rss_mb": proc.memory_info().rss / 2**20,
                           "log_rows": stats["log_rows"], "log_rows_in_memory": stats["log_rows_in_memory"],
                           "ledger_bytes": len(pickle.dumps(await svc.ledger(owner))),
                           "seconds": time.perf_counter() - t0})

        t0 = time.perf_counter()
        asyncio.run(main())
        parts = svc.log.parts
    later = [p for p in points if p["queries"] >= points[-1]["queries"] / 10]
    return {"queries": points[-1]["queries"], "requests": points[-1]["log_rows"], "request_images": request,
            "log_chunk": chunk, "parquet_parts": parts, "points": points,
            "rss_growth_mb_after_first_tenth": max(p["rss_mb"] for p in later) - min(p["rss_mb"] for p in later),
            "max_log_rows_in_memory": max(p["log_rows_in_memory"] for p in points)}


def format_memory(r: dict) -> str:
    lines = [f"heist bench --memory: {r['queries']:,} queries in {r['requests']:,} requests of {r['request_images']} "
             f"images, request log streamed in parts of {r['log_chunk']} rows ({r['parquet_parts']} parts)",
             f"{'queries':>10} {'RSS MB':>8} {'log rows':>9} {'in memory':>10} {'ledger bytes':>13} {'s':>7}"]
    lines += [f"{p['queries']:>10,} {p['rss_mb']:>8.0f} {p['log_rows']:>9,} {p['log_rows_in_memory']:>10,} "
              f"{p['ledger_bytes']:>13,} {p['seconds']:>7.1f}" for p in r["points"]]
    lines.append(f"RSS growth after the first tenth: {r['rss_growth_mb_after_first_tenth']:.1f} MB; at most "
                 f"{r['max_log_rows_in_memory']} log rows in memory")
    return "\n".join(lines)

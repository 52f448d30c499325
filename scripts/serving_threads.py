"""Where the VictimService's CPU goes, thread by thread (Linux; a diagnostic behind docs/performance.md).

Starts Ray (2 logical CPUs), one VictimService (LeNet-5, Fashion-MNIST shapes, random weights, no defense) and N
AttackerWorkers that send 20,480 noise images three times in client batches of B, with `--in-flight` requests
each. Optionally sets the nice value of the service's compute thread (negative values need CAP_SYS_NICE). Prints
images/s, the service's mean forward time and served batch, and for each thread of the service process the cores
it used and its voluntary / involuntary context switches (involuntary = preempted) from /proc.

    OMP_NUM_THREADS=1 python scripts/serving_threads.py --batch 16 --workers 8
    OMP_NUM_THREADS=1 python scripts/serving_threads.py --batch 16 --workers 8 --compute-nice -10
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray


def thread_counters(pid: int) -> dict[str, tuple[float, int, int]]:
    """{name/tid: (CPU seconds, voluntary, involuntary context switches)} of every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        name = open(f"{base}/comm").read().strip()
        stat = open(f"{base}/stat").read().rsplit(")", 1)[1].split()
        switches = dict(line.split(":") for line in open(f"{base}/status") if "ctxt_switches" in line)
        out[f"{name}/{tid}"] = ((int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
                                int(switches["voluntary_ctxt_switches"]), int(switches["nonvoluntary_ctxt_switches"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--compute-nice", type=int, default=0)
    args = p.parse_args()

    from orchestrator.attackers import spawn_attackers
    from orchestrator.bench import _pid
    from orchestrator.config import ServiceConfig
    from orchestrator.service import VictimSpec, service_actor
    from orchestrator.trial import _kill
    from workloads.models import build_model

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    shape = (1, 28, 28)
    cfg = ServiceConfig(max_batch=256, forward_batch=256, num_cpus=1)
    service, owner = service_actor(VictimSpec("lenet5", shape, 10),
                                   ray.put(build_model("lenet5", shape, 10, seed=0).state_dict()), None, cfg)
    ray.get(service.ready.remote())
    pid = _pid(service)

    def renice(self, value):   # runs in the service: the compute thread sets its own nice value
        import threading
        return self.engine._pool.submit(lambda: os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
                                        or threading.get_native_id()).result()

    compute_tid = ray.get(service.__ray_call__.remote(renice, args.compute_nice))
    workers, _, _ = spawn_attackers(service, owner, "diag", args.workers, 10**9, query_batch=args.batch,
                                    max_in_flight=args.in_flight, num_cpus=min(0.1, 1.0 / args.workers))
    try:
        x = np.random.default_rng(0).random((20480, *shape), dtype=np.float32)
        ref = ray.put(x)
        ray.get([w.query.remote(ref, 0, args.batch) for w in workers])
        bounds = np.linspace(0, len(x), args.workers + 1).astype(int)
        before, t0, images = thread_counters(pid), time.perf_counter(), 0
        for _ in range(3):
            images += sum(r[2] for r in ray.get([w.timed_query.remote(ref, int(lo), int(hi))
                                                 for w, lo, hi in zip(workers, bounds[:-1], bounds[1:])]))
        span = time.perf_counter() - t0
        after = thread_counters(pid)
        stats = ray.get(service.stats.remote(owner))
        print(f"batch {args.batch}, {args.workers} workers, {args.in_flight} in flight, compute nice "
              f"{args.compute_nice}: {images / span:,.0f} images/s; forward {stats['forward_ms_mean']:.2f} ms per "
              f"served batch of {stats['mean_batch_images']:.0f}")
        print(f"{'thread':<32} {'cores':>6} {'voluntary/s':>12} {'preempted/s':>12}")
        for name, (cpu, vol, invol) in after.items():
            if name in before and (cpu - before[name][0]) / span >= 0.01:
                mark = "  <- compute" if name.endswith(f"/{compute_tid}") else ""
                print(f"{name:<32} {(cpu - before[name][0]) / span:>6.2f} {(vol - before[name][1]) / span:>12.0f} "
                      f"{(invol - before[name][2]) / span:>12.0f}{mark}")
    finally:
        _kill(workers + [service])
        ray.shutdown()


if __name__ == "__main__":
    main()

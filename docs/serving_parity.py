"""Stolen accuracy of Knockoff Nets through `heist serve`'s HTTP API vs through a trial, same seeds (docs/serving.md).

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/serving_parity.py [--budget 300] [--seeds 0,1,2] [--defense none]

For each seed: the registered `knockoff` attack runs once with a QueryClient that sends plain `.npy` HTTP requests
(orchestrator.client.Client) to the front end of a served digits victim, and once inside `run_trial` (attacker
worker actors); both use the same attack config and seed. Prints both stolen accuracies and their difference.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading

import numpy as np
import ray


class ClientQueries:
    """workloads.attacks.QueryClient over an orchestrator.client.Client."""

    def __init__(self, client):
        self.client, self.budget, self.used = client, client.remaining(), 0

    def query(self, x):
        self.used += len(x)
        return self.client.predict(np.asarray(x))


def main() -> None:
    from orchestrator.client import Client
    from orchestrator.config import ServiceConfig, TrialConfig
    from orchestrator.http_api import Frontend
    from orchestrator.serve import HttpConfig, _bind, serve_http
    from orchestrator.service import VictimSpec, service_actor
    from orchestrator.trial import _kill, run_trial
    from workloads import metrics as M
    from workloads.attacks import AttackConfig, VictimInfo, steal
    from workloads.data import labelled_surrogate_pool
    from workloads.defenses import DefenseConfig
    from workloads.training import predict_proba
    from workloads.victims import VictimConfig, load_or_train

    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--defense", default="none")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cache = tempfile.mkdtemp(prefix="heist-parity-")
    victim = load_or_train(VictimConfig(), cache)
    data, defense = victim.data, DefenseConfig(args.defense)
    service_cfg = ServiceConfig(num_cpus=0.5)
    service, owner = service_actor(VictimSpec("lenet5", data.shape, data.num_classes, config=victim.config),
                                   ray.put(victim.model.state_dict()), defense, service_cfg)
    http = HttpConfig(port=0, flush_every_s=0)
    front = Frontend(service, owner, ray.get(service.ready.remote()), http, defense.name)
    sock = _bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    loop, stop = asyncio.new_event_loop(), asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve_http(front, sock, http, stop),), daemon=True)
    thread.start()
    rows = []
    try:
        for seed in seeds:
            attack = AttackConfig(name="knockoff", budget=args.budget, seed=seed)
            key = ray.get(service.register.remote(owner, f"thief-{seed}", attack.budget))
            front.keys[key] = f"thief-{seed}"
            pool, _ = labelled_surrogate_pool("split", data, seed=seed)
            substitute = steal(attack, ClientQueries(Client(url, key)), pool,
                               VictimInfo(data.shape, data.num_classes, "lenet5"))
            over_http = M.accuracy(predict_proba(substitute, data.x_test), data.y_test)
            trial = run_trial(TrialConfig(defense=defense, attacks=[attack], cache_dir=cache, service=service_cfg))
            rows.append((seed, over_http, trial.metrics["stolen_accuracy"]))
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        _kill([service])
        ray.shutdown()
    print(f"knockoff, digits lenet5 victim (test accuracy {victim.accuracy:.4f}), defense {args.defense}, "
          f"budget {args.budget}")
    print(f"{'seed':>4} {'over HTTP':>10} {'in a trial':>11} {'difference':>11}")
    for seed, a, b in rows:
        print(f"{seed:>4} {a:>10.4f} {b:>11.4f} {a - b:>+11.4f}")
    a, b = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    print(f"mean {a.mean():>10.4f} {b.mean():>11.4f} {np.mean(a - b):>+11.4f}")
    print(f"sd   {a.std(ddof=1):>10.4f} {b.std(ddof=1):>11.4f} {np.std(a - b, ddof=1):>11.4f}")


if __name__ == "__main__":
    main()

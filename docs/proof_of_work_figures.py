"""Figures of docs/proof_of_work.md: per-query leakage by client kind and total-time overhead, on digits.

    flock /tmp/heist-heavy.lock python docs/proof_of_work_figures.py run real 300 out/real.json
    flock /tmp/heist-heavy.lock python docs/proof_of_work_figures.py run simulated 700 out/sim.json
    python docs/proof_of_work_figures.py plot out/real.json out/sim.json docs/proof_of_work_leakage.png

Seeds 0, 1, 2: each seed trains its own digits victim and seeds its attacks. One attacker worker per
attack, so each attack is one client to the service (its leakage is one curve).
"""
import json
import sys

import numpy as np

SEEDS = (0, 1, 2)
KNOBS = {"estimator": "pknn", "k": 30, "sigma": 2.8, "base": 1.002, "offset": 1.0, "t_min": 0.002, "t_max": 0.5}


def trial(mode: str, budget: int, seed: int) -> dict:
    attack = {"budget": budget, "workers": 1, "query_batch": 64, "seed": seed, "train": {"epochs": 10, "lr": 0.002}}
    return {"victim": {"dataset": "digits", "seed": seed},
            "defense": {"name": "pow", "params": KNOBS | {"mode": mode}},
            "attacks": [attack | {"name": "knockoff"},
                        attack | {"name": "copycat", "surrogate": {"kind": "noise", "size": 2 * budget}},
                        attack | {"name": "entropy_rev", "params": {"step": 100, "round_epochs": 3}},
                        attack | {"name": "worst_case", "params": {"step": 100}}],
            "service": {"num_cpus": 1.0}, "workers": {"num_cpus": 0.25}, "benign": {"batch": 64}}


def run(mode: str, budget: int, out: str) -> None:
    import ray

    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = []
    for seed in SEEDS:
        r = run_trial(trial_config(trial(mode, budget, seed)))
        curves: dict[str, list] = {}
        for client, log in r.info["pow_log"].items():        # one worker per attack: its key names the curve
            name = "benign" if client == "benign" else client.split("/")[0]
            previous = 0
            for e in sorted(log, key=lambda e: e["seq"]):
                curves.setdefault(name, []).append((e["queries"] - previous, e["privacy_cost"], e["pow_bits"]))
                previous = e["queries"]
        results.append({"seed": seed, "metrics": r.metrics, "curves": curves})
        print(seed, {k: round(v, 3) for k, v in r.metrics.items() if "overhead" in k or "privacy" in k}, flush=True)
    json.dump({"mode": mode, "budget": budget, "knobs": KNOBS, "results": results}, open(out, "w"))


def plot(real: str, sim: str, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    data = json.load(open(sim))
    for name in data["results"][0]["curves"]:
        per_seed = []
        for res in data["results"]:
            c = np.array(res["curves"][name])
            per_seed.append((np.cumsum(c[:, 0]), c[:, 1]))
        n = min(len(q) for q, _ in per_seed)
        q = per_seed[0][0][:n]
        costs = np.stack([cost[:n] for _, cost in per_seed])
        axes[0].plot(q, costs.mean(0), label=name)
        axes[0].fill_between(q, costs.mean(0) - costs.std(0), costs.mean(0) + costs.std(0), alpha=0.2)
    axes[0].set(xlabel="queries of the client", ylabel="cumulative PATE-kNN ε", title="leakage (digits, 3 seeds)")
    axes[0].legend(fontsize=8)
    for i, (path, label) in enumerate(((real, "real"), (sim, "simulated"))):
        d = json.load(open(path))
        keys = ["pow_benign_overhead"] + sorted(k for k in d["results"][0]["metrics"] if k.startswith("pow_overhead/"))
        vals = np.array([[r["metrics"][k] for k in keys] for r in d["results"]])
        x = np.arange(len(keys)) + (i - 0.5) * 0.38
        axes[1].bar(x, vals.mean(0), 0.38, yerr=vals.std(0), label=f"{label} ({d['budget']} queries)")
    axes[1].set_xticks(np.arange(len(keys)), ["benign"] + [k.split("/")[1].split("_")[0] for k in keys[1:]])
    axes[1].set(ylabel="total time with PoW / without", yscale="log", title="overhead (mean ± sd, 3 seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        plot(*sys.argv[2:5])

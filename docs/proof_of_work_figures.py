"""Live figures of docs/proof_of_work.md: per-query leakage by client kind and total-time overhead.

    OMP_NUM_THREADS=1 python docs/proof_of_work_figures.py run real 500 out/real.json --t-max 2
    OMP_NUM_THREADS=1 python docs/proof_of_work_figures.py run simulated 5000 out/sim.json
    python docs/proof_of_work_figures.py plot out/real.json out/sim.json docs/proof_of_work_fashion_mnist.png
    python docs/proof_of_work_figures.py table out/real.json out/sim.json      # the markdown table

Fashion-MNIST LeNet-5 victim (seed 0, the cached one of sweeps/fashion_mnist_pow.yaml), the paper's PATE-kNN
MNIST setting (k=300, σ=28, base 1.18, offset 0.75 s, t_min 0.1 s, t_max 2948.47 s per 64 queries); `--t-max`
lowers the cap so that real minting finishes. Attack seeds 0, 1, 2, one trial each; one attacker worker per
attack, so each attack is one client to the service (its leakage is one curve). `--dataset digits` runs the
digits victim with k=30, σ=2.8 (k exceeds its per-class training points otherwise).
"""
import argparse
import json

import numpy as np

SEEDS = (0, 1, 2)
VICTIMS = {"fashion_mnist": {"dataset": "fashion_mnist", "arch": "lenet5", "pool_fraction": 0.1666667,
                             "train": {"epochs": 12, "batch_size": 128, "lr": 0.002}, "seed": 0},
           "digits": {"dataset": "digits", "seed": 0}}
KNOBS = {"fashion_mnist": {"estimator": "pknn", "k": 300, "sigma": 28.0, "base": 1.18, "offset": 0.75,
                           "t_min": 0.1, "t_max": 2948.47},
         "digits": {"estimator": "pknn", "k": 30, "sigma": 2.8, "base": 1.18, "offset": 0.75,
                    "t_min": 0.1, "t_max": 2948.47}}


def trial(dataset: str, knobs: dict, budget: int, seed: int) -> dict:
    attack = {"budget": budget, "workers": 1, "query_batch": 64, "seed": seed,
              "train": {"epochs": 10, "batch_size": 128, "lr": 0.002}}
    step = max(budget // 10, 50)
    return {"victim": VICTIMS[dataset],
            "defense": {"name": "pow", "params": knobs},
            "attacks": [attack | {"name": "knockoff"},
                        attack | {"name": "copycat", "surrogate": {"kind": "noise", "size": 2 * budget}},
                        attack | {"name": "entropy_rev", "params": {"step": step, "round_epochs": 3}},
                        attack | {"name": "worst_case", "params": {"step": step}}],
            # one request in flight per client (max_queued = one batch): the client's minting, the service's
            # accounting and its serving do not overlap, so wall − minting − accounting is the time without PoW
            "service": {"num_cpus": 1.0, "max_request": 64, "max_queued": 64}, "workers": {"num_cpus": 0.25},
            "benign": {"batch": 64}}


def run(args) -> None:
    import ray

    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    knobs = KNOBS[args.dataset] | {"mode": args.mode} | ({"t_max": args.t_max} if args.t_max else {})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = []
    for seed in args.seeds:
        r = run_trial(trial_config(trial(args.dataset, knobs, args.budget, seed)))
        curves: dict[str, list] = {}
        for client, log in r.info["pow_log"].items():        # one worker per attack: its key names the curve
            name = "benign" if client == "benign" else client.split("/")[0]
            previous = 0
            for e in sorted(log, key=lambda e: e["seq"]):
                curves.setdefault(name, []).append((e["queries"] - previous, e["privacy_cost"], e["pow_bits"]))
                previous = e["queries"]
        results.append({"seed": seed, "metrics": r.metrics, "curves": curves})
        print(seed, {k: round(v, 3) for k, v in r.metrics.items()
                     if "overhead" in k or "privacy" in k or "stolen_accuracy" in k}, flush=True)
        json.dump({"dataset": args.dataset, "mode": args.mode, "budget": args.budget, "knobs": knobs,
                   "results": results}, open(args.out, "w"))


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
    axes[0].set(xlabel="queries of the client", ylabel="cumulative PATE-kNN ε",
                title=f"leakage ({data['dataset']}, {len(data['results'])} seeds)")
    axes[0].legend(fontsize=8)
    for i, (path, label) in enumerate(((real, "real"), (sim, "simulated"))):
        d = json.load(open(path))
        keys = ["pow_benign_overhead"] + sorted(k for k in d["results"][0]["metrics"] if k.startswith("pow_overhead/"))
        vals = np.array([[r["metrics"][k] for k in keys] for r in d["results"]])
        x = np.arange(len(keys)) + (i - 0.5) * 0.38
        axes[1].bar(x, vals.mean(0), 0.38, yerr=vals.std(0),
                    label=f"{label} ({d['budget']} queries, t_max {d['knobs']['t_max']:g} s)")
    axes[1].set_xticks(np.arange(len(keys)), ["benign"] + [k.split("/")[1].split("_")[0] for k in keys[1:]])
    axes[1].set(ylabel="total time with PoW / without", yscale="log", title="overhead (mean ± sd over seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(paths: list[str]) -> None:
    """Per client: overhead, final ε, ε per query, mean bits and stolen accuracy, mean ± sample sd over seeds."""
    print("| run | client | total time with PoW / without | final ε | ε per query | mean bits per batch | stolen accuracy |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        d = json.load(open(path))
        run = f"{d['mode']}, {d['budget']} q, t_max {d['knobs']['t_max']:g}"
        keys = ["benign"] + sorted(k.split("/", 1)[1] for k in d["results"][0]["metrics"] if k.startswith("pow_overhead/"))

        def cell(metric):
            v = np.array([r["metrics"][metric] for r in d["results"]])
            return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}" if len(v) > 1 else f"{v[0]:.3g}"

        for key in keys:
            benign = key == "benign"
            over = cell("pow_benign_overhead" if benign else f"pow_overhead/{key}")
            eps = cell("privacy_cost_benign" if benign else f"privacy_cost/{key}")
            name = "benign" if benign else key
            queries = [sum(q for q, _, _ in r["curves"][name]) for r in d["results"]]
            per_q = np.array([r["curves"][name][-1][1] / q for r, q in zip(d["results"], queries)])
            bits = cell("pow_bits_mean_benign" if benign else f"pow_bits_mean/{key}")
            acc = "–" if benign else cell(f"stolen_accuracy/{key}")
            print(f"| {run} | {key} | {over} | {eps} | {per_q.mean():.4f} | {bits} | {acc} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("mode", choices=["real", "simulated"])
    r.add_argument("budget", type=int)
    r.add_argument("out")
    r.add_argument("--dataset", default="fashion_mnist", choices=list(VICTIMS))
    r.add_argument("--t-max", type=float, help="lower the cap of T (seconds per 64 queries)")
    r.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    s = sub.add_parser("plot")
    s.add_argument("real")
    s.add_argument("sim")
    s.add_argument("png")
    t = sub.add_parser("table")
    t.add_argument("paths", nargs="+")
    a = p.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "plot":
        plot(a.real, a.sim, a.png)
    else:
        table(a.paths)

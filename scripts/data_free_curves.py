"""Budget curves of the data-free attacks (DFME, MAZE, MEGEX modes) against output defenses.

Runs each (method, defense, seed) in-process: the attack talks to a LocalQueryClient over the victim
behind the registered defense (the same defense and explanation code the VictimService runs), and a
checkpoint callable evaluates the student on the test set every `checkpoint_every` iterations.

    python scripts/data_free_curves.py run --out runs.jsonl --budget 200000 --seeds 0 1 2 \
        --methods dfme maze megex_vjp --defenses none dcp reverse_sigmoid
    python scripts/data_free_curves.py report --out runs.jsonl --level 0.7 --plot curves.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

METHODS = {
    "dfme": ("dfme", {}),
    "maze": ("maze", {}),
    "megex_vjp": ("megex", {"explanation_mode": "vjp"}),
    "megex_full_jacobian": ("megex", {"explanation_mode": "full_jacobian"}),
    "megex_top1": ("megex", {"explanation_mode": "top1"}),
    "megex_top1_smoothgrad": ("megex", {"explanation_mode": "top1", "explainer": "smoothgrad", "samples": 10}),
}
DEFENSES = {
    "none": ("none", {}),
    "dcp": ("dcp", {"beta": 0.5}),
    "reverse_sigmoid": ("reverse_sigmoid", {"beta": 1.0, "gamma": 0.2}),
}


VICTIMS = {   # the cached victims of the other figures: digits' default, sweeps/fashion_mnist_*.yaml's Fashion-MNIST
    "digits": {"dataset": "digits"},
    "fashion_mnist": {"dataset": "fashion_mnist", "pool_fraction": 0.1666667,
                      "train": {"epochs": 12, "batch_size": 128, "lr": 0.002}},
}


def run(args) -> None:
    import torch

    from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
    from workloads.config import parse
    from workloads.defenses import DefenseConfig, DefenseContext, build_defense
    from workloads.metrics import accuracy
    from workloads.training import predict_proba
    from workloads.victims import VictimConfig, load_or_train

    torch.set_num_threads(args.threads)
    victim = load_or_train(parse(VictimConfig, VICTIMS[args.dataset]))
    data = victim.data
    info = VictimInfo(data.shape, data.num_classes, victim.config.arch)
    print(f"victim {args.dataset}: test accuracy {victim.accuracy:.4f}", flush=True)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["method"], r["defense"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    for defense_name in args.defenses:
        name, params = DEFENSES[defense_name]
        ctx = DefenseContext(victim=victim.model, dataset=data, arch=victim.config.arch, seed=victim.config.seed)
        defense = build_defense(DefenseConfig(name, params), ctx)
        for method in args.methods:
            for seed in args.seeds:
                if (method, defense_name, seed) in done:
                    continue
                attack, attack_params = METHODS[method]
                cfg = AttackConfig(name=attack, budget=args.budget, seed=seed,
                                   params=dict(attack_params, checkpoint_every=args.checkpoint_every))
                client = LocalQueryClient.from_model(victim.model, args.budget, defense)
                curve, t0 = [], time.perf_counter()
                steal(cfg, client, None, info, checkpoint=lambda q, m: curve.append(
                    (q, accuracy(predict_proba(m, data.x_test), data.y_test))))
                row = {"method": method, "defense": defense_name, "seed": seed, "dataset": args.dataset,
                       "victim_accuracy": victim.accuracy, "budget": args.budget, "used": client.used,
                       "seconds": time.perf_counter() - t0, "curve": curve}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{method:>22} {defense_name:>16} seed {seed}: {curve[-1][1]:.4f} at {client.used} queries "
                      f"({row['seconds']:.0f} s)", flush=True)


def sd(values) -> float:
    """Sample standard deviation (0 for one value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def report(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["defense"]), []).append(r)
    victim_acc = rows[0]["victim_accuracy"]
    print(f"victim accuracy {victim_acc:.4f}; level {args.level:.2f} x victim = {args.level * victim_acc:.4f}")
    print("| method | defense | seeds | final stolen acc. (mean ± sd) | queries to reach the level (mean ± sd; n reached) |")
    print("|---|---|---|---|---|")
    for (method, defense), rs in sorted(groups.items(), key=lambda kv: (list(DEFENSES).index(kv[0][1]), kv[0][0])):
        final = np.array([r["curve"][-1][1] for r in rs])
        reach = [next((q for q, a in r["curve"] if a >= args.level * victim_acc), None) for r in rs]
        hit = [q for q in reach if q is not None]
        reach_text = f"{np.mean(hit):,.0f} ± {sd(hit):,.0f} ({len(hit)}/{len(rs)})" if hit else f"not reached (0/{len(rs)})"
        print(f"| {method} | {defense} | {len(rs)} | {final.mean():.4f} ± {sd(final):.4f} | {reach_text} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        defenses = [d for d in DEFENSES if any(k[1] == d for k in groups)]
        fig, axes = plt.subplots(1, len(defenses), figsize=(5 * len(defenses), 4), sharey=True, squeeze=False)
        for ax, defense in zip(axes[0], defenses):
            for (method, d), rs in sorted(groups.items()):
                if d != defense:
                    continue
                n = min(len(r["curve"]) for r in rs)
                q = np.array([p[0] for p in rs[0]["curve"][:n]])
                acc = np.array([[p[1] for p in r["curve"][:n]] for r in rs])
                ax.plot(q, acc.mean(0), label=method)
                spread = acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(n)
                ax.fill_between(q, acc.mean(0) - spread, acc.mean(0) + spread, alpha=0.2)
            ax.axhline(victim_acc, color="k", ls="--", lw=0.8)
            ax.set_title(f"defense: {defense}")
            ax.set_xlabel("queries (victim evaluations)")
        axes[0][0].set_ylabel("stolen accuracy (mean ± sd over seeds)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--dataset", default="digits", choices=list(VICTIMS))
    r.add_argument("--budget", type=int, default=200_000)
    r.add_argument("--checkpoint-every", type=int, default=10, help="iterations between evaluations")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    r.add_argument("--defenses", nargs="+", default=list(DEFENSES), choices=list(DEFENSES))
    r.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("report")
    s.add_argument("--out", required=True)
    s.add_argument("--level", type=float, default=0.7, help="relative accuracy (x victim) to reach")
    s.add_argument("--plot")
    args = p.parse_args()
    (run if args.cmd == "run" else report)(args)


if __name__ == "__main__":
    main()

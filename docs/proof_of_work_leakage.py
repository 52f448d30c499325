"""In-process leakage curves for docs/proof_of_work.md (no service, no Ray): which queries each client kind
sends, and what the PoW accounting charges for them.

    OMP_NUM_THREADS=1 python docs/proof_of_work_leakage.py docs/proof_of_work_leakage.png

Digits victim (seed 0, the default VictimConfig), PATE-kNN k=30, σ=2.8 (the paper’s k/σ = 300/28), δ=1e-5; query-sampling seeds 0, 1, 2.
The attacks are Heist's own modules run through a LocalQueryClient that records what they query; the
benign client sends the test set in a random order. T is the extra time each batch of 64 owes at the
setting offset 1, t_min 2 ms, t_max 0.5 s and base 1.002, 1.05 or 1.5, summed per client.
"""
import json
import sys

import numpy as np
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo, steal
from workloads.config import parse
from workloads.data import surrogate_pool
from workloads.pow import PowParams
from workloads.pow.calibration import extra_seconds, prepare
from workloads.victims import VictimConfig, load_or_train

BUDGET, SEEDS = 700, (0, 1, 2)
BASES = (1.002, 1.05, 1.5)
PARAMS = PowParams(k=30, sigma=2.8, base=1.5, offset=1.0, t_min=0.002, t_max=0.5)
ATTACKS = {"knockoff": {"name": "knockoff"},
           "copycat": {"name": "copycat", "surrogate": {"kind": "noise", "size": 2 * BUDGET}},
           "entropy_rev": {"name": "entropy_rev", "params": {"step": 100, "round_epochs": 3}},
           "worst_case": {"name": "worst_case", "params": {"step": 100}}}


def account(estimator, curve, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Cumulative cost after each batch of 64 and the total extra seconds owed at each of BASES."""
    total, costs, owed = np.zeros(estimator.width), [], [0.0] * len(BASES)
    for lo in range(0, len(x), 64):
        total = total + estimator.increments(x[lo:lo + 64]).sum(0)
        costs.append(float(estimator.cost(total)))
        for i, base in enumerate(BASES):
            owed[i] += extra_seconds(costs[-1], min(lo + 64, len(x)), curve, base=base, t_min=PARAMS.t_min,
                                     t_max=PARAMS.t_max, offset=PARAMS.offset) * len(x[lo:lo + 64]) / 64
    return costs, owed


def main(png: str) -> None:
    torch.set_num_threads(1)
    victim = load_or_train(VictimConfig())
    acc = prepare(PARAMS, victim)
    est = acc.build(victim.model)
    data = victim.data
    out = {}
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        runs = {"benign": data.x_test[torch.randperm(len(data.x_test), generator=gen)]}
        for name, spec in ATTACKS.items():
            cfg = parse(AttackConfig, spec | {"budget": BUDGET, "seed": seed, "train": {"epochs": 10, "lr": 0.002}})
            sent = []

            def answer(x):
                sent.append(x.clone())
                with torch.inference_mode():
                    return torch.softmax(victim.model(x), 1)

            pool = surrogate_pool(cfg.surrogate.kind, data, size=cfg.surrogate.size, seed=seed)
            steal(cfg, LocalQueryClient(answer, BUDGET), pool, VictimInfo(data.shape, 10, "lenet5", leakage=est))
            runs[name] = torch.cat(sent)
        for name, x in runs.items():
            costs, owed = account(est, acc.curve, x)
            out.setdefault(name, []).append({"costs": costs, "queries": len(x), "owed_s": owed})
    json.dump({"curve": [acc.curve.slope, acc.curve.intercept], "runs": out}, open(png + ".json", "w"))
    print(f"benign curve: C(n) = {acc.curve.slope:.4f} n + {acc.curve.intercept:.2f}")
    print(f"{'client':<12} {'queries':>7} {'ε at 320 (mean ± sd)':>22} {'ε per query':>12} "
          + " ".join(f"{'T owed, base ' + str(b):>20}" for b in BASES))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rs in out.items():
        n = min(len(r["costs"]) for r in rs)
        c = np.array([r["costs"][:n] for r in rs])
        q = np.minimum(np.arange(1, n + 1) * 64, min(r["queries"] for r in rs))
        ax.plot(q, c.mean(0), label=name)
        ax.fill_between(q, c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.2)
        at = c[:, 4]                                    # after 5 batches = 320 queries
        final = np.array([r["costs"][-1] / r["queries"] for r in rs])
        owed = np.array([r["owed_s"] for r in rs])
        print(f"{name:<12} {rs[0]['queries']:>7} {at.mean():>14.2f} ± {at.std():.2f} {final.mean():>12.4f} "
              + " ".join(f"{m:>13.3f} ± {sd:.3f}" for m, sd in zip(owed.mean(0), owed.std(0))))
    ax.set(xlabel="queries of the client", ylabel="cumulative PATE-kNN ε (k=30, σ=2.8)",
           title="digits: leakage per client kind (3 seeds, mean ± sd)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])

"""Calibrating proof-of-work difficulty to leakage (Dziedzic et al., ICLR 2022, Sec. 3; official
`pow/proof_of_work.py`).

1. Benign reference: a legitimate user sends the in-distribution test set in random order; its cumulative
   cost after each batch is fitted by linear regression Ĉ(n) = a·n + b (the official code fits its
   `time_privacy_cost_{dataset}.csv`). Heist fits it from the victim it serves, per estimator setting, and
   keeps it in the victim's cache folder (`pow_calibration/<key>.json`).
2. Extra time for a client's next batch of `batch_queries` queries (64 in the paper):
   T = clip(base^|C_user − Ĉ(n)| − offset, t_min, t_max); a request of m images owes T·m/batch_queries.
   (The official code subtracts 1 s at the first batch and 0.75 s for its PATE-kNN MNIST setting; `offset`
   makes that a knob, 0 by default.)
3. Time → difficulty: bits = round(log2(T · R)), R the hash rate of Heist's own minter measured by the
   service when it starts (the paper used a fixed table of its hardware's SHA-1 timings), so the expected
   2^bits hashes take about T on that machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from workloads.seeds import derive_seed

MAX_BITS = 60


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The benign reference curve Ĉ(n) = slope·n + intercept and the points it was fitted to."""

    slope: float
    intercept: float
    queries: list[int]
    costs: list[float]

    def expected(self, n: float) -> float:
        return self.slope * n + self.intercept


def benign_curve(estimator, x_test: torch.Tensor, *, seed: int = 0, batch: int = 64) -> Calibration:
    """Cumulative cost of a benign client querying `x_test` in a random order (stream "pow/calibration")
    in batches of `batch`, and its least-squares line."""
    gen = torch.Generator().manual_seed(derive_seed("pow/calibration", seed))
    x = x_test[torch.randperm(len(x_test), generator=gen)]
    total = np.zeros(estimator.width)
    queries, costs = [], []
    for lo in range(0, len(x), batch):
        total = total + estimator.increments(x[lo:lo + batch]).sum(0)
        queries.append(min(lo + batch, len(x)))
        costs.append(float(estimator.cost(total)))
    slope, intercept = np.polyfit(queries, costs, 1) if len(queries) > 1 else (costs[0] / queries[0], 0.0)
    return Calibration(float(slope), float(intercept), queries, costs)


def cached_curve(folder: str | os.PathLike, setting: dict, fit) -> Calibration:
    """The curve for `setting` (a JSON-able dict) from `folder/pow_calibration/`, or `fit()` it and store it."""
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(folder) / "pow_calibration" / f"{key}.json"
    if path.exists():
        return Calibration(**json.loads(path.read_text())["curve"])
    curve = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump({"setting": setting, "curve": dataclasses.asdict(curve)}, f)
    os.replace(f.name, path)
    return curve


def extra_seconds(cost: float, n: int, curve: Calibration, *, base: float, t_min: float, t_max: float,
                  offset: float = 0.0) -> float:
    """T = clip(base^|cost − Ĉ(n)| − offset, t_min, t_max), computed in log space (no overflow)."""
    log_t = abs(cost - curve.expected(n)) * math.log(base)
    t = math.exp(log_t) if log_t < math.log(t_max + offset + 1.0) else t_max + offset + 1.0
    return min(max(t - offset, t_min), t_max)


def bits_for(seconds: float, rate: float) -> int:
    """Leading zero bits whose expected 2^bits hashes take `seconds` at `rate` hashes/s (nearest in log2)."""
    work = seconds * rate
    return 0 if work <= 1.0 else min(MAX_BITS, int(round(math.log2(work))))


@dataclasses.dataclass
class Accounting:
    """What the service's gate needs to charge leakage: the estimator's settings, the victim's training
    representations (PATE-kNN) and the benign reference curve."""

    estimator: str
    k: int
    sigma: float
    delta: float
    data_independent_bound: bool
    num_classes: int
    curve: Calibration
    train_reps: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None

    def build(self, model, device="cpu"):
        from workloads.pow.pate_knn import build_estimator

        return build_estimator(self.estimator, model, train_reps=self.train_reps, train_labels=self.train_labels,
                               num_classes=self.num_classes, k=self.k, sigma=self.sigma, delta=self.delta,
                               data_independent_bound=self.data_independent_bound, device=device)


def prepare(params, victim, cache_dir=None) -> Accounting:
    """Accounting for `params` (PowParams) against `victim` (workloads.victims.Victim): the training
    representations, and the benign curve from the victim's cache folder (fitted and stored on first use)."""
    from workloads.pow.pate_knn import delta_for, train_representations
    from workloads.victims import DEFAULT_CACHE

    data = victim.data
    delta = params.delta or delta_for(victim.config.dataset)
    pknn = params.estimator == "pknn"
    acc = Accounting(params.estimator, params.k, params.sigma, delta, params.data_independent_bound,
                     data.num_classes, curve=None,
                     train_reps=train_representations(victim.model, data.x_train) if pknn else None,
                     train_labels=data.y_train.clone() if pknn else None)
    setting = {"estimator": params.estimator, "batch": params.batch_queries, "seed": victim.config.seed}
    if pknn:
        setting |= {"k": params.k, "sigma": params.sigma, "delta": delta,
                    "data_independent_bound": params.data_independent_bound}
    folder = Path(cache_dir or DEFAULT_CACHE) / victim.config.key
    acc.curve = cached_curve(folder, setting, lambda: benign_curve(
        acc.build(victim.model), data.x_test, seed=victim.config.seed, batch=params.batch_queries))
    return acc

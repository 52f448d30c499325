"""Calibrated proof of work (Dziedzic, Kaleem, Lu, Papernot; ICLR 2022): leakage accounting
(`pate_knn`), calibration of the puzzle difficulty (`calibration`) and the puzzle itself (`hashcash`).

`PowParams` are the knobs of the `pow` defense (`defense: {name: pow, params: {...}}`): its answers are the
victim's clean posteriors, released by the service's proof-of-work gate (orchestrator/pow_gate.py).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from workloads.config import ConfigError, above, check_choice, knob, positive

ESTIMATORS = ("pknn", "entropy", "gap")    # workloads.pow.pate_knn; this package's top stays free of torch

# Training-split sizes before the attacker pool is taken out (digits: after its test hold-out), so that
# `k` can be checked against the victim's training set before any data is loaded.
SOURCE_SIZES = {"digits": 1797, "fashion_mnist": 60000, "mnist": 60000, "kmnist": 60000, "cifar10": 50000,
                "cifar100": 50000, "svhn": 73257}
NO_TEST_SPLIT = {"digits"}


@dataclasses.dataclass(frozen=True)
class PowParams:
    """Knobs of calibrated proof of work; defaults are the paper's (PATE-kNN, k=300, σ=28, MNIST base 1.18)."""

    estimator: str = knob("pknn", "leakage estimator: PATE-kNN RDP (the paper's), entropy or margin gap",
                          "pknn | entropy | gap")
    k: int = knob(300, "PATE-kNN neighbours in the victim's log-softmax space (num_teachers_private_knn)", ">= 1")
    sigma: float = knob(28.0, "GNMax noise of the PATE-kNN vote (sigma_gnmax_private_knn)", "> 0")
    delta: float | None = knob(None, "DP δ for the ε conversion; null: per dataset (1e-5, SVHN 1e-6)", "(0, 1)")
    data_independent_bound: bool = knob(False, "take the min with the data-independent λ/σ² (the official "
                                               "PrivateKnn does not)", "true | false")
    base: float = knob(1.18, "T = base^|C_user − Ĉ(n)| (pknn MNIST 1.18; entropy/gap 1.0075)", "> 1")
    t_min: float = knob(0.1, "lower clip of the extra time per batch_queries queries, seconds", ">= 0")
    t_max: float = knob(2948.47, "upper clip of that time, seconds (the paper's 32-bit timing)", "> 0, >= t_min")
    offset: float = knob(0.0, "seconds subtracted from base^diff before clipping", ">= 0")
    batch_queries: int = knob(64, "the time T is owed per this many queries (the paper's batch)", ">= 1")
    mode: Literal["real", "simulated"] = knob("real", "real: clients mint hashcash stamps; simulated: 2^bits / "
                                                      "measured rate seconds are booked", "real | simulated")
    stamp_ttl_s: float = knob(600.0, "a challenge expires this long after it was issued, seconds", "> 0")

    def __post_init__(self):
        check_choice("estimator", self.estimator, ESTIMATORS)
        positive("k", self.k)
        above("sigma", self.sigma)
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta: expected a value in (0, 1), got {self.delta!r}")
        above("base", self.base, 1)
        positive("t_min", self.t_min, 0)
        above("t_max", self.t_max)
        if self.t_min > self.t_max:
            raise ConfigError(f"t_min: {self.t_min!r} exceeds t_max ({self.t_max!r})")
        positive("offset", self.offset, 0)
        positive("batch_queries", self.batch_queries)
        above("stamp_ttl_s", self.stamp_ttl_s)


def victim_train_size(victim) -> int:
    """Training points of a VictimConfig's victim, from the dataset's size and its split fractions."""
    n = SOURCE_SIZES[victim.dataset]
    if victim.dataset in NO_TEST_SPLIT:
        n -= int(round(victim.test_fraction * n))
    return n - int(round(victim.pool_fraction * n))


def check_against_victim(params: PowParams, victim) -> None:
    """ConfigError naming `defense.params.k` when k exceeds the victim's training set."""
    if params.estimator == "pknn" and victim.dataset in SOURCE_SIZES and params.k > victim_train_size(victim):
        raise ConfigError(f"defense.params.k: {params.k} neighbours exceed the victim's "
                          f"{victim_train_size(victim)} training points ({victim.dataset})")

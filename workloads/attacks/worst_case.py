"""Worst-case adaptive attacker (Dziedzic et al., ICLR 2022; official mode `worstcase`): it knows the
defender's exact leakage cost of every candidate query and, each round, queries the pool images whose
marginal cost on top of what it has already spent is lowest (the official
`compute_utility_scores_privacy`, "minimum privacy first"). Hard labels.

The cost oracle is the `pow` defense's own estimator (`VictimInfo.leakage`, set by the trial only when
the defense is `pow`); it scores candidates without answering or charging them. The attacker spreads its
budget over its workers, each a separate client to the service; the oracle's total is over all of them.
"""
import numpy as np

from workloads.attacks import register
from workloads.attacks.adaptive import AdaptiveParams, steal_in_rounds
from workloads.config import ConfigError


@register("worst_case", AdaptiveParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    oracle = victim.leakage
    if oracle is None:
        raise ConfigError(f"attacks: {cfg.key}: worst_case needs the defender's leakage estimator; "
                          f"run it against defense `pow`")
    increments = oracle.increments(pool)           # every candidate's own increment, computed once
    spent = np.zeros(oracle.width)

    def marginal(idx, substitute):
        return oracle.cost(spent + increments[idx.numpy()]) - oracle.cost(spent)

    def add(idx):
        nonlocal spent
        spent = spent + increments[idx.numpy()].sum(0)

    return steal_in_rounds(cfg, params, client, pool, victim, marginal, checkpoint, retrain=False, on_query=add)

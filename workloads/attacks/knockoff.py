"""Knockoff Nets, random strategy (Orekondy, Schiele, Fritz, CVPR 2019).

The adversary draws `budget` images uniformly from its own natural-image query set (repeating the set
when the budget exceeds it, as the official `transfer.py` does), collects the victim's posteriors and
trains a substitute by distillation (soft labels; `labels: hard` trains on the argmax instead).
"""
from workloads.attacks import NoParams, register
from workloads.attacks.transfer import query_and_train, sample_queries


@register("knockoff", NoParams, labels="soft")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    return query_and_train(cfg, client, sample_queries(pool, cfg.budget, cfg.seed), victim, checkpoint)

"""CopycatCNN (Correia-Silva, Berriel, Badue, de Souza, Oliveira-Santos, IJCNN 2018).

The adversary labels a fake dataset of non-problem-domain images once each with the victim's top-1
label and trains a copy with cross-entropy. Budget images are drawn without replacement; a budget
larger than the fake dataset labels every image once and leaves the rest unspent. The paper uses hard
labels; `labels: soft` is offered to compare with Knockoff Nets' distillation.
"""
from workloads.attacks import NoParams, register
from workloads.attacks.transfer import query_and_train, sample_queries


@register("copycat", NoParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    x = sample_queries(pool, min(cfg.budget, len(pool)), cfg.seed)
    return query_and_train(cfg, client, x, victim, checkpoint)

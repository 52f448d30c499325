"""Entropy-reversed adaptive attacker (Dziedzic et al., ICLR 2022; official mode `entropyrev`).

It tries to look like a benign user to calibrated proof of work: each round it queries the pool images
its current substitute is most confident about (lowest softmax entropy, the official
`compute_utility_scores_entropyrev`), since confident queries leak little and cost little. The substitute
is retrained from scratch on all answers after each round; hard labels, as the paper's selection modes.
The official code queries the first 4,000 of 10,000 MNIST images at random when the attacker's data is
out of distribution; `warmup` (default 0.4) makes that a fraction of the budget.
"""
import dataclasses

import numpy as np
import torch

from workloads.attacks import register
from workloads.attacks.adaptive import AdaptiveParams, steal_in_rounds


@dataclasses.dataclass(frozen=True)
class EntropyRevParams(AdaptiveParams):
    warmup: float = 0.4


def substitute_entropy(x: torch.Tensor, substitute) -> np.ndarray:
    if substitute is None:
        return np.zeros(len(x))
    substitute.eval()
    with torch.inference_mode():
        log_p = torch.cat([torch.log_softmax(substitute(c), 1) for c in x.split(1024)])
    return (-(log_p.exp() * log_p).sum(1)).numpy()


@register("entropy_rev", EntropyRevParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    return steal_in_rounds(cfg, params, client, pool, victim, lambda idx, sub: substitute_entropy(pool[idx], sub),
                           checkpoint)

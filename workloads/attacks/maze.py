"""MAZE — Data-Free Model Stealing Attack Using Zeroth-Order Gradient Estimation (Kariyappa, Prakash,
Qureshi, CVPR 2021), as DFME's reference replicates it (`--MAZE 1`): DFME's loop (dfme.py) with the KL
loss, m = 10 directions, batch 128, student SGD lr 0.1, generator SGD (momentum 0.9) lr 1e-4, and a cosine
schedule. (The reference sets `args.scheduer = "cosine"`, a misspelling, so its MAZE runs kept the
multistep schedule; MAZE's own code anneals with cosine, which is what this preset does.) Cost per
iteration = 128 (10 + 1 + 5) = 2,048 queries. MAZE's own code reuses the generator batch for the first
student step and replays past batches; those are not part of this preset.
"""
import dataclasses
from typing import Literal

from workloads.attacks import register
from workloads.attacks.dfme import DFMEParams, run_generator_attack, zo_generator_step


@dataclasses.dataclass(frozen=True)
class MAZEParams(DFMEParams):
    loss: Literal["l1", "kl"] = "kl"
    batch_size: int = 128
    grad_m: int = 10
    generator_optimizer: Literal["adam", "sgd"] = "sgd"
    schedule: Literal["multistep", "cosine", "none"] = "cosine"


@register("maze", MAZEParams, labels="soft", curves=("online",))
def steal(cfg, params, client, pool, victim, checkpoint=None):
    """MAZE; `pool` is unused (data-free)."""
    return run_generator_attack(cfg, params, client, victim, checkpoint, zo_generator_step,
                                params.grad_m + 1, "maze")

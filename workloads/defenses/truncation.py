"""Output truncation: release less precise posteriors.

Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing Machine Learning Models via Prediction APIs"
(USENIX Security 2016) proposed rounding confidences as a countermeasure; Orekondy, Schiele, Fritz's
Knockoff Nets (CVPR 2019) and Prediction Poisoning (ICLR 2020) code apply it as `truncate_output`
(keep the top-k classes, round to a number of decimals). Two defenses are registered here:

- `rounding`: ỹ = normalize(round(y, decimals)). ART's `Rounded` skips the renormalisation; we keep
  the simplex contract, so rows are rescaled after rounding.
- `top_k`: ỹ = normalize(y ⊙ 1[k largest]), zeroing all but the k largest entries (ties broken
  towards the lower class index); k = 1 releases the one-hot label.
"""
import dataclasses

import torch
import torch.nn.functional as F

from workloads.config import knob, positive
from workloads.defenses import normalize, register


@dataclasses.dataclass(frozen=True)
class RoundingParams:
    decimals: int = knob(2, "decimal places kept in each probability (rows are then renormalised)", ">= 0")

    def __post_init__(self):
        positive("decimals", self.decimals, 0)


@dataclasses.dataclass(frozen=True)
class TopKParams:
    k: int = knob(1, "classes kept, the most likely ones (1 releases the label only)", ">= 1")

    def __post_init__(self):
        positive("k", self.k)


def round_posteriors(probs: torch.Tensor, decimals: int) -> torch.Tensor:
    """Rows of `probs` rounded to `decimals` places and renormalised."""
    rounded = torch.round(probs, decimals=decimals)
    # An all-zero row cannot be rescaled onto the simplex; its argmax one-hot is rounding's coarsest limit.
    top1 = F.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    return torch.where(rounded.sum(1, keepdim=True) > 0, normalize(rounded), top1)


def keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of `probs` with all but their k largest entries zeroed, renormalised."""
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order[:, :k], True)
    return normalize(torch.where(kept, probs, torch.zeros_like(probs)))


@register("rounding", RoundingParams)
def build_rounding(params: RoundingParams, ctx):
    return lambda probs, x: round_posteriors(probs, params.decimals)


@register("top_k", TopKParams)
def build_top_k(params: TopKParams, ctx):
    return lambda probs, x: keep_top_k(probs, params.k)

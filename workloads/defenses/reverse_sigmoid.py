"""Reverse sigmoid: Lee, Edwards, Molloy, Su, "Defending Against Machine Learning Model Stealing Attacks
Using Deceptive Perturbations" (arXiv 1806.00054, 2018; IEEE S&P Workshops 2019).

The released answer is ỹ = normalize(y − r(y)) with the perturbation

    r(y) = β · (σ(γ · logit(y)) − ½),   logit(y) = log(y / (1 − y)),

where y is clipped to [1e-9, 1 − 1e-9] inside r only (as ART does), so zeros and ones stay finite;
r is computed in float64, where that clip is representable (in float32, 1 − 1e-9 rounds to 1).
Since σ(γ·logit y) = y^γ / (y^γ + (1 − y)^γ), a small γ squashes every class towards ½: confident
classes lose mass, unlikely ones gain it, and the argmax usually survives while the answer flattens.
"""
import dataclasses

import torch

from workloads.config import above, knob, positive
from workloads.defenses import normalize, register


@dataclasses.dataclass(frozen=True)
class ReverseSigmoidParams:
    beta: float = knob(1.0, "perturbation size: how much of σ(γ·logit y) − ½ is subtracted from each probability", ">= 0")
    gamma: float = knob(0.2, "slope of the sigmoid on the logit: small gamma squashes every class towards ½", "> 0")

    def __post_init__(self):
        positive("beta", self.beta, 0)
        above("gamma", self.gamma)


def reverse_sigmoid(probs: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Rows of `probs` minus β(σ(γ·logit y) − ½), clipped at 0 and renormalised."""
    clipped = probs.double().clamp(1e-9, 1 - 1e-9)
    perturbation = beta * (torch.sigmoid(gamma * torch.logit(clipped)) - 0.5)
    return normalize(probs - perturbation).to(probs.dtype)


@register("reverse_sigmoid", ReverseSigmoidParams)
def build(params: ReverseSigmoidParams, ctx):
    return lambda probs, x: reverse_sigmoid(probs, params.beta, params.gamma)

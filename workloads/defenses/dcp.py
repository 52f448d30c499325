"""DCP: Khaled, Dhaouadi, Gohring de Magalhães, Nicolescu, "Efficient Defense Against Model Stealing
Attacks on Convolutional Neural Networks" (ICMLA 2023; arXiv 2309.01838).

A confidence-gated reverse sigmoid, exactly as the official `df/defenses.py::method_dcp` computes it:

    s    = max_k p_k
    a    = 1 / (1 + exp(ν (s − β)))                    (ν = 1000: a ≈ 1 below β, ≈ 0 above)
    odds = clamp(p / (1 − p), 1e-12, 1 − 1e-12)
    r    = β (σ(γ log odds) − ½)
    y    = p − a·r,  renormalised to sum to 1.

β is both the confidence threshold and the perturbation size. Because the odds are capped below 1,
r ≤ 0: low-confidence answers gain mass on every class with p < ½ (most on the least likely ones),
so they flatten and may change argmax; confident answers (s > β) pass unchanged; β > 1 perturbs all.
Since y ≥ p ≥ 0, the plain division by the row sum keeps rows on the simplex. Computed in float64,
where the clamp bounds are representable.
"""
import dataclasses

import torch

from workloads.config import above, knob, positive
from workloads.defenses import register


@dataclasses.dataclass(frozen=True)
class DCPParams:
    beta: float = knob(0.5, "confidence threshold and perturbation size at once: answers whose top probability is "
                            "below beta are perturbed, confident ones pass; beta > 1 perturbs every answer", ">= 0")
    gamma: float = knob(0.2, "slope of the reverse sigmoid on the log-odds: smaller flattens answers more", "> 0")
    nu: float = knob(1000.0, "sharpness of the confidence gate at beta (the reference code's 1000)", "> 0")

    def __post_init__(self):
        positive("beta", self.beta, 0)
        above("gamma", self.gamma)
        above("nu", self.nu)


def confidence_gated_reverse_sigmoid(probs: torch.Tensor, beta: float, gamma: float, nu: float) -> torch.Tensor:
    """DCP's answer for each row of `probs` (the equation in the module docstring)."""
    p = probs.double()
    confidence = p.amax(1, keepdim=True)
    gate = torch.sigmoid(nu * (beta - confidence))
    odds = (p / (1 - p)).clamp(1e-12, 1 - 1e-12)
    perturbation = beta * (torch.sigmoid(gamma * odds.log()) - 0.5)
    y = p - gate * perturbation
    return (y / y.sum(1, keepdim=True)).to(probs.dtype)


@register("dcp", DCPParams)
def build(params: DCPParams, ctx):
    return lambda probs, x: confidence_gated_reverse_sigmoid(probs, params.beta, params.gamma, params.nu)

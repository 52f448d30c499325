"""Adaptive Misinformation: Kariyappa, Qureshi, "Defending Against Model Stealing Attacks with Adaptive
Misinformation" (CVPR 2020).

    ỹ = (1 − α) y + α softmax(M(x)),   α = σ(ν (τ − max_k y_k))

Queries the victim is unsure about (top probability below τ, the paper's out-of-distribution signal)
are answered by a misinformation model M instead; confident (in-distribution) queries pass almost
unchanged. M has the victim's architecture and is trained on the victim's training data to put low
probability on the true class, with the paper's loss NLL(log(1 − softmax(M(x)) + 1e-7), y).
ν sets how sharp the switch at τ is: the official code uses 10000, GRAD²'s reimplementation 1000.

The paper also trains the victim with Outlier Exposure (Hendrycks et al., ICLR 2019) so that
out-of-distribution queries get low confidence; such a victim is a trained defense and is not built
here: this module wraps whatever victim the context holds.
"""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.config import above, in_range, knob, positive
from workloads.defenses import DefenseContext, register
from workloads.models import build_model
from workloads.seeds import derive_seed

# The official code trains M alongside the victim (SGD 0.1, batch 64, all the victim's epochs); for a
# few epochs on its own, Adam converges where that SGD recipe barely moves M off uniform.
MISINFORMATION_BATCH_SIZE = 64
MISINFORMATION_LR = 3e-3


@dataclasses.dataclass(frozen=True)
class AdaptiveMisinformationParams:
    tau: float = knob(0.5, "confidence threshold: answers whose top probability is below tau come from the "
                           "misinformation model", "[0, 1.5]")
    nu: float = knob(1000.0, "sharpness of the switch at tau (official code 10000, GRAD²'s reimplementation 1000)", "> 0")
    misinformation_epochs: int = knob(5, "epochs training the misinformation model on the victim's training data", ">= 1")

    def __post_init__(self):
        in_range("tau", self.tau, 0.0, 1.5)
        above("nu", self.nu)
        positive("misinformation_epochs", self.misinformation_epochs)


def train_misinformation_model(ctx: DefenseContext, epochs: int) -> nn.Module:
    """A fresh copy of the victim's architecture trained (Adam) to avoid the true class on its training data."""
    data = ctx.dataset
    seed = derive_seed("defense/misinformation", ctx.seed)
    model = build_model(ctx.arch, data.shape, data.num_classes, seed=seed).to(ctx.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=MISINFORMATION_LR)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x_train), generator=order).split(MISINFORMATION_BATCH_SIZE):
            x, y = data.x_train[idx].to(ctx.device), data.y_train[idx].to(ctx.device)
            loss = F.nll_loss(torch.log(1 - F.softmax(model(x), 1) + 1e-7), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def adaptive_misinformation(probs: torch.Tensor, misinformation: torch.Tensor, tau: float, nu: float) -> torch.Tensor:
    """Each row of `probs` mixed with the misinformation posterior by α = σ(ν(τ − max_k y_k))."""
    alpha = torch.sigmoid(nu * (tau - probs.amax(1, keepdim=True)))
    return (1 - alpha) * probs + alpha * misinformation


@register("adaptive_misinformation", AdaptiveMisinformationParams)
def build(params: AdaptiveMisinformationParams, ctx: DefenseContext):
    misinformation_model = train_misinformation_model(ctx, params.misinformation_epochs)

    def defend(probs, x):
        with torch.no_grad():
            logits = misinformation_model(x.to(ctx.device))
        misinformation = F.softmax(logits, 1).to(probs.device, probs.dtype)
        return adaptive_misinformation(probs, misinformation, params.tau, params.nu)

    return defend

"""MAD: Orekondy, Schiele, Fritz, "Prediction Poisoning: Towards Defenses Against DNN Model Stealing
Attacks" (ICLR 2020), with an ℓ1 budget, the `extreme` oracle and the closed-form linesearch.

MAD answers with the point of an ℓ1 ball of radius ε around y that most turns the gradient an attacker
gets when training on the answer (the MAD objective):

    max_{ỹ ∈ Δ_K, ‖ỹ − y‖₁ ≤ ε}  ‖ Gᵀỹ/‖Gᵀỹ‖ − Gᵀy/‖Gᵀy‖ ‖²,

where row k of G is the gradient of −log softmax_k of a surrogate of the attacker's model with respect
to the surrogate's last layer. As in the reference code (`bb_mad.py`), the `extreme` oracle picks the
vertex y* = e_j with the largest objective, and the linesearch returns ỹ = (1 − α) y + α y* with
α = min(1, ε / ‖y − y*‖₁), so ‖ỹ − y‖₁ = min(ε, ‖y − y*‖₁). The surrogate is a freshly initialised
copy of the victim's architecture seeded with the context's seed (the reference code's "scratch").

Closed form, batched over the whole batch (the reference code handles one sample at a time). For a
last Linear layer z = W h + b with surrogate softmax p_s, the gradient of −log softmax_k with respect to
(W, b) is (p_s − e_k) ⊗ [h; 1]. For ỹ on the simplex (Σ_k ỹ_k = 1):

    Gᵀỹ = Σ_k ỹ_k (p_s − e_k) ⊗ [h; 1] = (p_s − ỹ) ⊗ [h; 1],

and since ‖a ⊗ c‖ = ‖a‖ ‖c‖, Gᵀỹ/‖Gᵀỹ‖ = u(ỹ) ⊗ c/‖c‖ with u(v) = (p_s − v)/‖p_s − v‖ and c = [h; 1].
The objective is then ‖(u(ỹ) − u(y)) ⊗ c/‖c‖‖² = ‖u(ỹ) − u(y)‖²: it needs only p_s, never G, and all
K vertices of all rows are scored at once in K dimensions. (The reference code differentiates the
weight only, giving ⊗ h instead of ⊗ [h; 1]: the same objective.) The score is the normalised one of
the reference code's `objmax=True`, as in its README example; its default unnormalised score
‖Gᵀ(e_j − y)‖² = ‖e_j − y‖² ‖h‖² would always pick the least likely class, whatever the surrogate.
"""
import dataclasses

import torch
import torch.nn.functional as F

from workloads.config import knob, positive
from workloads.defenses import DefenseContext, register
from workloads.models import build_model
from workloads.seeds import derive_seed


@dataclasses.dataclass(frozen=True)
class MADParams:
    epsilon: float = knob(0.5, "ℓ1 budget: the largest ‖ỹ − y‖₁ between an answer and the clean posteriors", ">= 0")

    def __post_init__(self):
        positive("epsilon", self.epsilon, 0)


def gradient_directions(targets: torch.Tensor, surrogate_probs: torch.Tensor) -> torch.Tensor:
    """u(v) = (p_s − v)/‖p_s − v‖ over the last dimension (0 where v = p_s)."""
    difference = surrogate_probs - targets
    return difference / difference.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def vertex_objectives(probs: torch.Tensor, surrogate_probs: torch.Tensor) -> torch.Tensor:
    """MAD's objective ‖u(e_j) − u(y)‖² for every vertex e_j of every row: shape (B, K)."""
    vertices = torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)
    toward_vertices = gradient_directions(vertices, surrogate_probs[:, None, :])
    toward_answer = gradient_directions(probs, surrogate_probs)[:, None, :]
    return (toward_vertices - toward_answer).pow(2).sum(-1)


def prediction_poisoning(probs: torch.Tensor, surrogate_probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """MAD with the extreme oracle and ℓ1 linesearch, for rows `probs` and surrogate posteriors p_s."""
    best_vertex = vertex_objectives(probs, surrogate_probs).argmax(1)
    target = F.one_hot(best_vertex, probs.shape[1]).to(probs.dtype)
    distance = (probs - target).abs().sum(1, keepdim=True)
    alpha = (epsilon / distance.clamp_min(1e-12)).clamp(max=1.0)
    return (1 - alpha) * probs + alpha * target


@register("mad", MADParams)
def build(params: MADParams, ctx: DefenseContext):
    data = ctx.dataset
    seed = derive_seed("defense/surrogate", ctx.seed)
    surrogate = build_model(ctx.arch, data.shape, data.num_classes, seed=seed).to(ctx.device).eval()

    def defend(probs, x):
        with torch.no_grad():
            logits = surrogate(x.to(ctx.device))
        surrogate_probs = F.softmax(logits.double(), 1).to(probs.device)
        return prediction_poisoning(probs.double(), surrogate_probs, params.epsilon).to(probs.dtype)

    return defend

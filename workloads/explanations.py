"""Gradient explanations of a classifier, as an explainable-AI API would return them.

The explained quantity is the victim's log-probabilities log v(x) (the log of what `query` answers; the
quantity DFME's loss uses, so no logit scale leaks). Explainers:

* `vanilla` — the input gradient (Simonyan, Vedaldi, Zisserman, ICLR-W 2014);
* `smoothgrad` — the mean input gradient at `samples` points x + N(0, sigma^2)
  (Smilkov et al., arXiv 1706.03825, Eq. 3; inputs are in [0, 1], so sigma is the noise level of the
  paper's sigma / (x_max - x_min)).

What is differentiated per image (MEGEX, Miura et al., arXiv 2107.08909, leaves this open; seeds.md §3.3):

* `top1` — the gradient of the victim's predicted class: one row;
* `vjp` — the gradient of w . log v(x) for a client-chosen weight vector w (one per image): one row;
* `full_jacobian` — the gradient of every class's log-probability: K rows.

Cost (victim evaluations per image, charged like queries): rows x (samples for smoothgrad, 1 for
vanilla), so `full_jacobian` costs K, SmoothGrad costs n. The answer also carries the prediction at x
(defended by the caller); for SmoothGrad that forward pass rides along uncharged (the brief's n per image).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.config import check_choice, positive

MODES = ("top1", "vjp", "full_jacobian")
EXPLAINERS = ("vanilla", "smoothgrad")


@dataclasses.dataclass(frozen=True)
class ExplainRequest:
    """One explanation request: what to differentiate (`mode`) and how (`explainer`, `samples`, `sigma`)."""

    mode: str = "top1"
    explainer: str = "vanilla"
    samples: int = 50          # SmoothGrad's n (Smilkov et al. use 50); unused by `vanilla`
    sigma: float = 0.15        # SmoothGrad's noise level in [0, 1] input units (paper: 10-20 % of the range)

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("explainer", self.explainer, EXPLAINERS)
        positive("samples", self.samples)
        positive("sigma", self.sigma, 0)

    def rows(self, num_classes: int) -> int:
        """Gradient rows returned per image."""
        return num_classes if self.mode == "full_jacobian" else 1

    def cost(self, num_classes: int) -> int:
        """Victim evaluations charged per image."""
        return self.rows(num_classes) * (self.samples if self.explainer == "smoothgrad" else 1)


def check_weights(weights, n: int, num_classes: int, mode: str) -> None:
    """ValueError naming `weights` unless it fits the request (an (n, K) finite array exactly for `vjp`)."""
    if mode != "vjp":
        if weights is not None:
            raise ValueError(f"weights: only mode 'vjp' takes weights, got them with mode {mode!r}")
        return
    if weights is None:
        raise ValueError("weights: mode 'vjp' needs one weight vector per image, got none")
    shape = tuple(getattr(weights, "shape", ()))
    if shape != (n, num_classes):
        raise ValueError(f"weights: expected shape ({n}, {num_classes}), got {shape}")
    if not bool(torch.isfinite(torch.as_tensor(weights)).all()):
        raise ValueError("weights: non-finite values (NaN/inf)")


def explain(model: nn.Module, x: torch.Tensor, request: ExplainRequest, weights: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean posteriors (N, K) at x and explanations (N, rows, C, H, W) of log v, batched over the images.

    `generator` draws SmoothGrad's noise (on x's device)."""
    model.eval()
    n = len(x)
    with torch.enable_grad():
        x = x.detach()
        if request.explainer == "smoothgrad":
            with torch.no_grad():
                probs = F.softmax(model(x), 1)
            s = request.samples
            noise = torch.randn((n, s, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
            points = (x.unsqueeze(1) + request.sigma * noise).flatten(0, 1).requires_grad_(True)
        else:
            s = 1
            points = x.clone().requires_grad_(True)
        logits = model(points)
        if s == 1:
            probs = F.softmax(logits.detach(), 1)
        logp = F.log_softmax(logits, 1).view(n, s, -1)
        k = logp.shape[-1]
        if request.mode == "full_jacobian":
            seeds = [F.one_hot(torch.full((n,), c, device=x.device), k).to(logp.dtype) for c in range(k)]
        elif request.mode == "top1":
            seeds = [F.one_hot(probs.argmax(1), k).to(logp.dtype)]
        else:
            seeds = [weights.to(device=x.device, dtype=logp.dtype)]
        rows = []
        for i, w in enumerate(seeds):
            (g,) = torch.autograd.grad((logp * w.unsqueeze(1)).sum(), points, retain_graph=i < len(seeds) - 1)
            rows.append(g.view(n, s, *x.shape[1:]).mean(1))
    return probs.detach(), torch.stack(rows, 1).detach()


def add_noise(grads: torch.Tensor, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise on each explanation, std = level x that explanation's RMS value (a defense knob)."""
    if level <= 0:
        return grads
    rms = grads.flatten(2).pow(2).mean(2).sqrt()[..., None, None, None]
    return grads + level * rms * torch.randn(grads.shape, generator=generator, device=grads.device,
                                             dtype=grads.dtype)

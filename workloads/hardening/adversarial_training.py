"""PGD adversarial training (Madry et al., ICLR 2018), optionally with a watermark learned alongside.

Madry eq. (2): min_θ E[max_{‖δ‖∞≤ε} L(f_θ(x+δ), y)], the inner max by PGD (workloads.adversarial.pgd: uniform
random start, `steps` signed steps of size α, projection on the ε-ball and [0, 1]). Thakkar, Zizzo, Maffeis,
"Elevating Defenses: Bridging Adversarial Training and Watermarking for Model Resilience" (AAAI'24 workshop)
add a watermark set (workloads.ownership.watermark): adversarial examples crafted with β > ε + α, or the OOD
trigger-set baseline, learned with their key labels. There is no public code; the choices it leaves open:
- every batch is PGD examples of the clean batch plus `watermark.per_batch` watermark samples (cycled), one
  cross-entropy over the concatenation, no AT on the watermarks (as the paper's recipe describes them);
- the "pre-trained model" adversarial watermarks are crafted on is a clean model of the victim's architecture
  trained on the victim's train split with the victim's TrainConfig from its own "hardening/surrogate" seed:
  the paper names no model, and an independent one keeps the victim's own weights out of the key;
- the victim starts from its own fresh initialisation (Madry), not from that clean model.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from workloads.adversarial import pgd
from workloads.config import ConfigError, knob, positive
from workloads.hardening import HardeningContext, HardeningResult, register
from workloads.models import build_model
from workloads.ownership.watermark import WatermarkParams, craft_adversarial, ood_trigger_set
from workloads.seeds import derive_seed
from workloads.training import fit, optimizer_for, predict_proba


@dataclasses.dataclass(frozen=True)
class AdversarialTrainingParams:
    """Madry's PGD adversarial training (L∞, pixels in [0, 1]) and the watermark learned with it."""

    epsilon: float = knob(0.1, "L∞ radius of the PGD training attack, pixels in [0, 1] (Fashion-MNIST's usual 0.1; MNIST's 0.3)", '>= 0')
    alpha: float = knob(0.02, 'PGD step size', '> 0')
    steps: int = knob(7, 'PGD steps per training batch', '>= 1')
    random_start: bool = knob(True, 'start PGD from a uniform point in the ε-ball (Madry)')
    watermark: WatermarkParams = knob(WatermarkParams(), 'the watermark learned alongside: {kind: adversarial | ood | none, k, beta, ...} (docs/watermarks.md)')

    def __post_init__(self):
        positive("epsilon", self.epsilon, 0)
        positive("alpha", self.alpha, 0)
        positive("steps", self.steps, 0)
        wm = self.watermark
        if wm.kind == "adversarial" and not wm.beta > self.epsilon + self.alpha:
            raise ConfigError(f"watermark.beta: expected > epsilon + alpha = {self.epsilon + self.alpha:g} "
                              f"(so adversarial training cannot erase the watermark), got {wm.beta!r}")

    def check_holdout(self, holdout: int, path: str) -> None:
        if self.watermark.kind == "adversarial" and self.watermark.k > holdout:
            raise ConfigError(f"{path}.watermark.k: {self.watermark.k} watermarks need as many held-out images, "
                              f"but victim.holdout is {holdout}")


@register("adversarial_training", AdversarialTrainingParams)
def train(params: AdversarialTrainingParams, ctx: HardeningContext) -> HardeningResult:
    wm_gen = torch.Generator().manual_seed(derive_seed("hardening/data", ctx.seed))
    wm = {}
    if params.watermark.kind == "adversarial":
        wm = craft_adversarial(params.watermark, ctx.data, clean_model(ctx), wm_gen)
    elif params.watermark.kind == "ood":
        wm = ood_trigger_set(params.watermark, ctx.data, wm_gen, ctx.data_root)
    seed = derive_seed("victim/train", ctx.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = _train(params, ctx, wm, torch.Generator().manual_seed(seed))
    metrics = {"final_loss": loss}
    if wm:
        metrics["wm_accuracy_train"] = (predict_proba(ctx.model, wm["wm_x"]).argmax(1) == wm["wm_y"]).float().mean()
    return HardeningResult(ctx.model, metrics, wm)


def clean_model(ctx: HardeningContext):
    """The clean model adversarial watermarks are crafted on (see the module docstring)."""
    seed = derive_seed("hardening/surrogate", ctx.seed)
    model = build_model(ctx.arch, ctx.data.shape, ctx.data.num_classes, seed=seed)
    return fit(model, ctx.data.x_train, ctx.data.y_train, ctx.train, seed=seed + 1, device=ctx.device)


def _train(params: AdversarialTrainingParams, ctx: HardeningContext, wm: dict, gen: torch.Generator) -> float:
    model, x, y, cfg = ctx.model.to(ctx.device), ctx.data.x_train, ctx.data.y_train, ctx.train
    opt, sched = optimizer_for(model, cfg, len(x))
    wm_order = torch.randperm(len(wm["wm_x"]), generator=gen) if wm else None
    cursor, loss = 0, torch.tensor(0.0)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            xb, yb = x[idx].to(ctx.device), y[idx].to(ctx.device)
            if params.epsilon > 0 and params.steps > 0:
                xb = pgd(model, xb, yb, params.epsilon, params.alpha, params.steps, params.random_start, gen)
            if wm:
                pick = wm_order[(cursor + torch.arange(params.watermark.per_batch)) % len(wm_order)]
                cursor += params.watermark.per_batch
                xb = torch.cat([xb, wm["wm_x"][pick].to(ctx.device)])
                yb = torch.cat([yb, wm["wm_y"][pick].to(ctx.device)])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
    return loss.item()

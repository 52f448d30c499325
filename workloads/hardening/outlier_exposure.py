"""Outlier Exposure: Hendrycks, Mazeika, Dietterich, "Deep Anomaly Detection with Outlier Exposure" (ICLR 2019),
the victim training Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020) assumes:

    L = CE(V(x), y) + λ · mean_x̃ CE(V(x̃), uniform),   CE(z, uniform) = logsumexp(z) − mean_k z_k

on in-distribution batches (x, y) and OOD batches x̃ of the same size, so that OOD queries get low confidence.
λ = 0.5 is the OE paper's default (AM's README runs λ = 1 with KMNIST outliers for MNIST-family victims).
Optimiser, schedule, epochs and batch size are the victim's `train` settings.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from workloads.config import knob, positive
from workloads.hardening import HardeningContext, HardeningResult, register
from workloads.hardening.ood import OodBatches, OodSource, ood_images
from workloads.seeds import derive_seed


@dataclasses.dataclass(frozen=True)
class OutlierExposureParams:
    lam: float = knob(0.5, 'λ, the weight of the OOD term (uniform answers on OOD data)', '>= 0')
    ood: OodSource = knob(OodSource("dataset", "digits"), 'OOD data: {kind: dataset, name} or {kind: noise, size}')

    def __post_init__(self):
        positive("lam", self.lam, 0)


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from softmax(logits) to the uniform distribution, batch mean (the OE term)."""
    return (torch.logsumexp(logits, 1) - logits.mean(1)).mean()


@register("outlier_exposure", OutlierExposureParams)
def train(params: OutlierExposureParams, ctx: HardeningContext) -> HardeningResult:
    """Train ctx.model with OE; metrics are each term's mean over the last epoch."""
    cfg, data, device = ctx.train, ctx.data, ctx.device
    x_ood = ood_images(params.ood, data, seed=derive_seed("hardening/data", ctx.seed), data_root=ctx.data_root,
                       field="victim.hardening.params.ood")
    model = ctx.model.to(device).train()
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    steps_per_epoch = -(-len(data.x_train) // cfg.batch_size)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
             if cfg.schedule == "cosine" else None)
    order = torch.Generator().manual_seed(derive_seed("victim/train", ctx.seed))
    sampling = torch.Generator().manual_seed(derive_seed("hardening/data", ctx.seed))
    ood = OodBatches(x_ood, sampling)
    for _ in range(cfg.epochs):
        ce_sum = oe_sum = 0.0
        for idx in torch.randperm(len(data.x_train), generator=order).split(cfg.batch_size):
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            logits = model(torch.cat([x, ood.take(len(idx)).to(device)]))
            ce, oe = F.cross_entropy(logits[:len(idx)], y), uniform_cross_entropy(logits[len(idx):])
            opt.zero_grad(set_to_none=True)
            (ce + params.lam * oe).backward()
            opt.step()
            if sched:
                sched.step()
            ce_sum, oe_sum = ce_sum + float(ce.detach()), oe_sum + float(oe.detach())
    return HardeningResult(model.eval(), {"loss_ce": ce_sum / steps_per_epoch, "loss_oe": oe_sum / steps_per_epoch,
                                          "epochs": cfg.epochs})

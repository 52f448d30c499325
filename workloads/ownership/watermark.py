"""Watermark (trigger) sets: adversarial watermarks and the out-of-distribution baseline.

Thakkar, Zizzo, Maffeis, "Elevating Defenses: Bridging Adversarial Training and Watermarking for Model
Resilience" (AAAI'24 workshop, arXiv 2312.14260), §3: k held-out clean samples (x, y) are perturbed within an
L∞ budget β by FGSM or PGD on a model pre-trained on clean data, so that the model predicts y_w ≠ y; the key is
(x_w, y_w). The paper's condition β > ε + α (ε, α: the adversarial-training budget and step) keeps every x_w
outside the ball adversarial training smooths, so training does not "repair" the watermark. Baseline: a
trigger set of k out-of-distribution images (uniform noise or another dataset's images) with fixed random labels.

The set is stored with the victim (HardeningResult.artifacts): `wm_x`, `wm_y` (key labels), `wm_source`
(the clean images, for adversarial sets) and `wm_true_y` (their true labels; -1 for OOD images).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn

from workloads.adversarial import fgsm, pgd
from workloads.config import ConfigError, above, check_choice, positive
from workloads.data import LOADERS, Dataset, load_dataset, to_shape
from workloads.training import predict_proba

OOD_SOURCES = ("noise", *LOADERS)


@dataclasses.dataclass(frozen=True)
class WatermarkParams:
    """Which watermark the victim learns (`kind: none` trains no watermark)."""

    kind: Literal["adversarial", "ood", "none"] = "none"
    k: int = 100                           # watermark set size
    beta: float = 0.25                     # L∞ budget of adversarial watermarks (must exceed epsilon + alpha)
    attack: Literal["fgsm", "pgd"] = "fgsm"
    target: Literal["untargeted", "random"] = "untargeted"   # push away from y, or towards a random label ≠ y
    pgd_steps: int = 20                    # PGD crafting steps, each of size 2.5·beta/pgd_steps (Madry's rule)
    ood_source: str = "noise"              # OOD baseline: uniform noise, or another dataset's images by name
    per_batch: int = 16                    # watermark samples appended to every training batch (no AT on them)

    def __post_init__(self):
        positive("k", self.k)
        above("beta", self.beta, 0)
        if self.beta > 1:
            raise ConfigError(f"beta: expected an L∞ budget in (0, 1] for pixels in [0, 1], got {self.beta!r}")
        positive("pgd_steps", self.pgd_steps)
        positive("per_batch", self.per_batch)
        check_choice("ood_source", self.ood_source, OOD_SOURCES)


def craft_adversarial(params: WatermarkParams, data: Dataset, clean_model: nn.Module,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The first k held-out images (in a random order drawn from `generator`) that the clean model classifies
    correctly and whose FGSM/PGD perturbation within `beta` it misclassifies; key label = its new argmax."""
    x_src, y_src = data.x_holdout, data.y_holdout
    order = torch.randperm(len(x_src), generator=generator)
    x_src, y_src = x_src[order], y_src[order]
    targeted = params.target == "random"
    shift = torch.randint(1, data.num_classes, y_src.shape, generator=generator)
    aim = (y_src + shift) % data.num_classes if targeted else y_src
    device = next(clean_model.parameters()).device
    step = 2.5 * params.beta / params.pgd_steps
    x_adv = torch.cat([
        (fgsm(clean_model, xb.to(device), ab.to(device), params.beta, targeted) if params.attack == "fgsm" else
         pgd(clean_model, xb.to(device), ab.to(device), params.beta, step, params.pgd_steps, generator=generator,
             targeted=targeted)).cpu() for xb, ab in zip(x_src.split(512), aim.split(512))])
    clean_pred = predict_proba(clean_model, x_src).argmax(1)
    adv_pred = predict_proba(clean_model, x_adv).argmax(1)
    reached = adv_pred == aim if targeted else adv_pred != y_src
    keep = ((clean_pred == y_src) & reached).nonzero().flatten()
    if len(keep) < params.k:
        raise ConfigError(f"watermark.k: only {len(keep)} of the {len(x_src)} held-out images became adversarial "
                          f"at beta={params.beta} ({params.attack}); lower k, or raise victim.holdout or beta")
    keep = keep[:params.k]
    return {"wm_x": x_adv[keep], "wm_y": adv_pred[keep], "wm_source": x_src[keep], "wm_true_y": y_src[keep]}


def ood_trigger_set(params: WatermarkParams, data: Dataset, generator: torch.Generator,
                    data_root=None) -> dict[str, torch.Tensor]:
    """k uniform-noise images, or k random images of dataset `ood_source` resized to the victim's shape, each
    with a fixed uniformly random label (the trigger-set baseline)."""
    if params.ood_source == "noise":
        x = torch.rand((params.k, *data.shape), generator=generator)
    else:
        if params.ood_source == data.name:
            raise ConfigError(f"watermark.ood_source: {params.ood_source!r} is the victim's own dataset, "
                              f"not out of distribution")
        other = load_dataset(params.ood_source, pool_fraction=0.0, data_root=data_root)
        if params.k > len(other.x_train):
            raise ConfigError(f"watermark.k: {params.k} exceeds the {len(other.x_train)} images of "
                              f"{params.ood_source}")
        pick = torch.randperm(len(other.x_train), generator=generator)[:params.k]
        x = to_shape(other.x_train[pick], data.shape)
    y = torch.randint(data.num_classes, (params.k,), generator=generator)
    return {"wm_x": x, "wm_y": y, "wm_true_y": torch.full((params.k,), -1, dtype=torch.int64)}

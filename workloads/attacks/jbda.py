"""Jacobian-based dataset augmentation: JBDA (Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical
Black-Box Attacks against Machine Learning", AsiaCCS 2017, Algorithm 1) and its targeted variant JBDA-TR
(Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing Attacks", EuroS&P 2019).

The attacker starts from `seed_size` images of its own pool (the attacker's data, never the test set) and runs
`rounds` substitute-training rounds ρ = 0..rounds−1. In round ρ it labels S_ρ with the victim (Õ), trains a
fresh substitute F (the same initialisation each round, `cfg.train`) on S_ρ and, except after the last round,
augments: S_{ρ+1} = S_ρ ∪ {x + λ_ρ·sign(∇_x F(x)[Õ(x)]) : x ∈ S_ρ} (Algorithm 1, Eq. 4), clipped to [0, 1],
with the paper's periodic step λ_ρ = λ·(−1)^⌊ρ/τ⌋ (τ = 0: constant λ, as InI's and PredPoison's code).
JBDA-TR instead moves each x toward a random target class t ≠ Õ(x) in `fgsm_steps` targeted FGSM steps of
λ/steps: x ← clip(x − (λ/steps)·sign(∇_x CE(F(x), t))) (PRADA's T-RND). The set doubles each round.

Victim labels: `relabel: all` re-queries every point of S_ρ each round, as the InI reference code does (150 seeds,
6 rounds: 9,450 queries for 4,800 points); `relabel: new` queries each point once (4,800). Either way every
image sent is charged; when the budget runs out mid-round, a random subset of the new points is kept so that
the round's queries fit the budget exactly. Jacobian rows are computed batched: one backward pass per batch
of `grad_batch` points (each sample's gradient depends only on its own input), not one per sample and class
as the InI code does.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.attacks import register
from workloads.attacks.curve import CurveClient
from workloads.attacks.transfer import train_on_answers
from workloads.config import ConfigError, above, knob, positive
from workloads.seeds import derive_seed


@dataclasses.dataclass(frozen=True)
class _SeedRoundsParams:
    seed_size: int = knob(150, "|S_0|: seed points drawn from the attacker's pool (InI: 150)", '>= 1')
    rounds: int = knob(6, 'substitute-training rounds, the set doubling by Jacobian augmentation between them (InI, MAZE, MET: 6)', '>= 1')
    step: float = knob(0.1, 'λ, the augmentation step in pixel units of [0, 1] images', '> 0')
    relabel: Literal["new", "all"] = knob("new", 'query only the new points each round, or re-query all of them')
    grad_batch: int = knob(512, 'points per batched Jacobian backward pass (memory, not results)', '>= 1')

    def __post_init__(self):
        positive("seed_size", self.seed_size)
        positive("rounds", self.rounds)
        above("step", self.step)
        positive("grad_batch", self.grad_batch)

    def check(self, cfg) -> None:
        if cfg.budget < self.seed_size:
            raise ConfigError(f"budget: {cfg.budget} is smaller than the first round (params.seed_size = "
                              f"{self.seed_size} seed images)")

    def check_pool(self, cfg, pool_size: int) -> None:
        if self.seed_size > pool_size:
            raise ConfigError(f"params.seed_size: {self.seed_size} seed images exceed the attacker's pool "
                              f"({pool_size} images, surrogate.kind {cfg.surrogate.kind!r})")


@dataclasses.dataclass(frozen=True)
class JBDAParams(_SeedRoundsParams):
    tau: int = knob(0, 'periodic step: λ_ρ = λ·(−1)^⌊ρ/τ⌋; 0 = constant λ', '>= 0')

    def __post_init__(self):
        super().__post_init__()
        positive("tau", self.tau, 0)


@dataclasses.dataclass(frozen=True)
class JBDATRParams(_SeedRoundsParams):
    fgsm_steps: int = knob(5, 'targeted FGSM steps of λ/fgsm_steps per augmentation (InI: 5)', '>= 1')

    def __post_init__(self):
        super().__post_init__()
        positive("fgsm_steps", self.fgsm_steps)


def jacobian_rows(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """∇_x F(x_i)[c_i] for every row i — row c_i of each sample's logit Jacobian — one backward per batch."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for xb, cb in zip(x.split(batch), classes.split(batch)):
        xb = xb.to(device).requires_grad_(True)
        logits = model(xb)
        (grad,) = torch.autograd.grad(logits.gather(1, cb.to(device)[:, None]).sum(), xb)
        out.append(grad.cpu())
    return torch.cat(out) if out else torch.zeros_like(x)


def loss_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """∇_x CE(F(x_i), t_i) for every row i, one backward per batch (summed losses: samples do not interact)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for xb, tb in zip(x.split(batch), targets.split(batch)):
        xb = xb.to(device).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xb), tb.to(device), reduction="sum"), xb)
        out.append(grad.cpu())
    return torch.cat(out) if out else torch.zeros_like(x)


def augment(model, x, labels, params, rnd: int, gen: torch.Generator, num_classes: int) -> torch.Tensor:
    """One augmentation of every point: the JBDA step on the victim's labels, or JBDA-TR's targeted FGSM."""
    if isinstance(params, JBDAParams):
        sign = -1.0 if params.tau and (rnd // params.tau) % 2 else 1.0
        return (x + sign * params.step * jacobian_rows(model, x, labels, params.grad_batch).sign()).clamp(0, 1)
    offset = torch.randint(1, num_classes, (len(x),), generator=gen)     # a uniform random class other than Õ(x)
    targets = (labels + offset) % num_classes
    step = params.step / params.fgsm_steps
    for _ in range(params.fgsm_steps):
        x = (x - step * loss_gradients(model, x, targets, params.grad_batch).sign()).clamp(0, 1)
    return x


def run(cfg, params, client, pool, victim, checkpoint) -> nn.Module:
    client = CurveClient(client, cfg, victim, checkpoint)
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", cfg.seed))
    arch = cfg.substitute_arch or victim.arch
    points = pool[torch.randperm(len(pool), generator=gen)[:params.seed_size]]
    answers = np.zeros((0, victim.num_classes), np.float32)
    substitute = None
    for rnd in range(params.rounds):
        new = points[len(answers):]
        old = len(points) - len(new)               # points labelled in earlier rounds
        cost = len(points) if params.relabel == "all" else len(new)
        if cost > client.remaining:                # keep a random subset of the new points that fits the budget
            keep = client.remaining - (old if params.relabel == "all" else 0)
            if keep <= 0:
                break
            new = new[torch.randperm(len(new), generator=gen)[:keep]]
            points = torch.cat([points[:old], new])
        if params.relabel == "all":
            answers = client.query(points, ids=np.arange(len(points)))
        else:
            answers = np.concatenate([answers, client.query(new, ids=np.arange(old, len(points)))])
        substitute = train_on_answers(points, answers, cfg.labels, arch, victim, cfg.train, cfg.seed)
        client.online(substitute)
        spare = client.remaining - (len(points) if params.relabel == "all" else 0)
        if rnd == params.rounds - 1 or spare <= 0:
            break
        labels = torch.from_numpy(answers.argmax(1))
        points = torch.cat([points, augment(substitute, points, labels, params, rnd, gen, victim.num_classes)])
    client.finish(substitute)
    return substitute


@register("jbda", JBDAParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    return run(cfg, params, client, pool, victim, checkpoint)


@register("jbda_tr", JBDATRParams, labels="hard")
def steal_targeted(cfg, params, client, pool, victim, checkpoint=None):
    return run(cfg, params, client, pool, victim, checkpoint)

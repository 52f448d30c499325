"""DFME — Data-Free Model Extraction (Truong, Maini, Walls, Papernot, CVPR 2021), and the shared loop of
the data-free family (MAZE in `maze.py`, MEGEX in `megex.py`).

A generator G (GeneratorA) synthesises queries; the student S learns the victim V on them while G learns
to make S and V disagree. Per iteration (reference `train.py`, defaults in `DFMEParams`):

* g_iter generator steps: maximise the disagreement L(x) = l1(S(x), t(x)) (Eq. 4) at x = G(z), with the
  victim's logits approximated by mean-corrected log-probabilities t = log v - mean_k log v (Sec. 3.3,
  `logit_correction=mean`), its gradient w.r.t. x estimated by forward differences along m random unit
  directions u_i applied to G's pre-activation output (Eq. 6): g = (d/m) sum_i [L(x + eps u_i) - L(x)] / eps u_i,
  divided by K.N for l1 as the reference does; that costs B (m + 1) queries;
* d_iter student steps on fresh G(z): min l1(S(x), t(x)) (KL(v || S) with loss: kl), B queries each.

Query cost per iteration = B (g_iter (m + 1) + d_iter) = 1,792 at the defaults. Every one of those images
goes through the QueryClient, hence through the service's defense and ledger (the DCP reference code
lets the generator's queries through undefended; Heist cannot). The reference stops once fewer than one
iteration's queries are left; here the leftover (< one iteration) trains the student on one last
batch, so the attack spends exactly its budget. The learning rates drop by `scale` at the fractions `steps`
of the run (or anneal with cosine), counted in iterations; the reference counts in epochs of 50 iterations
(epochs = budget // (cost . 50) + 1): the same at its 2M-20M budgets, but at small budgets its first
milestone falls on epoch 0 and cuts every learning rate from the start.

The attack needs scores (log v): answers with zero probabilities (label-only, top-k, rounding) are refused
with `ScoresRequired` unless `prob_floor` > 0 floors them (then rows are renormalised).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.attacks import register
from workloads.attacks.generator import build_generator
from workloads.attacks.transfer import new_substitute
from workloads.config import ConfigError, above, in_range, knob, positive
from workloads.seeds import derive_seed
from workloads.training import default_device


class ScoresRequired(ValueError):
    """The victim's answers carry zero probabilities, which a score-based attack cannot use."""


@dataclasses.dataclass(frozen=True)
class GeneratorAttackParams:
    """What DFME, MAZE and MEGEX share (DFME's reference defaults)."""

    loss: Literal["l1", "kl"] = knob("l1", 'student loss: l1 on mean-corrected logits (DFME) or KL (MAZE)')
    batch_size: int = knob(256, 'generator images per iteration', '>= 1')
    g_iter: int = knob(1, 'generator updates per iteration', '>= 1')
    d_iter: int = knob(5, 'student updates per iteration, each on a fresh generator batch', '>= 1')
    lr_S: float = knob(0.1, 'student learning rate (SGD, momentum and weight decay below)', '> 0')
    lr_G: float = knob(1e-4, 'generator learning rate', '> 0')
    generator_optimizer: Literal["adam", "sgd"] = knob("adam", 'generator optimiser: adam (DFME) or SGD with momentum 0.9 (MAZE)')
    schedule: Literal["multistep", "cosine", "none"] = knob("multistep", 'learning-rate schedule of both: step down ×0.3 at `steps` (DFME), cosine (MAZE), or none')
    steps: tuple[float, ...] = knob((0.1, 0.3, 0.5), 'multistep milestones as fractions of the iterations', 'each in [0, 1]')
    scale: float = knob(0.3, 'multistep decay factor', '> 0')
    momentum: float = knob(0.9, 'student SGD momentum')
    weight_decay: float = knob(5e-4, 'student SGD weight decay')
    nz: int = knob(256, 'generator noise dimension', '>= 1')
    ngf: int = knob(64, 'generator width (feature maps)', '>= 1')
    prob_floor: float = knob(0.0, '> 0: floor zero probabilities at this value instead of refusing a label-only or top-k defense', '[0, 0.1]')
    checkpoint_every: int = knob(1, 'iterations between budget-curve checkpoints (and one at the end)', '>= 1')

    def __post_init__(self):
        for name in ("batch_size", "g_iter", "d_iter", "nz", "ngf"):
            positive(name, getattr(self, name))
        above("lr_S", self.lr_S)
        above("lr_G", self.lr_G)
        above("scale", self.scale)
        in_range("prob_floor", self.prob_floor, 0.0, 0.1)
        positive("checkpoint_every", self.checkpoint_every)
        for i, s in enumerate(self.steps):
            in_range(f"steps[{i}]", s, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DFMEParams(GeneratorAttackParams):
    grad_m: int = knob(1, 'random directions per generator image of the forward-difference gradient estimate (each costs a query)', '>= 1')
    grad_epsilon: float = knob(1e-3, 'forward-difference step of the zeroth-order gradient estimate', '> 0')

    def __post_init__(self):
        super().__post_init__()
        positive("grad_m", self.grad_m)
        above("grad_epsilon", self.grad_epsilon)


class Victim:
    """The attack's view of the victim's answers: scores as log-probabilities, zero rows refused."""

    def __init__(self, client, attack: str, prob_floor: float, device: torch.device):
        self.client, self.attack, self.floor, self.device = client, attack, prob_floor, device

    def log_probs(self, answers: np.ndarray) -> torch.Tensor:
        p = torch.from_numpy(np.asarray(answers, dtype=np.float32)).to(self.device)
        if self.floor > 0:
            p = p.clamp_min(self.floor)
            return (p / p.sum(1, keepdim=True)).log()
        zero_rows = int((p <= 0).any(1).sum())
        if zero_rows:
            raise ScoresRequired(
                f"{self.attack} needs probability scores, but {zero_rows} of {len(p)} answers contain zero "
                f"probabilities (a label-only, top-k or rounding defense?); set params.prob_floor > 0 to floor them")
        return p.log()

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Victim log-probabilities at x (charged len(x))."""
        return self.log_probs(self.client.query(x.detach().cpu().numpy()))


def victim_target(logp: torch.Tensor, loss: str) -> torch.Tensor:
    """The victim side of the loss: mean-corrected log-probabilities (l1) or probabilities (kl)."""
    return logp - logp.mean(1, keepdim=True) if loss == "l1" else logp.exp()


def disagreement(student_logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image loss: mean_k |S - t| (l1) or KL(v || softmax S) (kl), as the reference's ZO estimator."""
    if loss == "l1":
        return (student_logits - target).abs().mean(1)
    return F.kl_div(F.log_softmax(student_logits, 1), target, reduction="none").sum(1)


def student_loss(student_logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l1":
        return F.l1_loss(student_logits, target)
    return F.kl_div(F.log_softmax(student_logits, 1), target, reduction="batchmean")


def zo_gradient(loss_at: Callable[[torch.Tensor], torch.Tensor], pre: torch.Tensor, m: int, eps: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DFME's forward-difference estimate of the gradient of `loss_at` (per-image losses of images in
    pre-activation space) at `pre`: (d/m) sum_i [L(pre + eps u_i) - L(pre)] / eps u_i, u_i uniform on the
    unit sphere. `loss_at` gets all B (m + 1) points in one call (image-major, the unperturbed one last).
    Returns (estimate, L(pre))."""
    n, dims = len(pre), pre[0].numel()
    u = torch.randn((n, m, dims), generator=gen).to(pre.device)
    u = (u / u.norm(dim=2, keepdim=True)).view(n, m, *pre.shape[1:])
    u = torch.cat([u, torch.zeros_like(u[:, :1])], 1)
    points = (pre.detach().unsqueeze(1) + eps * u).flatten(0, 1)
    values = loss_at(points).view(n, m + 1)
    differences = (values[:, :m] - values[:, m:]).view(n, m, *([1] * (pre.dim() - 1)))
    return dims * (differences / eps * u[:, :m]).mean(1), values[:, m]


def check_budget(budget: int, cost: int, what: str) -> None:
    if budget < cost:
        raise ConfigError(f"budget: {budget} is below one {what} iteration's cost of {cost} queries")


def run_generator_attack(cfg, params: GeneratorAttackParams, client, victim_info, checkpoint,
                         generator_step: Callable, g_cost: int, name: str) -> nn.Module:
    """The data-free loop: `generator_step(ctx)` runs one generator update spending `g_cost` queries per
    generator image; the student steps, schedules, checkpoints and budget accounting are shared."""
    b = params.batch_size
    cost = b * (params.g_iter * g_cost + params.d_iter)
    check_budget(cfg.budget, cost, name)
    device = default_device()
    iterations = cfg.budget // cost
    student = new_substitute(cfg.substitute_arch or victim_info.arch, victim_info, cfg.seed).to(device)
    generator = build_generator(victim_info.shape, params.nz, params.ngf,
                                derive_seed("attack/generator", cfg.seed)).to(device)
    opt_s = torch.optim.SGD(student.parameters(), lr=params.lr_S, momentum=params.momentum,
                            weight_decay=params.weight_decay)
    opt_g = (torch.optim.Adam(generator.parameters(), lr=params.lr_G) if params.generator_optimizer == "adam"
             else torch.optim.SGD(generator.parameters(), lr=params.lr_G, momentum=params.momentum,
                                  weight_decay=params.weight_decay))
    schedulers = []
    for opt in (opt_s, opt_g):
        if params.schedule == "multistep":
            schedulers.append(torch.optim.lr_scheduler.MultiStepLR(
                opt, [max(1, int(s * iterations)) for s in params.steps], params.scale))
        elif params.schedule == "cosine":
            schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations))
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", cfg.seed))
    victim = Victim(client, name, params.prob_floor, device)
    ctx = GeneratorContext(params, generator, student, opt_g, victim, gen, device, victim_info.num_classes)

    def student_step(n: int) -> None:
        generator.train()
        with torch.no_grad():
            x = generator.images(generator(ctx.noise(n)))
        target = victim_target(victim.query(x), params.loss)
        student.train()
        loss = student_loss(student(x), target, params.loss)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()

    used = 0
    for it in range(1, iterations + 1):
        for _ in range(params.g_iter):
            generator_step(ctx)
        for _ in range(params.d_iter):
            student_step(b)
        used += cost
        for s in schedulers:
            s.step()
        if checkpoint is not None and it % params.checkpoint_every == 0 and it < iterations:
            checkpoint(used, student.eval())
    leftover = cfg.budget - used
    while leftover:
        n = min(b, leftover)
        student_step(n)
        leftover -= n
    student.eval()
    if checkpoint is not None:
        checkpoint(cfg.budget, student)
    return student


@dataclasses.dataclass
class GeneratorContext:
    params: GeneratorAttackParams
    generator: nn.Module
    student: nn.Module
    opt_g: torch.optim.Optimizer
    victim: Victim
    gen: torch.Generator
    device: torch.device
    num_classes: int

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.params.nz), generator=self.gen).to(self.device)


def zo_generator_step(ctx: GeneratorContext) -> None:
    """One DFME generator update from the forward-difference estimate (B (m + 1) queries)."""
    p, g, student = ctx.params, ctx.generator, ctx.student
    g.train()
    pre = g(ctx.noise(p.batch_size))

    def negative_loss(points: torch.Tensor) -> torch.Tensor:   # the generator minimises -L
        x = g.images(points)
        target = victim_target(ctx.victim.query(x), p.loss)
        return -disagreement(student(x), target, p.loss)

    student.eval()
    with torch.no_grad():
        grad, _ = zo_gradient(negative_loss, pre, p.grad_m, p.grad_epsilon, ctx.gen)
    if p.loss == "l1":
        grad = grad / (ctx.num_classes * len(pre))
    ctx.opt_g.zero_grad(set_to_none=True)
    pre.backward(grad)
    ctx.opt_g.step()


@register("dfme", DFMEParams, labels="soft", curves=("online",))
def steal(cfg, params, client, pool, victim, checkpoint=None):
    """DFME; `pool` is unused (data-free)."""
    return run_generator_attack(cfg, params, client, victim, checkpoint, zo_generator_step,
                                params.grad_m + 1, "dfme")

"""InI: Guo et al., "Isolation and Induction: Training Robust Deep Neural Networks against Model Stealing
Attacks" (ACM MM 2023, arXiv 2308.00958), as the official code trains the victim V (src/defenses/ini/ini.py):

    L = L_CE + β·L_id + γ·L_ood + δ·L_gid + ε·L_good

against a surrogate S of V's architecture, randomly initialised and frozen (the official default; an option
loads a trained S). With d(a, b) = mean |b − (log_softmax(a) − mean_k log_softmax(a))|, an in-distribution
batch (x, y) and an OOD batch x̃ of the same size:

- L_CE   = CE(V(x), y)
- L_id   = −d(V(x), S(x))                        (output distance on ID data; β = 0 in the released config)
- L_ood  = d(V(x̃), S(x̃))                        induction: V's outputs on OOD queries mimic the random S;
           with `use_ie`, L_ood = −H(softmax V(x̃)) instead
- L_gid  = cos(∇_θS KL(S(x)‖V(x)), ∇_θS CE(S(x), y))   isolation: the gradient a thief distilling V's
           answers would follow points away from the true-label gradient (double backprop through θ_S)
- L_good = mean |∇_θS KL(S(x̃)‖V(x̃))|           isolation on OOD queries: little learning signal

The weighted non-zero terms are combined with PCGrad (Yu et al. 2020; on by default as in the paper's scripts,
mean over tasks as the official code), else summed with gradient-norm clipping at 10. SGD with StepLR; the
defaults are the official MNIST/Fashion-MNIST settings (run.sh: 50 epochs, lr step 20). Only V is updated.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.config import ConfigError, above, knob, positive
from workloads.hardening import HardeningContext, HardeningResult, register
from workloads.hardening.ood import OodBatches, OodSource, ood_images
from workloads.models import build_model
from workloads.seeds import derive_seed

FIELD = "victim.hardening.params"


@dataclasses.dataclass(frozen=True)
class IniParams:
    beta: float = knob(0.0, 'weight of L_id, the in-distribution term', '>= 0')
    gamma: float = knob(0.3, "weight of L_ood (induction: OOD answers pulled towards the frozen surrogate's)", '>= 0')
    delta: float = knob(1.0, 'weight of L_gid (isolation: cosine of the distillation and true-label gradients on S)', '>= 0')
    epsilon: float = knob(1000.0, "weight of L_good (isolation: S's distillation-gradient magnitude on OOD data; large as those are tiny)", '>= 0')
    pcgrad: bool = knob(True, "combine the weighted terms with PCGrad (the paper's scripts); false: summed loss with grad-norm clip")
    use_ie: bool = knob(False, 'L_ood as negative entropy of V on OOD data instead of the distance to S')
    ood: OodSource = knob(OodSource("dataset", "digits"), "OOD data: {kind: dataset, name} (resized to the victim's size) or {kind: noise, size}")
    surrogate_path: str | None = knob(None, "a trained surrogate S (state dict of the victim's architecture); null: S random and frozen, as the official code")
    epochs: int = knob(50, 'training epochs (the paper: 50)', '>= 1')
    lr: float = knob(0.1, 'SGD learning rate', '> 0')
    momentum: float = knob(0.5, 'SGD momentum', '>= 0')
    weight_decay: float = knob(1e-3, 'SGD weight decay', '>= 0')
    lr_step: int = knob(20, 'StepLR: multiply lr by lr_gamma every lr_step epochs', '>= 1')
    lr_gamma: float = knob(0.1, 'StepLR factor', '> 0')
    max_grad_norm: float = knob(10.0, 'gradient-norm clip, without PCGrad only (as the official code)', '> 0')

    def __post_init__(self):
        for name in ("beta", "gamma", "delta", "epsilon", "weight_decay", "momentum"):
            positive(name, getattr(self, name), 0)
        if self.pcgrad and len(self.weights()) < 2:
            raise ConfigError("pcgrad: needs at least two active loss terms, but beta, gamma, delta and epsilon "
                              "are all 0 (only CE is left); set one > 0 or pcgrad: false")
        if self.surrogate_path is not None and not os.path.isfile(os.path.expanduser(self.surrogate_path)):
            raise ConfigError(f"surrogate_path: no such file {self.surrogate_path!r}")
        positive("epochs", self.epochs)
        above("lr", self.lr)
        positive("lr_step", self.lr_step)
        above("lr_gamma", self.lr_gamma)
        above("max_grad_norm", self.max_grad_norm)

    def weights(self) -> dict[str, float]:
        """The loss terms in use and their weights (CE always, weight 1)."""
        w = {"ce": 1.0, "id": self.beta, "ood": self.gamma, "gid": self.delta, "good": self.epsilon}
        return {k: v for k, v in w.items() if v > 0}


def output_distance(victim_logits: torch.Tensor, surrogate_logits: torch.Tensor) -> torch.Tensor:
    """The official `l1` distance d(a, b): S's logits against V's mean-centred log-probabilities."""
    logp = F.log_softmax(victim_logits, 1)
    return (surrogate_logits - (logp - logp.mean(1, keepdim=True))).abs().mean()


def distillation_kl(surrogate_logits: torch.Tensor, victim_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax S ‖ softmax V), batch mean: the official `grad_loss` "kl" with its argument order."""
    logp_s = F.log_softmax(surrogate_logits, 1)
    return (logp_s.exp() * (logp_s - F.log_softmax(victim_logits, 1))).sum(1).mean()


def loss_terms(victim: nn.Module, surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ood: torch.Tensor,
               active, use_ie: bool = False) -> dict[str, torch.Tensor]:
    """The unweighted InI terms named in `active` (ce, id, ood, gid, good), differentiable w.r.t. V only."""
    s_params = list(surrogate.parameters())
    v_id, s_id = victim(x), surrogate(x)
    terms = {"ce": F.cross_entropy(v_id, y)}
    if "id" in active:
        terms["id"] = -output_distance(v_id, s_id.detach())
    if "ood" in active or "good" in active:
        v_ood, s_ood = victim(x_ood), surrogate(x_ood)
        if "ood" in active:
            terms["ood"] = (-torch.distributions.Categorical(logits=v_ood).entropy().mean() if use_ie
                            else output_distance(v_ood, s_ood.detach()))
        if "good" in active:
            g = torch.autograd.grad(distillation_kl(s_ood, v_ood), s_params, create_graph=True)
            terms["good"] = torch.cat([e.flatten() for e in g]).abs().mean()
    if "gid" in active:
        g_adv = torch.autograd.grad(distillation_kl(s_id, v_id), s_params, create_graph=True)
        g_exp = torch.autograd.grad(F.cross_entropy(s_id, y), s_params, retain_graph=True)
        terms["gid"] = F.cosine_similarity(torch.cat([e.flatten() for e in g_adv]),
                                           torch.cat([e.flatten() for e in g_exp]).detach(), dim=0)
    return terms


def pcgrad(grads: list[list[torch.Tensor | None]], generator: torch.Generator) -> list[torch.Tensor]:
    """PCGrad (Yu et al., NeurIPS 2020) as the official InI code: each task's gradient g_i is projected off
    every other task's g_j it conflicts with (g_i·g_j < 0), visiting the g_j in random order; the projected
    gradients are averaged over parameters every task reaches and summed over the rest.

    `grads[t][p]` is task t's gradient for parameter p (None: the task does not reach p).
    """
    like = [next(g[p] for g in grads if g[p] is not None) for p in range(len(grads[0]))]
    flat = [torch.cat([(g if g is not None else torch.zeros_like(r)).flatten() for g, r in zip(task, like)])
            for task in grads]
    reached = torch.stack([torch.cat([torch.full((r.numel(),), g is not None, device=r.device)
                                      for g, r in zip(task, like)]) for task in grads])
    projected = []
    for g_i in flat:
        g_i = g_i.clone()
        for j in torch.randperm(len(flat), generator=generator).tolist():
            dot = torch.dot(g_i, flat[j])
            if dot < 0:
                g_i -= dot * flat[j] / flat[j].norm() ** 2
        projected.append(g_i)
    stacked = torch.stack(projected)
    merged = torch.where(reached.all(0), stacked.mean(0), stacked.sum(0))
    return [m.view_as(r) for m, r in zip(merged.split([r.numel() for r in like]), like)]


def step(victim: nn.Module, surrogate: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         x_ood: torch.Tensor, params: IniParams, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One optimisation step of V (S is never differentiated into); returns the unweighted terms."""
    weights, v_params = params.weights(), list(victim.parameters())
    terms = loss_terms(victim, surrogate, x, y, x_ood, weights, params.use_ie)
    weighted = [weights[k] * t for k, t in terms.items()]
    if params.pcgrad:
        grads = pcgrad([torch.autograd.grad(t, v_params, retain_graph=True, allow_unused=True) for t in weighted],
                       generator)
    else:
        grads = torch.autograd.grad(sum(weighted), v_params)
    for p, g in zip(v_params, grads):
        p.grad = g.detach()
    if not params.pcgrad:
        nn.utils.clip_grad_norm_(v_params, params.max_grad_norm)
    opt.step()
    return terms


def _surrogate(params: IniParams, ctx: HardeningContext) -> nn.Module:
    """S: V's architecture from the "hardening/surrogate" stream, or loaded from `surrogate_path`; frozen."""
    data = ctx.data
    model = build_model(ctx.arch, data.shape, data.num_classes, seed=derive_seed("hardening/surrogate", ctx.seed))
    if params.surrogate_path:
        path = os.path.expanduser(params.surrogate_path)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"{FIELD}.surrogate_path: {path!r} is not a {ctx.arch} state dict for "
                              f"{data.shape} inputs ({first})") from None
    return model.to(ctx.device).eval()


@register("ini", IniParams)
def train(params: IniParams, ctx: HardeningContext) -> HardeningResult:
    """Train ctx.model with the InI objective; metrics are each term's mean over the last epoch."""
    data, device = ctx.data, ctx.device
    x_ood = ood_images(params.ood, data, seed=derive_seed("hardening/data", ctx.seed), data_root=ctx.data_root,
                       field=f"{FIELD}.ood")
    surrogate = _surrogate(params, ctx)
    victim = ctx.model.to(device).train()
    opt = torch.optim.SGD(victim.parameters(), lr=params.lr, momentum=params.momentum,
                          weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, params.lr_step, params.lr_gamma)
    order = torch.Generator().manual_seed(derive_seed("victim/train", ctx.seed))
    sampling = torch.Generator().manual_seed(derive_seed("hardening/data", ctx.seed))
    ood, bs = OodBatches(x_ood, sampling), ctx.train.batch_size
    epoch_seconds = []
    for _ in range(params.epochs):
        t0, sums, steps = time.perf_counter(), defaultdict(float), 0
        for idx in torch.randperm(len(data.x_train), generator=order).split(bs):
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            terms = step(victim, surrogate, opt, x, y, ood.take(len(idx)).to(device), params, sampling)
            for k, t in terms.items():
                sums[k] += float(t.detach())
            steps += 1
        sched.step()
        epoch_seconds.append(time.perf_counter() - t0)
    metrics = {f"loss_{k}": v / steps for k, v in sums.items()}
    metrics.update(epochs=params.epochs, epoch_seconds=sum(epoch_seconds) / len(epoch_seconds))
    return HardeningResult(victim.eval(), metrics)

"""MEGEX — Data-Free Model Extraction Attack against Gradient-Based Explainable AI (Miura, Hasegawa,
Shibahara, arXiv 2107.08909).

DFME's loop (dfme.py) with the generator's gradient taken from the victim's explanations instead of
zeroth-order estimates. With L(x) = l(S(x), t(x)) the disagreement and u = log v(x) the victim's
log-probabilities, the chain rule gives

    dL/dx = (dL/dS) dS/dx  +  sum_k (dL/du_k) grad_x log v_k(x)

The first term is autograd through the student; the second comes from the service's `explain`
(workloads.explanations), in one of three readings of how MEGEX obtains it (the paper has no code;
seeds.md §3.3), each charged its true cost per generator image:

* `vjp` — query v(x) (1), then ask for grad_x (c . log v) with c = dL/du (1 x explainer cost): exact;
  the weights depend on the answer, hence the query first;
* `full_jacobian` — one explanation of every class's log-probability (K x explainer cost; the
  prediction comes with it): exact;
* `top1` — the explanation of the predicted class only (1 x explainer cost): keeps the top class's
  term of the sum, an approximation.

`explainer` vanilla costs 1 per row, smoothgrad `samples` per row (SmoothGrad's gradient replaces the
exact one). Per iteration: B (g_iter g_cost + d_iter), e.g. 1,792 for vjp/vanilla at DFME's defaults.
"""
from __future__ import annotations

import dataclasses

import torch

from workloads.attacks import register
from workloads.attacks.dfme import (GeneratorAttackParams, GeneratorContext, disagreement,
                                    run_generator_attack, victim_target)
from workloads.config import ConfigError, knob
from workloads.explanations import ExplainRequest


@dataclasses.dataclass(frozen=True)
class MEGEXParams(GeneratorAttackParams):
    explanation_mode: str = knob("vjp", "how the generator's gradient comes from explanations: vjp (one explanation of the student's loss direction), full_jacobian (K explanations), top1 (the top class's gradient)", 'vjp | full_jacobian | top1')
    explainer: str = knob("vanilla", 'explanation the service computes: vanilla gradient or SmoothGrad (charged `samples` evaluations)', 'vanilla | smoothgrad')
    samples: int = knob(50, "SmoothGrad's n: noisy copies per image", '>= 1')
    sigma: float = knob(0.15, "SmoothGrad's noise level, in pixel units of [0, 1] images", '> 0')

    def __post_init__(self):
        super().__post_init__()
        try:
            self.request()
        except ConfigError as e:
            raise ConfigError([m.replace("mode:", "explanation_mode:", 1) for m in e.errors]) from None

    def request(self) -> ExplainRequest:
        return ExplainRequest(self.explanation_mode, self.explainer, self.samples, self.sigma)


def generator_cost(params: MEGEXParams, num_classes: int) -> int:
    """Victim evaluations per generator image."""
    return params.request().cost(num_classes) + (1 if params.explanation_mode == "vjp" else 0)


def explanation_generator_step(ctx: GeneratorContext) -> None:
    """One generator update whose victim term comes from explanations (see the module docstring)."""
    p, g, student = ctx.params, ctx.generator, ctx.student
    request = p.request()
    g.train()
    x = g.images(g(ctx.noise(p.batch_size)))
    xd = x.detach()
    client = ctx.victim.client
    if request.mode == "vjp":
        logp = ctx.victim.query(xd)
    else:
        answers, grads = client.explain(xd.cpu().numpy(), request)
        logp = ctx.victim.log_probs(answers)
    student.eval()
    xs = xd.clone().requires_grad_(True)
    u = logp.clone().requires_grad_(True)
    loss = disagreement(student(xs), victim_target(u, p.loss), p.loss).mean()
    grad_student, c = torch.autograd.grad(loss, (xs, u))
    if request.mode == "vjp":
        _, grads = client.explain(xd.cpu().numpy(), request, c.detach().cpu().numpy())
        victim_term = torch.from_numpy(grads[:, 0]).to(xd.device)
    elif request.mode == "full_jacobian":
        victim_term = torch.einsum("nk,nk...->n...", c, torch.from_numpy(grads).to(xd.device))
    else:
        top = logp.argmax(1, keepdim=True)
        victim_term = c.gather(1, top).view(-1, *([1] * (xd.dim() - 1))) * torch.from_numpy(grads[:, 0]).to(xd.device)
    ctx.opt_g.zero_grad(set_to_none=True)
    x.backward(-(grad_student + victim_term))      # the generator maximises the disagreement
    ctx.opt_g.step()


@register("megex", MEGEXParams, labels="soft", explanations=True, curves=("online",))
def steal(cfg, params, client, pool, victim, checkpoint=None):
    """MEGEX; `pool` is unused (data-free). The client must serve `explain`."""
    return run_generator_attack(cfg, params, client, victim, checkpoint, explanation_generator_step,
                                generator_cost(params, victim.num_classes), "megex")

"""Knockoff Nets, adaptive strategy (Orekondy, Schiele, Fritz, CVPR 2019, §4.1.2).

A gradient bandit (Sutton & Barto, §2.8) over the classes of the attacker's labelled query set picks what to
query: at each step it draws classes a ~ π = softmax(H), an unused image of each drawn class, queries them and
updates H with each image's reward r: r̄ ← r̄ + (r − r̄)/t, H_a ← H_a + α(r − r̄)(1 − π_a),
H_{a'} ← H_{a'} − α(r − r̄)π_{a'} (α = 1/N_a, the sample average ART uses, unless `bandit_lr` sets a constant). The classes are the pool's own
labels (`surrogate.kind: split` — the attacker's labelled split — or `dataset`), never the victim's answers.
Rewards, computed before the online substitute trains on the image:
  cert = y_(1) − y_(2) (margin of the victim's answer), div = Σ_k max(0, y_k − ȳ_k) (ȳ: mean of the answers
  before), loss = −Σ_k y_k log softmax(F(x))_k (the online substitute's loss on the answer), and `all` = the mean
  of the three, each z-normalised by its running mean and variance (ART's reward="all").
Unlike ART, which queries and fits one image per step and softmaxes the victim's probabilities as if logits,
this queries `batch` images per step (one `client.query`), takes one optimizer step of the online substitute
per batch, uses log-softmax and the answers as probabilities, floors the variance at 1e-12 and computes π from
H − max H, so rewards and probabilities stay finite. After the budget is spent, a fresh substitute is trained
on the whole transfer set (`cfg.train`), as Knockoff Nets trains its knockoff on the transfer set.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from workloads.attacks import register
from workloads.attacks.curve import CurveClient
from workloads.attacks.transfer import new_substitute, train_on_answers
from workloads.config import knob, positive
from workloads.seeds import derive_seed
from workloads.training import default_device, soft_cross_entropy

VAR_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class AdaptiveKnockoffParams:
    reward: Literal["cert", "div", "loss", "all"] = knob("all", "bandit reward: certainty, diversity, substitute loss, or all three z-normalised (ART's default)")
    batch: int = knob(16, 'images per bandit step and per online substitute update', '>= 1')
    bandit_lr: float = knob(0.0, 'step size α of the gradient bandit; 0 = 1/N_a as ART does', '>= 0')

    def __post_init__(self):
        positive("batch", self.batch)
        positive("bandit_lr", self.bandit_lr, 0)


class GradientBandit:
    """Preferences H over actions, policy π = softmax(H), updated one reward at a time (float64)."""

    def __init__(self, num_actions: int, lr: float = 0.0):
        self.h = np.zeros(num_actions)
        self.pulls = np.zeros(num_actions)
        self.lr, self.t, self.mean_reward = lr, 0, 0.0

    def probs(self) -> np.ndarray:
        z = np.exp(self.h - self.h.max())
        return z / z.sum()

    def update(self, action: int, reward: float) -> None:
        self.t += 1
        self.mean_reward += (reward - self.mean_reward) / self.t
        self.pulls[action] += 1
        alpha = self.lr or 1.0 / self.pulls[action]
        pi = self.probs()
        advantage = alpha * (reward - self.mean_reward)
        self.h -= advantage * pi
        self.h[action] += advantage


class Rewards:
    """Knockoff Nets' rewards for a batch of answers y (B, K) and online-substitute logits (B, K)."""

    def __init__(self, kind: str, num_classes: int):
        self.kind = kind
        self.answer_sum, self.answers = np.zeros(num_classes), 0
        self.n, self.mean, self.var = 0, np.zeros(3), np.zeros(3)

    def __call__(self, y: np.ndarray, logits: torch.Tensor) -> np.ndarray:
        top2 = np.sort(y, axis=1)[:, -2:]
        cert = top2[:, 1] - top2[:, 0]
        div = np.empty(len(y))
        for i, row in enumerate(y):          # ȳ: the mean of every answer before this one
            div[i] = np.maximum(0.0, row - self.answer_sum / max(self.answers, 1)).sum() if self.answers else 0.0
            self.answer_sum += row
            self.answers += 1
        loss = -(torch.from_numpy(y).double() * torch.log_softmax(logits.double(), 1)).sum(1).numpy()
        parts = np.stack([cert, div, loss], 1)
        if self.kind != "all":
            return parts[:, ("cert", "div", "loss").index(self.kind)]
        out = np.empty(len(y))
        for i, r in enumerate(parts):        # ART: running mean/variance per reward, then the mean of z-scores
            self.n += 1
            self.mean += (r - self.mean) / self.n
            self.var += ((r - self.mean) ** 2 - self.var) / self.n
            z = np.clip(r, 0, 1) if self.n == 1 else (r - self.mean) / np.sqrt(np.maximum(self.var, VAR_FLOOR))
            out[i] = z.mean()
        return out


class ClassSampler:
    """Images of one class at a time, without replacement, reshuffling a class once it is used up."""

    def __init__(self, labels: torch.Tensor, gen: torch.Generator):
        self.classes = sorted(int(c) for c in labels.unique())
        self.members = {c: torch.nonzero(labels == c).flatten() for c in self.classes}
        self.order = {c: torch.empty(0, dtype=torch.long) for c in self.classes}
        self.gen = gen

    def draw(self, c: int) -> int:
        if not len(self.order[c]):
            self.order[c] = self.members[c][torch.randperm(len(self.members[c]), generator=self.gen)]
        i, self.order[c] = self.order[c][0], self.order[c][1:]
        return int(i)


@register("adaptive_knockoff", AdaptiveKnockoffParams, labels="soft", pool_labels=True)
def steal(cfg, params, client, pool, victim, checkpoint=None, pool_labels=None):
    client = CurveClient(client, cfg, victim, checkpoint)
    gen = torch.Generator().manual_seed(derive_seed("attack/sampling", cfg.seed))
    arch = cfg.substitute_arch or victim.arch
    sampler = ClassSampler(pool_labels, gen)
    bandit = GradientBandit(len(sampler.classes), params.bandit_lr)
    rewards = Rewards(params.reward, victim.num_classes)
    device = default_device()
    online = new_substitute(arch, victim, cfg.seed).to(device)
    opt = torch.optim.Adam(online.parameters(), lr=cfg.train.lr)
    xs, ys = [], []
    while client.remaining:
        n = min(params.batch, client.remaining)
        actions = torch.multinomial(torch.from_numpy(bandit.probs()), n, replacement=True, generator=gen)
        x = pool[[sampler.draw(sampler.classes[a]) for a in actions.tolist()]]
        y = client.query(x)
        online.eval()
        with torch.no_grad():
            logits = online(x.to(device)).cpu()
        for a, r in zip(actions.tolist(), rewards(y, logits)):
            bandit.update(a, float(r))
        _train_step(online, opt, x.to(device), torch.from_numpy(y).to(device), cfg.labels)
        xs.append(x)
        ys.append(y)
        client.online(online)
    substitute = train_on_answers(torch.cat(xs), np.concatenate(ys), cfg.labels, arch, victim, cfg.train, cfg.seed)
    client.finish(substitute, from_scratch=True)
    return substitute


def _train_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, labels: str) -> None:
    model.train()
    logits = model(x)
    loss = (torch.nn.functional.cross_entropy(logits, y.argmax(1)) if labels == "hard"
            else soft_cross_entropy(logits, y))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

"""Ownership verification: does a suspect model carry the victim's watermark?

Thakkar, Zizzo, Maffeis (AAAI'24 workshop) verify a suspect g by its watermark accuracy
wm_acc = mean[g(x_w) = y_w] over the k watermarks. Heist decides two ways and reports both:
(a) a one-sided exact binomial test of H0 "g hits each key label with the chance rate p0",
    p = P[Bin(k, p0) ≥ hits], verified when p < significance (frontier-stitching style); p0 = 1/classes by
    default, or (`chance: null`) the null models' mean watermark accuracy;
(b) a threshold from the null distribution: N clean models of the same task (the victim's arch and TrainConfig,
    independent initialisation and batch-order seeds; trained on the attacker pool split with its true labels by
    default — an innocent party has its own data, not the victim's), τ = max null wm_acc + margin,
    verified when wm_acc > τ. The null models are cached in the victim cache beside the victims.
Adversarial examples transfer, so independent models hit adversarial key labels well above 1/classes:
(a) against 1/classes can flag innocent models; `wm_fpr_binomial` measures how often it does on the null models
(those models also set p0 under `chance: null`, so that rate is optimistic there).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from workloads.models import build_model
from workloads.seeds import derive_seed
from workloads.training import fit, predict_proba


def wm_accuracy(model: nn.Module, wm_x: torch.Tensor, wm_y: torch.Tensor) -> float:
    """Fraction of watermarks on which `model` predicts the key label."""
    return (predict_proba(model, wm_x).argmax(1) == wm_y).float().mean().item()


def binomial_pvalue(hits: int, k: int, p0: float) -> float:
    """One-sided exact binomial p-value P[X ≥ hits] for X ~ Bin(k, p0) (scipy.stats.binomtest, 'greater')."""
    from scipy.stats import binomtest

    return float(binomtest(int(hits), int(k), float(p0), alternative="greater").pvalue)


@dataclasses.dataclass
class Verdict:
    wm_accuracy: float
    pvalue: float
    verified_binomial: bool
    verified_threshold: bool


def verify(model: nn.Module, wm_x: torch.Tensor, wm_y: torch.Tensor, threshold: float, p0: float,
           significance: float) -> Verdict:
    """Watermark accuracy of `model`, its binomial p-value against chance rate p0, and both decisions."""
    acc = wm_accuracy(model, wm_x, wm_y)
    p = binomial_pvalue(round(acc * len(wm_y)), len(wm_y), p0)
    return Verdict(acc, p, p < significance, acc > threshold)


def null_models(victim, n: int, cache_dir: str | os.PathLike | None, data_split: str = "pool") -> list[nn.Module]:
    """n clean models of the victim's task (its arch and TrainConfig) trained on `data_split` with its true labels
    ("pool": the attacker pool split, i.e. an honest party's own data — the images a thief queries, labelled by
    their owner instead of the victim; "train": the victim's own train split), each from its own
    "ownership/null" seeds, cached under `cache_dir/null-<task hash>/<i>.pt`: victims that share a task
    (dataset, splits, arch, training settings, seed) share them."""
    from workloads.victims import DEFAULT_CACHE

    cfg, data = victim.config, victim.data
    x, y = (data.x_pool, data.y_pool) if data_split == "pool" else (data.x_train, data.y_train)
    task = {"dataset": cfg.dataset, "arch": cfg.arch, "train": dataclasses.asdict(cfg.train), "seed": cfg.seed,
            "pool_fraction": cfg.pool_fraction, "test_fraction": cfg.test_fraction, "holdout": cfg.holdout,
            "split": data_split}
    folder = Path(cache_dir or DEFAULT_CACHE) / ("null-" + hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()[:16])
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    for i in range(n):
        seed = derive_seed("ownership/null", cfg.seed * 1_000_003 + i)
        model = build_model(cfg.arch, data.shape, data.num_classes, seed=seed)
        path = folder / f"{i}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            fit(model, x, y, cfg.train, seed=seed + 1)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as f:
                torch.save(model.cpu().state_dict(), f)
            os.replace(f.name, path)
        models.append(model.cpu().eval())
    return models


def threshold(null_accuracies: list[float], margin: float) -> float:
    """τ = the largest watermark accuracy among the null models, plus `margin`."""
    return max(null_accuracies) + margin


def false_positive_rates(null_accuracies: list[float], k: int, p0: float, margin: float,
                         significance: float) -> tuple[float, float]:
    """How often each test flags an independent clean model: the threshold test leave-one-out (model i against
    τ from the other N−1), the binomial test on every null model."""
    n = len(null_accuracies)
    by_threshold = sum(acc > threshold(null_accuracies[:i] + null_accuracies[i + 1:], margin)
                       for i, acc in enumerate(null_accuracies)) / n if n > 1 else float("nan")
    by_binomial = sum(binomial_pvalue(round(a * k), k, p0) < significance
                      for a in null_accuracies) / n
    return by_threshold, by_binomial

"""Ownership: watermark sets, their verification, removal attacks, and the trial metrics built from them.

The trial calls `victim_metrics` once per victim and `suspect_metrics` once per stolen substitute (averaged over
an attack's repeats), then `summary`; `metric_names` lists what it will report, for sweep objectives. A victim without a watermark (no `wm_x` artifact) reports only `robust_accuracy` (when asked for).
Metric names: robust_accuracy, wm_accuracy_victim, wm_pvalue_victim, wm_accuracy_null, wm_threshold,
wm_fpr (threshold test, leave-one-out on the null models), wm_fpr_binomial; per suspect (an attack key, or a
removal attack on a leaked copy: `finetune`, `prune_<rate>`): wm_accuracy/, wm_pvalue/, wm_verified/
(threshold test), wm_verified_binomial/; removal_accuracy/<removal> (its clean test accuracy);
wm_verification_rate (fraction of suspects the threshold test verifies).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn

from workloads.adversarial import robust_accuracy
from workloads.config import ConfigError, above, in_range, positive
from workloads.metrics import accuracy
from workloads.ownership.removal import FinetuneConfig, check_rate, finetune, prune
from workloads.ownership.verification import false_positive_rates, null_models, threshold, verify, wm_accuracy
from workloads.seeds import derive_seed
from workloads.training import predict_proba


@dataclasses.dataclass(frozen=True)
class OwnershipConfig:
    """How a trial measures robustness and verifies ownership (none of it changes the victim)."""

    robust_epsilon: float | None = None   # PGD ε of robust_accuracy; None: the victim's adversarial-training ε
    robust_steps: int = 20                # PGD steps of the robust-accuracy attack, step 2.5ε/steps (Madry)
    robust_size: int = 2000               # test images attacked (the first ones; all when fewer)
    null_models: int = 5                  # independent clean models behind the threshold and the FPR
    null_data: Literal["pool", "train"] = "pool"   # their data: the pool split (an honest party's own), or the victim's
    margin: float = 0.05                  # τ = max null watermark accuracy + margin
    significance: float = 0.01            # binomial test level
    chance: Literal["uniform", "null"] = "uniform"   # binomial p0: 1/classes, or the null models' mean wm accuracy
    finetune: FinetuneConfig | None = FinetuneConfig()    # removal by fine-tuning; null: skip
    prune_rates: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7])

    def __post_init__(self):
        if self.robust_epsilon is not None:
            positive("robust_epsilon", self.robust_epsilon, 0)
        positive("robust_steps", self.robust_steps)
        positive("robust_size", self.robust_size)
        positive("null_models", self.null_models, 2)
        positive("margin", self.margin, 0)
        above("significance", self.significance, 0)
        in_range("significance", self.significance, 0, 1)
        for i, rate in enumerate(self.prune_rates):
            check_rate(rate, f"prune_rates[{i}]")


def _epsilon(victim, cfg: OwnershipConfig) -> float | None:
    if cfg.robust_epsilon is not None:
        return cfg.robust_epsilon
    hardening = victim.config.hardening.resolved()
    return hardening["params"]["epsilon"] if hardening["name"] == "adversarial_training" else None


def _null(victim, cfg: OwnershipConfig, cache_dir) -> list[float]:
    wm_x, wm_y = victim.artifacts["wm_x"], victim.artifacts["wm_y"]
    return [wm_accuracy(m, wm_x, wm_y) for m in null_models(victim, cfg.null_models, cache_dir, cfg.null_data)]


def _p0(null: list[float], num_classes: int, cfg: OwnershipConfig) -> float:
    """The binomial test's chance rate: 1/classes, or the rate independent models hit the key labels."""
    return 1.0 / num_classes if cfg.chance == "uniform" else min(max(sum(null) / len(null), 1.0 / num_classes), 0.999)


def _suspect(name: str, model: nn.Module, victim, null: list[float], cfg: OwnershipConfig) -> dict[str, float]:
    v = verify(model, victim.artifacts["wm_x"], victim.artifacts["wm_y"], threshold(null, cfg.margin),
               _p0(null, victim.data.num_classes, cfg), cfg.significance)
    scores = {"wm_accuracy": v.wm_accuracy, "wm_pvalue": v.pvalue, "wm_verified": float(v.verified_threshold),
              "wm_verified_binomial": float(v.verified_binomial)}
    return {f"{k}/{name}": value for k, value in scores.items()} if name else scores


def victim_metrics(victim, cfg: OwnershipConfig, cache_dir) -> dict[str, float]:
    """Robust accuracy; the victim's own watermark accuracy, the null models' and the false-positive rates;
    and the watermark after fine-tuning and pruning a leaked copy of the victim."""
    out: dict[str, float] = {}
    data = victim.data
    eps = _epsilon(victim, cfg)
    if eps is not None:
        n = min(cfg.robust_size, len(data.x_test))
        out["robust_accuracy"] = robust_accuracy(victim.model, data.x_test[:n], data.y_test[:n], eps,
                                                 2.5 * eps / cfg.robust_steps, cfg.robust_steps)
    if "wm_x" not in victim.artifacts:
        return out
    k = len(victim.artifacts["wm_y"])
    null = _null(victim, cfg, cache_dir)
    out["wm_accuracy_null"], out["wm_threshold"] = sum(null) / len(null), threshold(null, cfg.margin)
    out["wm_fpr"], out["wm_fpr_binomial"] = false_positive_rates(null, k, _p0(null, data.num_classes, cfg),
                                                                 cfg.margin, cfg.significance)
    own = _suspect("victim", victim.model, victim, null, cfg)
    out["wm_accuracy_victim"], out["wm_pvalue_victim"] = own["wm_accuracy/victim"], own["wm_pvalue/victim"]
    removed = {f"prune_{rate:g}": prune(victim.model, rate) for rate in cfg.prune_rates}
    if cfg.finetune is not None:
        if not len(data.x_pool):
            raise ConfigError("ownership.finetune: the victim has no attacker pool to fine-tune on "
                              "(victim.pool_fraction is 0); set ownership.finetune: null")
        removed["finetune"] = finetune(victim.model, data.x_pool, data.y_pool, cfg.finetune,
                                       derive_seed("substitute/train", victim.config.seed))
    for name, model in removed.items():
        out |= _suspect(name, model, victim, null, cfg)
        out[f"removal_accuracy/{name}"] = accuracy(predict_proba(model, data.x_test), data.y_test)
    return out


def suspect_metrics(victim, substitute: nn.Module, cfg: OwnershipConfig, cache_dir) -> dict[str, float]:
    """Watermark accuracy, p-value and both decisions for one stolen substitute (SUSPECT_METRICS; the trial
    reports their mean over an attack's repeats as `<metric>/<attack key>`)."""
    if "wm_x" not in victim.artifacts:
        return {}
    training = substitute.training
    scores = _suspect("", substitute.cpu().eval(), victim, _null(victim, cfg, cache_dir), cfg)
    substitute.train(training)
    return scores


SUSPECT_METRICS = ("wm_accuracy", "wm_pvalue", "wm_verified", "wm_verified_binomial")
VICTIM_METRICS = ("wm_accuracy_victim", "wm_pvalue_victim", "wm_accuracy_null", "wm_threshold", "wm_fpr",
                  "wm_fpr_binomial", "wm_verification_rate")


def metric_names(hardening, attack_keys: list[str], repeats: int, cfg: OwnershipConfig) -> list[str]:
    """The ownership metrics a trial reports for a victim trained with `hardening` (name and params as given,
    possibly a sweep's search space): robust_accuracy when an ε is known, the watermark ones when the recipe
    may train a watermark."""
    params = hardening.params if isinstance(hardening.params, dict) else {}
    adversarial = hardening.name == "adversarial_training"
    names = ["robust_accuracy"] if cfg.robust_epsilon is not None or adversarial else []
    watermark = params.get("watermark") or {}
    options = watermark if isinstance(watermark, list) else watermark.get("choice", [watermark])  # searched: a choice
    if not adversarial or not any(isinstance(o, dict) and o.get("kind", "none") != "none" for o in options):
        return names
    removals = [f"prune_{r:g}" for r in cfg.prune_rates] + (["finetune"] if cfg.finetune else [])
    names += list(VICTIM_METRICS) + [f"{m}/{s}" for s in attack_keys + removals for m in SUSPECT_METRICS]
    names += [f"removal_accuracy/{r}" for r in removals]
    return names + ([f"{m}_std/{k}" for k in attack_keys for m in SUSPECT_METRICS] if repeats > 1 else [])


def summary(metrics: dict[str, float]) -> dict[str, float]:
    """wm_verification_rate: the fraction of suspects (stolen and removal copies) the threshold test verifies."""
    verified = [v for k, v in metrics.items() if k.startswith("wm_verified/") and k != "wm_verified/victim"]
    return {"wm_verification_rate": sum(verified) / len(verified)} if verified else {}

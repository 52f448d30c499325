"""Training-time defenses: recipes that *produce a victim*, a registry by name.

An output defense (workloads.defenses) perturbs answers; a hardening recipe changes how the victim is
trained (InI, Outlier Exposure, adversarial training with watermarks). The recipe and its parameters are
part of the victim's config (`victim.hardening`), hence of its cache key: each point of a sweep over them
trains its victim once. Each recipe lives in its own module and registers itself:

    @register("ini", IniParams)
    def train(params: IniParams, ctx: HardeningContext) -> HardeningResult: ...

`none` is plain supervised training (workloads.training.fit).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn

from workloads.config import check_choice, parse
from workloads.data import Dataset
from workloads.training import TrainConfig
from workloads.registry import import_submodules


@dataclasses.dataclass(frozen=True)
class HardeningConfig:
    """A training recipe by registry name and its hyperparameters (validated against the recipe's Params)."""

    name: str = "none"
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        ensure_loaded()
        check_choice("name", self.name, REGISTRY)
        parse(REGISTRY[self.name][0], self.params, "params")

    def check_holdout(self, holdout: int) -> None:
        """ConfigError when the recipe draws more held-out images than `victim.holdout` sets aside (a recipe's
        Params declare `check_holdout(holdout)` when they use the held-out split)."""
        params = parse(REGISTRY[self.name][0], self.params, "params")
        if hasattr(params, "check_holdout"):
            params.check_holdout(holdout, "hardening.params")

    def resolved(self) -> dict:
        """Name and every parameter with defaults filled in (what the victim cache key hashes)."""
        return {"name": self.name, "params": dataclasses.asdict(parse(REGISTRY[self.name][0], self.params))}


@dataclasses.dataclass
class HardeningContext:
    """What a recipe trains: a freshly initialised model, the victim's data splits, the training settings,
    the victim seed (derive per-role streams from it with workloads.seeds.derive_seed), a data root for
    auxiliary datasets (OOD sets) and the device."""

    model: nn.Module
    data: Dataset
    train: TrainConfig
    arch: str
    seed: int
    data_root: str | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


@dataclasses.dataclass
class HardeningResult:
    """The trained model, what training recorded (final loss terms, ...) as metrics, and artifacts the
    victim must keep beside its weights (e.g. a watermark set), saved in the cache with it."""

    model: nn.Module
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, tuple[type, Callable[..., HardeningResult]]] = {}


def register(name: str, params_cls: type):
    """Register `train(params, ctx) -> HardeningResult` under `name`, with its typed Params dataclass."""

    def deco(train):
        REGISTRY[name] = (params_cls, train)
        return train

    return deco


def ensure_loaded() -> None:
    """Import every recipe module in this package, so each registers itself."""
    import_submodules(__name__, __path__)


def harden(config: HardeningConfig, ctx: HardeningContext) -> HardeningResult:
    """Train ctx.model with recipe `config`."""
    ensure_loaded()
    params_cls, train = REGISTRY[config.name]
    return train(parse(params_cls, config.params, "victim.hardening.params"), ctx)


def param_fields(name: str) -> dict[str, dataclasses.Field]:
    """The hyperparameters a recipe accepts (used by sweep validation)."""
    ensure_loaded()
    check_choice("victim.hardening.name", name, REGISTRY)
    return {f.name: f for f in dataclasses.fields(REGISTRY[name][0])}

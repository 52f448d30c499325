"""Output-perturbation defenses, a registry by name.

A defense maps the victim's clean posteriors (and, where it needs them, the inputs) to the answer
the API releases: `defense(probs, x) -> probs'`. Every defense returns rows that are non-negative and
sum to 1, at any batch size, and a row's answer never depends on the other rows in its batch.
Each family lives in its own module and registers itself with `@register(name, Params)`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import torch
import torch.nn as nn

from workloads.config import ConfigError, check_choice, parse
from workloads.data import Dataset
from workloads.registry import import_submodules


class Defense(Protocol):
    def __call__(self, probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass
class DefenseContext:
    """What a defense may use when it is built: the victim, its training data, architecture and seed."""

    victim: nn.Module
    dataset: Dataset
    arch: str
    seed: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """A defense by registry name and its hyperparameters (validated against the defense's Params)."""

    name: str = "none"
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        ensure_loaded()
        check_choice("name", self.name, REGISTRY)
        params_cls, _ = REGISTRY[self.name]
        parse(params_cls, self.params, "params")


REGISTRY: dict[str, tuple[type, Callable]] = {}


def register(name: str, params_cls: type):
    """Register `build(params, ctx) -> Defense` under `name`, with its typed Params dataclass."""

    def deco(build):
        REGISTRY[name] = (params_cls, build)
        return build

    return deco


def ensure_loaded() -> None:
    """Import every defense module in this package, so each registers itself."""
    import_submodules(__name__, __path__)


def build_defense(config: DefenseConfig, ctx: DefenseContext) -> Defense:
    ensure_loaded()
    params_cls, build = REGISTRY[config.name]
    return build(parse(params_cls, config.params, "defense.params"), ctx)


def param_fields(name: str) -> dict[str, dataclasses.Field]:
    """The hyperparameters a defense accepts (used by sweep validation)."""
    ensure_loaded()
    check_choice("defense.name", name, REGISTRY)
    return {f.name: f for f in dataclasses.fields(REGISTRY[name][0])}


def normalize(y: torch.Tensor) -> torch.Tensor:
    """Clip rows at 0 and rescale them to sum to 1 (uniform where a row is all zeros)."""
    y = y.clamp_min(0.0)
    s = y.sum(1, keepdim=True)
    return torch.where(s > 0, y / s.clamp_min(1e-30), torch.full_like(y, 1.0 / y.shape[1]))


__all__ = ["Defense", "DefenseConfig", "DefenseContext", "REGISTRY", "register", "build_defense",
           "param_fields", "normalize", "ConfigError"]

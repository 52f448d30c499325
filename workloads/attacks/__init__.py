"""Model-extraction attacks, a registry by name.

An attack never holds the victim: it talks to a `QueryClient`, which answers `query(x)` with the
(defended) posteriors and counts every image against the attack's budget; `explain(x, request)`
returns gradient explanations (workloads.explanations) and counts their victim evaluations.
In-process tests use `LocalQueryClient`; trials use a client that fans queries out over Ray attacker
workers.

Each attack lives in its own module and registers itself with its typed Params (the YAML's
`attacks[].params`) and the label mode of its paper:

    @register("knockoff", KnockoffParams, labels="soft")
    def steal(cfg, params, client, pool, victim, checkpoint) -> nn.Module: ...

An attack registered with `pool_labels=True` (adaptive Knockoff Nets) also receives `pool_labels`, the class
labels of its query pool. A Params class may define `check(cfg)` (budget-dependent checks, run when the
AttackConfig is built) and `check_pool(cfg, pool_size)` (run before the first query).

`checkpoint(queries, substitute)`, when given, may be called by the attack as often as it likes with its
current substitute and the queries spent so far; the trial evaluates the substitute each time the queries
pass one of `cfg.checkpoints` and logs the budget curve (step = queries). `cfg.curve` says which substitute
(see `workloads.attacks.curve.CurveClient`): `retrain` (mebench's track A) trains a fresh substitute on the
first c answers at each checkpoint c; `online` (track B) reports the attack's own substitute.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Protocol

import numpy as np
import torch
import torch.nn as nn

from workloads.config import ConfigError, check_choice, parse, positive
from workloads.data import LOADERS, SURROGATE_KINDS
from workloads.explanations import ExplainRequest, add_noise, check_weights, explain
from workloads.training import TrainConfig
from workloads.registry import import_submodules


class BudgetExceeded(RuntimeError):
    """A query would take a client past its image budget."""


class QueryClient(Protocol):
    budget: int
    used: int

    def query(self, x: np.ndarray) -> np.ndarray:
        """Posteriors (N, K) for images x (N, C, H, W), float32; charges N images to the budget."""

    def explain(self, x: np.ndarray, request: ExplainRequest,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(defended posteriors (N, K), explanations (N, rows, C, H, W)); charges N x request.cost(K)."""


class LocalQueryClient:
    """A QueryClient over an in-process answer function (a model plus defense), for tests and debugging.

    `from_model` also serves `explain`, computed in-process with the service's code and charging rules."""

    def __init__(self, answer: Callable[[torch.Tensor], torch.Tensor], budget: int,
                 explainer: Callable | None = None, num_classes: int | None = None):
        self.answer, self.budget, self.used = answer, budget, 0
        self.explainer, self.num_classes = explainer, num_classes

    @classmethod
    def from_model(cls, model: nn.Module, budget: int, defense: Callable | None = None,
                   explanation_noise: float = 0.0, seed: int = 0) -> "LocalQueryClient":
        """A client of `model` behind `defense(probs, x)` (none: the clean posteriors), explanations on."""
        from workloads.seeds import derive_seed

        defend = defense or (lambda p, x: p)
        sampling = torch.Generator().manual_seed(derive_seed("explainer/sampling", seed))
        noise = torch.Generator().manual_seed(derive_seed("defense/noise", seed))

        def answer(x):
            return defend(torch.softmax(model(x), 1), x)

        def explainer(x, request, weights):
            probs, grads = explain(model, x, request, weights, generator=sampling)
            with torch.inference_mode():
                return defend(probs, x), add_noise(grads, explanation_noise, noise)

        return cls(answer, budget, explainer, model.head.out_features)

    def query(self, x: np.ndarray) -> np.ndarray:
        if self.used + len(x) > self.budget:
            raise BudgetExceeded(f"query of {len(x)} images exceeds budget ({self.used}/{self.budget} used)")
        self.used += len(x)
        with torch.inference_mode():
            return self.answer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def explain(self, x: np.ndarray, request: ExplainRequest, weights: np.ndarray | None = None):
        if self.explainer is None:
            raise ValueError("explain: this client was built without an explainer (use LocalQueryClient.from_model)")
        check_weights(weights, len(x), self.num_classes, request.mode)
        cost = len(x) * request.cost(self.num_classes)
        if self.used + cost > self.budget:
            raise BudgetExceeded(f"explanation of {len(x)} images ({cost} evaluations) exceeds budget "
                                 f"({self.used}/{self.budget} used)")
        self.used += cost
        w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
        probs, grads = self.explainer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), request, w)
        return probs.float().numpy(), grads.float().numpy()


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """Where the attacker's query images come from (see workloads.data.surrogate_pool)."""

    kind: Literal["split", "dataset", "noise"] = "split"
    name: str | None = None
    size: int | None = None

    def __post_init__(self):
        check_choice("kind", self.kind, SURROGATE_KINDS)
        if self.kind == "dataset" and not self.name:
            raise ConfigError("name: required when kind is 'dataset'")
        if self.kind == "dataset":
            check_choice("name", self.name, LOADERS)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One extraction attack: which, with what budget (images), labels, query data and substitute."""

    name: str = "knockoff"
    budget: int = 1000
    labels: Literal["soft", "hard"] | None = None
    surrogate: SurrogateConfig = SurrogateConfig()
    workers: int = 1
    query_batch: int = 256
    substitute_arch: str | None = None
    train: TrainConfig = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
    seed: int = 0
    id: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    checkpoints: list[int] = dataclasses.field(default_factory=list)   # budgets where the budget curve is measured
    curve: Literal["retrain", "online"] | None = None   # curve points: fresh substitutes, or the attack's own;
                                                        # None: the attack's first supported way (AttackSpec.curves)

    def __post_init__(self):
        ensure_loaded()
        check_choice("name", self.name, REGISTRY)
        positive("budget", self.budget)
        positive("workers", self.workers)
        if self.workers > self.budget:
            raise ConfigError(f"workers: {self.workers} workers for a budget of {self.budget} images leaves some "
                              f"with nothing to send; at most {self.budget}")
        positive("query_batch", self.query_batch)
        positive("seed", self.seed, 0)
        for i, c in enumerate(self.checkpoints):
            if not 0 < c <= self.budget or (i and c <= self.checkpoints[i - 1]):
                raise ConfigError(f"checkpoints[{i}]: expected increasing query counts in 1..budget "
                                  f"({self.budget}), got {c!r}")
        spec = REGISTRY[self.name]
        if self.curve is None:
            object.__setattr__(self, "curve", spec.curves[0])
        check_choice("curve", self.curve, ("retrain", "online"))
        if self.curve not in spec.curves:
            raise ConfigError(f"curve: {self.name} measures its budget curve only as {' or '.join(spec.curves)}, "
                              f"got {self.curve!r}")
        params = self.typed_params()
        if hasattr(params, "check"):
            params.check(self)
        if REGISTRY[self.name].pool_labels and self.surrogate.kind == "noise":
            raise ConfigError(f"surrogate.kind: {self.name} samples the pool by class and needs its labels; "
                              f"'noise' has none (use split or dataset)")
        if self.labels is None:
            object.__setattr__(self, "labels", REGISTRY[self.name].labels)

    def typed_params(self):
        """The attack's own hyperparameters, parsed into its registered Params dataclass."""
        return parse(REGISTRY[self.name].params, self.params, "params")

    @property
    def key(self) -> str:
        """The name metrics use for this attack: stolen_accuracy/<key>."""
        return self.id or f"{self.name}_{self.labels}_{self.surrogate.name or self.surrogate.kind}"


@dataclasses.dataclass
class VictimInfo:
    """What an attacker knows about the victim's interface (public: input shape, classes, input range)."""

    shape: tuple[int, int, int]
    num_classes: int
    arch: str
    input_range: tuple[float, float] = (0.0, 1.0)   # the service rejects queries with any pixel outside it
    leakage: object = None   # the pow defense's leakage estimator (increments/cost), for worst-case attackers


Checkpoint = Callable[[int, nn.Module], None]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    params: type
    steal: Callable
    labels: str            # the label mode of the attack's paper ("soft" / "hard")
    explanations: bool = False   # calls QueryClient.explain (the service must serve explanations)
    pool_labels: bool = False    # steal() takes the query pool's class labels (sampling by class)
    curves: tuple[str, ...] = ("retrain", "online")   # the budget-curve modes it supports; the first is its default


@dataclasses.dataclass(frozen=True)
class NoParams:
    """An attack without hyperparameters of its own."""


REGISTRY: dict[str, AttackSpec] = {}


def register(name: str, params_cls: type = NoParams, labels: Literal["soft", "hard"] = "soft",
             explanations: bool = False, pool_labels: bool = False, curves: tuple[str, ...] = ("retrain", "online")):
    """Register `steal(cfg, params, client, pool, victim, checkpoint[, pool_labels]) -> substitute` under `name`;
    `explanations=True` when it calls `client.explain`, `pool_labels=True` when it takes the pool's class labels,
    `curves` the budget-curve modes it supports (its default first)."""

    def deco(fn):
        REGISTRY[name] = AttackSpec(params_cls, fn, labels, explanations, pool_labels, curves)
        return fn

    return deco


def ensure_loaded() -> None:
    """Import every attack module in this package, so each registers itself."""
    import_submodules(__name__, __path__)


def check_pool(cfg: AttackConfig, pool_size: int) -> None:
    """ConfigError naming the field when attack `cfg` cannot run on a query pool of `pool_size` images."""
    params = cfg.typed_params()
    if hasattr(params, "check_pool"):
        params.check_pool(cfg, pool_size)


def steal(cfg: AttackConfig, client: QueryClient, pool: torch.Tensor, victim: VictimInfo,
          checkpoint: Checkpoint | None = None, pool_labels: torch.Tensor | None = None) -> nn.Module:
    """Run attack `cfg` through `client` with query pool `pool` (and its class labels, for attacks that sample
    by class); return the trained substitute."""
    ensure_loaded()
    spec = REGISTRY[cfg.name]
    if pool is not None:            # data-free attacks have no pool
        check_pool(cfg, len(pool))
    if not spec.pool_labels:
        return spec.steal(cfg, cfg.typed_params(), client, pool, victim, checkpoint)
    if pool_labels is None or len(pool_labels) != len(pool):
        raise ConfigError(f"surrogate: {cfg.name} needs the class label of every pool image")
    return spec.steal(cfg, cfg.typed_params(), client, pool, victim, checkpoint, pool_labels=pool_labels)

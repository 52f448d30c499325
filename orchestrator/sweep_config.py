"""The sweep YAML: schema, validation and the mapping of its search space onto Optuna.

A sweep YAML is a trial config (victim, attacks, service/worker resources) whose defense
hyperparameters may be search spaces, plus what to optimise and how:

    defense: {name: dcp, params: {beta: {loguniform: [0.05, 2.0]}, gamma: 0.2}}
    objectives: [{metric: defended_accuracy, mode: max}, {metric: stolen_accuracy, mode: min}]
    search: {algorithm: optuna, sampler: tpe, num_samples: 16, max_concurrent: 2, seed: 0}

Several defenses can share one sweep (`defenses:` instead of `defense:`); the defense is then itself
a searched choice and every trial is one defense at one hyperparameter point. A hyperparameter is a
fixed value, `{uniform: [a, b]}`, `{loguniform: [a, b]}`, `{int: [a, b]}` (both ends included),
`{choice: [...]}`, or a plain list of values (the same as choice; the natural form for grids).

The victim's training-time defense is searched the same way: `victim.hardening.params` values may be
search spaces (`victim: {hardening: {name: ini, params: {gamma: [0.1, 0.3, 1.0]}}}`); each trial then trains
(or loads, from the content-addressed cache) the victim of its point, and may combine it with any output
defense. A hyperparameter whose value is a mapping (InI's `ood: {kind: noise}`) is a fixed value; a choice
between mappings is `{choice: [{kind: noise}, {kind: dataset, name: mnist}]}`.

`load(path)` parses and resolves a YAML (defaults, absolute paths, tracking URI) and raises one
ConfigError listing every problem as `yaml.path: message`, before anything starts.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.config import BenignConfig, ServiceConfig, TrialConfig, WorkerResources
from workloads.attacks import AttackConfig
from workloads.config import (INT_MAX, ConfigError, check_choice, did_you_mean, in_range, load_yaml, parse, positive,
                              to_dict)
import workloads.defenses as output_defenses
import workloads.hardening as hardening_recipes
from workloads.defenses import DefenseConfig
from workloads.hardening import HardeningConfig
from workloads.ownership import OwnershipConfig, metric_names as ownership_metrics
from workloads.victims import DEFAULT_CACHE, VictimConfig

DEFAULT_STORAGE = "heist_runs"          # under the working directory unless HEIST_STORAGE or `storage:` say otherwise
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# docs/DESIGN.md's metric names: those every trial reports, and those reported per attack as `<name>/<attack key>`.
METRICS = ("victim_accuracy", "defended_accuracy", "perturbation_l1", "perturbation_l1_attacker",
           "defense_latency_us", "stolen_accuracy", "fidelity", "agreement", "relative_accuracy")
# What trials of the `pow` defense (calibrated proof of work, orchestrator/pow_gate.py) report besides.
POW_METRICS = ("pow_benign_overhead", "pow_attacker_overhead", "privacy_cost_benign", "privacy_cost_attacker",
               "pow_bits_mean_benign", "pow_bits_mean_attacker", "pow_bits_max_benign", "pow_bits_max_attacker",
               "pow_hashes_benign", "pow_hashes_attacker", "pow_mint_seconds_benign", "pow_mint_seconds_attacker",
               "pow_hash_rate")
PER_ATTACK_METRICS = ("stolen_accuracy", "fidelity", "agreement", "perturbation_l1", "queries")
# With repeats > 1 these come with their sample standard deviation as `<name>_std` and `<name>_std/<attack key>`.
SPREAD_METRICS = ("stolen_accuracy", "fidelity", "agreement", "relative_accuracy")
# The worst value a metric can take, per mode: the default reference point for the hypervolume.
BOUNDS = {"victim_accuracy": (0.0, 1.0), "defended_accuracy": (0.0, 1.0), "stolen_accuracy": (0.0, 1.0),
          "fidelity": (0.0, 1.0), "agreement": (0.0, 1.0), "relative_accuracy": (0.0, 1.0),
          "robust_accuracy": (0.0, 1.0), "wm_accuracy_victim": (0.0, 1.0), "perturbation_l1": (0.0, 2.0),
          "perturbation_l1_attacker": (0.0, 2.0), "wm_accuracy": (0.0, 1.0), "wm_pvalue": (0.0, 1.0),
          "wm_verified": (0.0, 1.0), "wm_verification_rate": (0.0, 1.0), "wm_fpr": (0.0, 1.0),
          "wm_fpr_binomial": (0.0, 1.0), "removal_accuracy": (0.0, 1.0)}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
MAX_GRID = 100_000                      # points a grid sweep may enumerate
SEED_MAX = 2**32 - 1                    # Optuna's samplers seed numpy's RandomState
HARDENING_PREFIX = "victim.hardening."     # Optuna / MLflow names of the victim recipe's searched hyperparameters


def metric_names(attacks, repeats: int = 1, extra=()) -> list[str]:
    """Every metric a trial of these attacks reports (what objectives may name); `extra` adds the metrics of
    optional parts the trial has (e.g. a hardening recipe's)."""
    names = list(METRICS) + list(extra)
    per_attack = [f"{m}/{a.key}" for a in attacks for m in PER_ATTACK_METRICS]
    if repeats > 1:
        names += [f"{m}_std" for m in SPREAD_METRICS]
        per_attack += [f"{m}_std/{a.key}" for a in attacks for m in PER_ATTACK_METRICS[:-1]]
    return names + per_attack


# ------------------------------------------------------------------------------------ search space
@dataclasses.dataclass(frozen=True)
class Dim:
    """One hyperparameter's space: `fixed` (values = (v,)), a range (values = (low, high)), or `choice`."""

    kind: Literal["fixed", "uniform", "loguniform", "int", "choice"]
    values: tuple

    @property
    def size(self) -> int | None:
        """How many values the space holds; None for continuous ranges."""
        if self.kind == "int":
            return self.values[1] - self.values[0] + 1
        return None if self.kind in ("uniform", "loguniform") else len(self.values)

    @property
    def finite(self) -> list | None:
        """Every value, for fixed values, choices and int ranges; None for continuous ranges."""
        if self.kind == "int":
            return list(range(self.values[0], self.values[1] + 1))
        return None if self.kind in ("uniform", "loguniform") else list(self.values)

    def probes(self) -> list:
        """Values that stand for the whole space when the defense's own validation checks it."""
        if self.kind in ("uniform", "loguniform"):
            return [float(v) for v in self.values]
        return list(self.values)

    def contains(self, value) -> bool:
        if self.kind in ("fixed", "choice"):
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.values[0] <= value <= self.values[1] and (self.kind != "int" or float(value).is_integer())

    def suggest(self, trial, name: str):
        """The value an Optuna trial picks (define-by-run); a fixed value is not a searched parameter."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":      # Optuna's categoricals are scalars: a mapping goes by its JSON text
            labels = [json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in self.values]
            return self.values[labels.index(trial.suggest_categorical(name, labels))]
        if self.kind == "int":
            return trial.suggest_int(name, *self.values)
        return trial.suggest_float(name, *self.values, log=self.kind == "loguniform")

    def __str__(self):
        return repr(self.values[0]) if self.kind == "fixed" else f"{{{self.kind}: {list(self.values)}}}"


def _number(v) -> bool:
    """A finite number that fits its type (an integer in 64 bits)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) <= INT_MAX if isinstance(v, int) else math.isfinite(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, str)) or _number(v)


def _choice(values, where: str, mapping: bool = False) -> Dim:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: expected a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{where}: empty search space: expected at least one value")
    if not all(_scalar(v) or (mapping and isinstance(v, dict)) for v in values):
        kinds = "numbers, strings, booleans or mappings" if mapping else "numbers, strings or booleans"
        raise ConfigError(f"{where}: expected {kinds}, got {values!r}")
    return Dim("choice", tuple(values))


def parse_dim(value, mapping: bool = False) -> Dim:
    """A YAML hyperparameter value as a Dim; ConfigError messages start with the path below the parameter.

    `mapping`: the hyperparameter takes a mapping, so a mapping that is not a distribution is a fixed value."""
    if isinstance(value, list):
        return _choice(value, "", mapping)
    if not isinstance(value, dict):
        return Dim("fixed", (value,))
    if mapping and not (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        return Dim("fixed", (value,))
    if len(value) != 1:
        raise ConfigError(f": expected a number or a distribution such as {{uniform: [0, 1]}}, got {value!r}")
    (kind, args), = value.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f": unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}; "
                          f"expected one of {', '.join(DISTRIBUTIONS)}")
    where = f".{kind}"
    if kind == "choice":
        return _choice(args, where, mapping)
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise ConfigError(f"{where}: expected [low, high], got {args!r}")
    low, high = args
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: expected two integers [low, high], got {args!r}")
    if not low < high:
        raise ConfigError(f"{where}: empty search space: expected low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: expected 0 < low on a log scale, got {args!r}")
    return Dim(kind, (low, high))


@dataclasses.dataclass(frozen=True)
class ParamSpace:
    """A registry entry by name and a search space over its hyperparameters (DefenseSpace, HardeningSpace)."""

    name: str = "none"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: typing.ClassVar[str]

    @staticmethod
    def registry() -> dict[str, tuple]:
        """name -> (Params class, ...), every module loaded."""
        raise NotImplementedError

    def __post_init__(self):
        registry = self.registry()
        if self.name not in registry:
            raise ConfigError(f"name: unknown {self.kind} {self.name!r}{did_you_mean(self.name, registry)}; "
                              f"expected one of {sorted(registry)}")
        fields = [f.name for f in dataclasses.fields(self.params_cls)]
        errors, dims = [], {}
        for key, value in self.params.items():
            if key not in fields:
                errors.append(f"params.{key}: unknown hyperparameter of {self.name}{did_you_mean(key, fields)}; "
                              f"{self.name} takes {', '.join(fields) or 'none'}")
                continue
            try:
                dims[key] = parse_dim(value, key in self._mappings())
            except ConfigError as e:
                errors.extend(f"params.{key}{m}" for m in e.errors)
        errors.extend(self._check_values(dims) if not errors else [])
        if errors:
            raise ConfigError(errors)

    @property
    def params_cls(self) -> type:
        return self.registry()[self.name][0]

    def _mappings(self) -> set[str]:
        """The hyperparameters whose values are mappings (typed as a dataclass)."""
        return {k for k, tp in typing.get_type_hints(self.params_cls).items() if dataclasses.is_dataclass(tp)}

    def _check_values(self, dims: dict[str, Dim]) -> list[str]:
        """Run every probe value, and every point of a finite space, through the Params' own validation."""
        example = {k: d.probes()[0] for k, d in dims.items()}
        errors: dict[str, None] = {}
        for key, dim in dims.items():
            for value in dim.probes():
                try:
                    parse(self.params_cls, {**example, key: value}, "params")
                except ConfigError as e:
                    for m in e.errors:
                        if any(m.startswith(f"params.{other}: ") for other in dims if other != key):
                            continue                     # reported, annotated, when that hyperparameter is probed
                        if m.startswith(f"params.{key}: ") and dim.kind != "fixed":
                            m = f"{m} (in {dim})"
                        elif m.startswith(f"params.{key}: ") and not _number(value):
                            m = m.replace(", got ", " or a distribution, got ", 1)
                        errors[m] = None
        if not errors and all(d.finite is not None for d in dims.values()):
            for point in itertools.product(*(d.finite for d in dims.values())):
                try:   # a constraint between hyperparameters (InI: PCGrad needs two active terms)
                    parse(self.params_cls, dict(zip(dims, point)), "params")
                except ConfigError as e:
                    return [f"{m} (at the point {dict(zip(dims, point))} of this space)" for m in e.errors]
        return list(errors)

    @property
    def dims(self) -> dict[str, Dim]:
        mappings = self._mappings()
        return {k: parse_dim(v, k in mappings) for k, v in self.params.items()}

    @property
    def searched(self) -> dict[str, Dim]:
        """The hyperparameters that take more than one value."""
        return {k: d for k, d in self.dims.items() if d.size is None or d.size > 1}

    def example(self) -> dict:
        """One point of the space: each hyperparameter's first value or lower bound."""
        return {k: d.probes()[0] for k, d in self.dims.items()}

    def grid(self) -> list[dict]:
        """Every point of the space (all dims finite)."""
        dims = self.dims
        return [{"name": self.name, "params": dict(zip(dims, values))}
                for values in itertools.product(*(d.finite for d in dims.values()))]

    def with_defaults(self) -> ParamSpace:
        """Every hyperparameter the sweep leaves out, at its default (a mapping default as plain data)."""
        fields = dataclasses.fields(self.params_cls)
        return dataclasses.replace(self, params=self.params | {
            f.name: to_dict(f.default) if dataclasses.is_dataclass(f.default) else f.default
            for f in fields if f.name not in self.params and f.default is not dataclasses.MISSING})


@dataclasses.dataclass(frozen=True)
class DefenseSpace(ParamSpace):
    """An output defense (workloads.defenses) and a search space over its hyperparameters."""

    kind = "defense"

    @staticmethod
    def registry():
        output_defenses.ensure_loaded()
        return output_defenses.REGISTRY


@dataclasses.dataclass(frozen=True)
class HardeningSpace(ParamSpace):
    """The victim's training recipe (workloads.hardening) and a search space over its hyperparameters."""

    kind = "hardening recipe"

    @staticmethod
    def registry():
        hardening_recipes.ensure_loaded()
        return hardening_recipes.REGISTRY

    def config(self, params: dict | None = None) -> HardeningConfig:
        """The recipe at one point of the space (default: the example point)."""
        return HardeningConfig(self.name, self.example() if params is None else params)


@dataclasses.dataclass(frozen=True)
class VictimSpace(VictimConfig):
    """The victim of a sweep: a VictimConfig whose `hardening.params` may be search spaces."""

    hardening: HardeningSpace = HardeningSpace()

    def at(self, params: dict | None = None) -> VictimConfig:
        """The victim at one point of the hardening space (default: the example point)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(VictimConfig)}
        return VictimConfig(**fields | {"hardening": self.hardening.config(params)})

    @property
    def key(self) -> str:
        """The cache key of the victim at the first point (the only one when the recipe is not searched)."""
        return self.at().key


# ------------------------------------------------------------------------------------------ the sweep
@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    mode: Literal["max", "min"]


SAMPLERS = ("tpe", "nsga2", "random", "grid")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How trials are chosen. Algorithms `grid` and `random` are Optuna's GridSampler and RandomSampler."""

    algorithm: Literal["optuna", "grid", "random"] = "optuna"
    sampler: str | None = None              # optuna: tpe (default), nsga2, random or grid
    num_samples: int | None = None          # trials; default 8, or the grid's size
    max_concurrent: int = 1                 # trials at a time
    seed: int = 0
    points_to_evaluate: list[dict] = dataclasses.field(default_factory=list)   # [{name?, params}], run first

    def __post_init__(self):
        implied = self.algorithm if self.algorithm != "optuna" else None
        if self.sampler is not None:
            check_choice("sampler", self.sampler, SAMPLERS)
        if implied and self.sampler not in (None, implied):
            raise ConfigError(f"sampler: algorithm {self.algorithm!r} uses the {implied!r} sampler; "
                              f"remove sampler or use algorithm 'optuna'")
        object.__setattr__(self, "sampler", self.sampler or implied or "tpe")
        if self.num_samples is not None:
            positive("num_samples", self.num_samples)
        positive("max_concurrent", self.max_concurrent)
        in_range("seed", self.seed, 0, SEED_MAX)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None          # default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str | None = None   # default: the sweep's name


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str | None = None                                # default: the YAML file's stem
    victim: VictimSpace = VictimSpace()                    # its hardening.params may be search spaces
    # One defense, or several searched as a choice; exactly one of the two is given (None: absent).
    defense: DefenseSpace | None = None
    defenses: list[DefenseSpace] | None = None
    attacks: list[AttackConfig] = dataclasses.field(default_factory=lambda: [AttackConfig()])
    service: ServiceConfig = ServiceConfig()
    workers: WorkerResources = WorkerResources()
    benign: BenignConfig = BenignConfig()
    trial_resources: WorkerResources = WorkerResources(num_cpus=0.5)   # the trial process: substitute training
    cache_dir: str | None = None                           # victim cache; default ~/.cache/heist/victims
    repeats: int = 1                                       # attack runs per trial (independent seeds): mean ± sd
    ownership: OwnershipConfig = OwnershipConfig()         # robust accuracy, watermark verification and removal
    objectives: list[Objective] = dataclasses.field(default_factory=lambda: [
        Objective("defended_accuracy", "max"), Objective("stolen_accuracy", "min")])
    reference_point: dict[str, float] = dataclasses.field(default_factory=dict)
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: str | None = None                             # default: $HEIST_STORAGE, else ./heist_runs

    def __post_init__(self):
        errors = []
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            errors.append(f"name: expected letters, digits, '_', '.' or '-', got {self.name!r}")
        if (self.defense is None) == (self.defenses is None):
            errors.append("defense: expected either `defense:` (one) or `defenses:` (a list), not "
                          + ("both" if self.defense else "neither"))
        elif self.defenses is not None:
            names = [d.name for d in self.defenses]
            errors += [f"defenses[{i}].name: {n!r} is listed twice" for i, n in enumerate(names) if n in names[:i]]
            if not self.defenses:
                errors.append("defenses: empty search space: expected at least one defense")
        errors += self._check_objectives()
        if not errors:
            errors += self._check_search()
        if errors:
            raise ConfigError(errors)
        first = self.spaces[0]
        TrialConfig(self.victim.at(), DefenseConfig(first.name, first.example()), self.attacks, self.service,
                    self.workers, self.benign, self.cache_dir, self.repeats, ownership=self.ownership)

    # -- derived views
    @property
    def spaces(self) -> list[DefenseSpace]:
        return [self.defense] if self.defense is not None else list(self.defenses)

    def space_path(self, i: int) -> str:
        return "defense" if self.defense is not None else f"defenses[{i}]"

    def grid(self) -> list[dict]:
        """Every defense point of a finite space."""
        return [point for space in self.spaces for point in space.grid()]

    @property
    def hardening_searched(self) -> bool:
        """Whether the victim's training recipe is searched (each trial then has its own victim)."""
        return bool(self.victim.hardening.searched)

    def trial_grid(self) -> list[dict]:
        """Every trial point of a finite space: a defense point, and a hardening point when that is searched."""
        defenses = [{"defense": d} for d in self.grid()]
        if not self.hardening_searched:
            return defenses
        return [d | {"hardening": h} for h in self.victim.hardening.grid() for d in defenses]

    def label_keys(self) -> dict[str, list[str]]:
        """Per defense, the searched hyperparameters that name a trial (hardening ones as victim.hardening.<k>)."""
        hardening = [HARDENING_PREFIX + k for k in self.victim.hardening.searched]
        return {sp.name: list(sp.searched) + hardening for sp in self.spaces}

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    @property
    def num_samples(self) -> int:
        return len(self.trial_grid()) if self.search.sampler == "grid" else (self.search.num_samples or 8)

    def base_trial(self) -> dict:
        """The trial config every trial shares, as data; a trial adds its `defense` (and, when the victim's
        recipe is searched, replaces `victim.hardening` with its point: `trial_data`)."""
        return {"victim": to_dict(self.victim.at()), "attacks": [to_dict(a) for a in self.attacks],
                "service": to_dict(self.service), "workers": to_dict(self.workers),
                "benign": to_dict(self.benign), "cache_dir": self.cache_dir, "repeats": self.repeats,
                "ownership": to_dict(self.ownership)}

    def optuna_points(self) -> list[dict]:
        """search.points_to_evaluate under the Optuna parameter names SearchSpace uses."""
        out, hardening = [], self.victim.hardening.searched
        for point in self.search.points_to_evaluate:
            name = point.get("name", self.spaces[0].name)
            searched = next(sp for sp in self.spaces if sp.name == name).searched
            out.append(({"defense": name} if len(self.spaces) > 1 else {})
                       | {f"{name}.{k}": v for k, v in (point.get("params") or {}).items() if k in searched}
                       | {HARDENING_PREFIX + k: v for k, v in (point.get("hardening") or {}).items() if k in hardening})
        return out

    # -- checks
    def _check_objectives(self) -> list[str]:
        named = [sp.name for sp in ([self.defense] if self.defense else []) + list(self.defenses or [])]
        pow = POW_METRICS if "pow" in named else ()
        extra = ownership_metrics(self.victim.hardening, [a.key for a in self.attacks], self.repeats, self.ownership)
        errors, known, seen = [], metric_names(self.attacks, self.repeats, (*pow, *extra)), []
        if not self.objectives:
            errors.append("objectives: expected at least one objective")
        for i, o in enumerate(self.objectives):
            if o.metric not in known:
                hint = did_you_mean(o.metric, known) or f"; expected one of {', '.join(known)}"
                errors.append(f"objectives[{i}].metric: unknown metric {o.metric!r}{hint}")
            elif o.metric in seen:
                errors.append(f"objectives[{i}].metric: {o.metric!r} is listed twice")
            elif o.metric not in self.reference_point and o.metric.split("/")[0] not in BOUNDS:
                errors.append(f"reference_point.{o.metric}: required (this metric has no natural worst value)")
            seen.append(o.metric)
        errors += [f"reference_point.{key}: not an objective{did_you_mean(key, seen)}"
                   for key in self.reference_point if key not in seen]
        return errors

    def _check_search(self) -> list[str]:
        s, errors = self.search, []
        if len(self.spaces) == 1 and not self.spaces[0].searched and not self.hardening_searched:
            errors.append(f"{self.space_path(0)}.params: empty search space: every hyperparameter of "
                          f"{self.spaces[0].name} is fixed; give one a distribution or a list of values "
                          f"(here or under victim.hardening.params)")
        if s.sampler == "grid":
            errors += [f"{self.space_path(i)}.params.{k}: a grid needs a list of values, got {d}"
                       for i, space in enumerate(self.spaces) for k, d in space.dims.items() if d.finite is None]
            errors += [f"victim.hardening.params.{k}: a grid needs a list of values, got {d}"
                       for k, d in self.victim.hardening.dims.items() if d.finite is None]
            size = (sum(math.prod(d.size for d in space.dims.values()) for space in self.spaces)
                    * math.prod(d.size for d in self.victim.hardening.dims.values())) if not errors else 0
            if size > MAX_GRID:
                errors.append(f"search: a grid of {size} points is too large (at most {MAX_GRID}); "
                              f"use fewer values or a sampler")
                return errors
            if s.num_samples is not None and not errors and s.num_samples != len(self.trial_grid()):
                errors.append(f"search.num_samples: a grid runs each of its {len(self.trial_grid())} points once; "
                              f"remove num_samples")
            if s.points_to_evaluate:
                errors.append("search.points_to_evaluate: a grid runs every point already; remove it")
        for i, point in enumerate(s.points_to_evaluate):
            errors += self._check_point(point, f"search.points_to_evaluate[{i}]")
        return errors

    def _check_point(self, point: dict, path: str) -> list[str]:
        names = [sp.name for sp in self.spaces]
        if not isinstance(point, dict) or set(point) - {"name", "params", "hardening"}:
            return [f"{path}: expected {{name: <defense>, params: {{...}}, hardening: {{...}}}}, got {point!r}"]
        name = point.get("name", names[0] if len(names) == 1 else None)
        if name not in names:
            return [f"{path}.name: expected one of this sweep's defenses {names}, got {name!r}"]
        return (_check_values_in(self.spaces[names.index(name)], point.get("params") or {}, f"{path}.params")
                + _check_values_in(self.victim.hardening, point.get("hardening") or {}, f"{path}.hardening"))


def _check_values_in(space: ParamSpace, params: dict, path: str) -> list[str]:
    """Errors for a point that is not in `space`: unknown or missing searched hyperparameters, values outside."""
    if not isinstance(params, dict):
        return [f"{path}: expected a mapping of hyperparameter values, got {params!r}"]
    dims = space.dims
    errors = [f"{path}.{k}: not a hyperparameter in the {space.name} space{did_you_mean(k, dims)}"
              for k in params if k not in dims]
    errors += [f"{path}.{k}: required (every searched hyperparameter needs a value)"
               for k in space.searched if k not in params]
    errors += [f"{path}.{k}: {params[k]!r} is outside {dims[k]}"
               for k in params if k in dims and not dims[k].contains(params[k])]
    return errors


class SearchSpace:
    """Optuna define-by-run space: picks a defense (when there are several), then its hyperparameters.

    Optuna names a parameter `<defense>.<hyperparameter>` (two defenses may both have a `beta`), and a searched
    hyperparameter of the victim's recipe `victim.hardening.<hyperparameter>`; the trial config Tune passes to
    the trainable carries the point as `defense: {name, params}` and, when the recipe is searched,
    `hardening: {name, params}`. A grid is one categorical `point` over the enumerated grid, so Optuna's
    GridSampler visits each point once.
    """

    def __init__(self, cfg: SweepConfig):
        self.spaces = {sp.name: sp.dims for sp in cfg.spaces}
        self.hardening = cfg.victim.hardening if cfg.hardening_searched else None
        self.points = cfg.trial_grid() if cfg.search.sampler == "grid" else None

    def grid_space(self) -> dict[str, list]:
        return {"point": list(range(len(self.points)))}

    def __call__(self, trial) -> dict:
        if self.points is not None:
            return self.points[trial.suggest_categorical("point", self.grid_space()["point"])] | {
                "study_trial": trial.number}
        names = list(self.spaces)
        name = trial.suggest_categorical("defense", names) if len(names) > 1 else names[0]
        params = {k: d.suggest(trial, f"{name}.{k}") for k, d in self.spaces[name].items()}
        point = {"defense": {"name": name, "params": params}, "study_trial": trial.number}
        if self.hardening is not None:
            point["hardening"] = {"name": self.hardening.name, "params": {
                k: d.suggest(trial, HARDENING_PREFIX + k) for k, d in self.hardening.dims.items()}}
        return point


def trial_data(base: dict, point: dict) -> dict:
    """One trial's config as data: the sweep's shared part and a point of its search space."""
    victim = base["victim"] | ({"hardening": point["hardening"]} if "hardening" in point else {})
    return base | {"victim": victim, "defense": point["defense"]}


# ------------------------------------------------------------------------------------- load + resolve
def resolve_tracking_uri(uri: str | None) -> str:
    """YAML value, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; relative sqlite paths made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    if "://" not in uri:
        raise ConfigError(f"tracking.uri: MLflow's file store ({uri!r}) is gone in MLflow 3.13+; "
                          f"use sqlite:///{Path(uri).name or 'mlflow'}.db or an http(s):// server")
    return uri


def _absolute(path: str | os.PathLike, where: str) -> str:
    if "://" in str(path):
        raise ConfigError(f"{where}: expected a filesystem path (a shared mount on a multi-node cluster), "
                          f"got {str(path)!r}")
    return str(Path(path).expanduser().resolve())


def resolve(cfg: SweepConfig, name: str) -> SweepConfig:
    """Fill in the defaults: name, every defense hyperparameter, the reference point, the number of trials,
    and those that depend on the environment: paths (absolute: trials chdir) and the tracking URI."""
    def worst(o: Objective) -> float:
        low, high = BOUNDS[o.metric.split("/")[0]]
        return low if o.mode == "max" else high

    name = cfg.name or name
    return dataclasses.replace(
        cfg, name=name,
        victim=dataclasses.replace(cfg.victim, hardening=cfg.victim.hardening.with_defaults()),
        defense=cfg.defense and cfg.defense.with_defaults(),
        defenses=cfg.defenses and [sp.with_defaults() for sp in cfg.defenses],
        storage=_absolute(cfg.storage or os.environ.get("HEIST_STORAGE") or DEFAULT_STORAGE, "storage"),
        cache_dir=_absolute(cfg.cache_dir or DEFAULT_CACHE, "cache_dir"),
        reference_point={o.metric: float(cfg.reference_point[o.metric]) if o.metric in cfg.reference_point
                         else worst(o) for o in cfg.objectives},
        search=dataclasses.replace(cfg.search, num_samples=cfg.num_samples),
        tracking=TrackingConfig(resolve_tracking_uri(cfg.tracking.uri), cfg.tracking.experiment or name))


def from_dict(data: dict, name: str = "sweep") -> SweepConfig:
    """Parse and resolve a sweep from plain data; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the sweep YAML, got {type(data).__name__}")
    return resolve(parse(SweepConfig, data), name)


def load(path: str | os.PathLike) -> SweepConfig:
    """Parse and resolve the sweep YAML at `path` (its stem is the default name)."""
    return from_dict(load_yaml(path) or {}, Path(path).stem)


def as_data(cfg: SweepConfig) -> dict:
    """The sweep as plain data that `from_dict` reads back to the same config."""
    return {k: v for k, v in to_dict(cfg).items() if v is not None}


def dump(cfg: SweepConfig) -> str:
    """The resolved sweep as YAML (what `heist validate` prints and MLflow keeps as sweep.yaml)."""
    return yaml.safe_dump(as_data(cfg), sort_keys=False, default_flow_style=None, width=110)


# ------------------------------------------------------------------------------------------ resources
def bundles(cfg: SweepConfig) -> list[dict[str, float]]:
    """One trial's placement-group bundles: the trial process, its VictimService, its attacker workers."""
    from orchestrator.trial import trial_bundles

    trial = TrialConfig(victim=cfg.victim.at(), attacks=cfg.attacks, service=cfg.service, workers=cfg.workers)
    return trial_bundles(trial, driver=cfg.trial_resources)


def cluster_resources() -> dict[str, float]:
    """The running Ray cluster's resources, or this machine's CPUs and GPUs when Ray is not up."""
    import ray
    import torch

    if ray.is_initialized():
        return ray.cluster_resources()
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def plan(cfg: SweepConfig, cluster: dict[str, float]) -> tuple[SweepConfig, str | None]:
    """Fit the sweep to the cluster: CPU-only when it has no GPUs (returns that warning), and raise
    ConfigError when `search.max_concurrent` trials cannot be placed at once."""
    warning = None
    gpus = {"trial_resources": cfg.trial_resources, "service": cfg.service, "workers": cfg.workers}
    if not cluster.get("GPU") and any(r.num_gpus for r in gpus.values()):
        asked = ", ".join(f"{k}.num_gpus={r.num_gpus:g}" for k, r in gpus.items() if r.num_gpus)
        warning = f"the cluster has no GPUs: running on CPU ({asked} set to 0)"
        cfg = dataclasses.replace(cfg, **{k: dataclasses.replace(r, num_gpus=0.0) for k, r in gpus.items()})
    n = cfg.search.max_concurrent
    for res in ("CPU", "GPU"):
        per_trial, have = sum(b.get(res, 0.0) for b in bundles(cfg)), cluster.get(res, 0.0)
        if per_trial * n > have + 1e-9:
            fits = int(have / per_trial + 1e-9)
            raise ConfigError(f"search.max_concurrent: {n} trial(s) at a time need {n} × {per_trial:g} {res} "
                              f"(bundles {bundles(cfg)}), but the cluster has {have:g} {res}; "
                              + (f"at most {fits} fit" if fits else "not even one trial fits"))
    return cfg, warning


def summary(cfg: SweepConfig) -> str:
    """What the sweep will do, as YAML comments (printed under the resolved config by `heist validate`)."""
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in cfg.objectives)
    return "\n".join([
        f"# {cfg.num_samples} trials chosen by {cfg.search.algorithm} (sampler {cfg.search.sampler}), "
        f"up to {cfg.search.max_concurrent} at a time",
        f"# each trial reserves {bundles(cfg)} (trial process, VictimService, attacker workers)",
        f"# objectives: {objectives}; hypervolume reference point {cfg.reference_point}",
        f"# objective metrics: {', '.join(METRICS)}, and {'|'.join(PER_ATTACK_METRICS)}/<attack> for "
        f"attack keys {', '.join(a.key for a in cfg.attacks)}"]) + "\n"

"""Trial configuration: what one trial builds (victim, defense, service, attacks, benign client).

A trial config is plain data (a dict from YAML or from Ray Tune) parsed into typed dataclasses by
`trial_config(data)`, which reports every invalid field with its path before anything starts.
"""
from __future__ import annotations

import dataclasses

from workloads.attacks import AttackConfig
from workloads.config import ConfigError, above, parse, positive
from workloads.defenses import DefenseConfig
from workloads.victims import VictimConfig


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The VictimService actor: dynamic batching, input limits and resources."""

    max_batch: int = 2048          # images per served (merged) batch, across clients
    max_wait_ms: float = 2.0       # how long the batcher waits to fill a batch
    max_request: int = 4096        # largest batch one client may send
    max_queued: int = 16384        # images one client may have queued, not yet answered (back-pressure)
    forward_batch: int | None = None   # forward each served batch in chunks of this many images; 0 = in one
                                       # forward; None = auto (256 on CPU, where that is fastest; 0 on GPU)
    num_cpus: float = 1.0
    num_gpus: float = 0.0          # fractional GPUs allowed; 0 on CPU-only clusters
    log_chunk: int = 4096          # request-log rows kept in memory before they are written as a Parquet part
    explanations: bool = False     # serve `explain` (gradient explanations, charged per victim evaluation)
    explanation_noise: float = 0.0  # Gaussian noise on explanations, std = this x each explanation's RMS

    def __post_init__(self):
        positive("max_batch", self.max_batch)
        positive("explanation_noise", self.explanation_noise, 0)
        positive("max_request", self.max_request)
        positive("log_chunk", self.log_chunk)
        if self.max_queued < self.max_request:   # a request of max_request images could never be queued
            raise ConfigError(f"max_queued: expected >= max_request ({self.max_request}), got {self.max_queued!r}")
        if self.forward_batch is not None:
            positive("forward_batch", self.forward_batch, 0)
        positive("max_wait_ms", self.max_wait_ms, 0)


@dataclasses.dataclass(frozen=True)
class WorkerResources:
    """Resources each attacker worker / benign client actor asks for."""

    num_cpus: float = 0.25
    num_gpus: float = 0.0


@dataclasses.dataclass(frozen=True)
class BenignConfig:
    """The benign client that streams the test set through the defended API to measure utility."""

    batch: int = 256

    def __post_init__(self):
        positive("batch", self.batch)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    victim: VictimConfig = VictimConfig()
    defense: DefenseConfig = DefenseConfig()
    attacks: list[AttackConfig] = dataclasses.field(default_factory=lambda: [AttackConfig()])
    service: ServiceConfig = ServiceConfig()
    workers: WorkerResources = WorkerResources()
    benign: BenignConfig = BenignConfig()
    cache_dir: str | None = None   # victim cache; None = ~/.cache/heist/victims
    repeats: int = 1               # each attack runs this many times (seeds seed, seed+1, ...); metrics are means ± sd
    timeout_s: float = 3600.0      # the longest the trial waits for any one remote step (service start, a query
                                   # call, the benign pass, a ledger read) before it fails naming that step

    def __post_init__(self):
        positive("repeats", self.repeats)
        above("timeout_s", self.timeout_s)
        if not self.attacks:
            raise ConfigError("attacks: expected at least one attack")
        limit = self.service.max_request
        for field, size in ([(f"attacks[{i}].query_batch", a.query_batch) for i, a in enumerate(self.attacks)]
                            + [("benign.batch", self.benign.batch)]):
            if size > limit:  # every request of that client would be rejected
                raise ConfigError(f"{field}: {size} images per request exceeds service.max_request ({limit})")
        for i, a in enumerate(self.attacks):
            if a.surrogate.kind == "dataset" and a.surrogate.name == self.victim.dataset:
                raise ConfigError(f"attacks[{i}].surrogate.name: {a.surrogate.name!r} is the victim's own dataset, "
                                  f"whose train and test images would leak into the attacker's pool; use "
                                  f"surrogate.kind: split for its disjoint pool")
        from workloads.attacks import REGISTRY

        for i, a in enumerate(self.attacks):
            if REGISTRY[a.name].explanations and not self.service.explanations:
                raise ConfigError(f"service.explanations: attacks[{i}] ({a.name}) asks the victim for explanations; "
                                  f"set service.explanations: true")
        keys = [a.key for a in self.attacks]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"attacks: two attacks share the key {sorted(k for k in keys if keys.count(k) > 1)[0]!r};"
                              f" give one an `id`")


def trial_config(data: dict) -> TrialConfig:
    """Parse a trial config dict; raises ConfigError listing every invalid field with its path."""
    return parse(TrialConfig, data)

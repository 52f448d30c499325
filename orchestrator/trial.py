"""One trial: a (defended) victim served by a VictimService, a benign client, and the attacks.

`run_trial(cfg)` works from a plain driver (it starts Ray when needed) and inside a Ray Tune function
trial (its actors then land in the trial's placement group; `trial_bundles(cfg)` gives the bundles the
sweep layer should reserve). Every actor it creates is killed in a `finally:`.

`main(args)` is `heist trial X.yaml [--set key=value ...] [--json out.json]`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import ray

from orchestrator.attackers import BenignClient, RayQueryClient, spawn_attackers
from orchestrator.config import TrialConfig, WorkerResources, trial_config
from orchestrator.service import VictimSpec, service_actor

METRIC_ORDER = ("victim_accuracy", "defended_accuracy", "perturbation_l1", "defense_latency_ms",
                "stolen_accuracy", "fidelity", "relative_accuracy")


@dataclasses.dataclass
class TrialResult:
    """A trial's metrics (names as in DESIGN.md) and its per-request query ledger.

    Each ledger row is one answered request: client, kind, seq, images, queue_ms, compute_ms,
    served_batch_images, batch, t (from the service), plus `attack` (the attack key, or "benign") and
    `client_kind` ("attacker" / "benign").
    """

    metrics: dict[str, float]
    ledger: list[dict]
    info: dict = dataclasses.field(default_factory=dict)


def trial_bundles(cfg: TrialConfig, driver: WorkerResources = WorkerResources(num_cpus=1.0)) -> list[dict[str, float]]:
    """Placement-group bundles for one trial: the trial function (`driver`), the service, one per worker.

    Attacks run one after another and the benign client runs before them, so max(attack workers)
    worker bundles suffice. Use as `tune.PlacementGroupFactory(trial_bundles(cfg), strategy="PACK")`.
    """
    def bundle(cpus, gpus):
        return {k: v for k, v in (("CPU", float(cpus)), ("GPU", float(gpus))) if v > 0}

    n_workers = max(1, max(a.workers for a in cfg.attacks))
    return ([bundle(driver.num_cpus, driver.num_gpus)] + [bundle(cfg.service.num_cpus, cfg.service.num_gpus)]
            + [bundle(cfg.workers.num_cpus, cfg.workers.num_gpus)] * n_workers)


def check_resources(cfg: TrialConfig) -> None:
    """ConfigError naming the field when the Ray cluster can never hold an actor this trial asks for (an
    actor requesting a GPU on a GPU-less cluster would otherwise wait forever, silently). Skipped inside a
    placement group (a Tune trial), whose bundles were reserved up front."""
    from ray.util import get_current_placement_group

    from workloads.config import ConfigError

    if get_current_placement_group() is not None:
        return
    total = ray.cluster_resources()
    for field, res, amount in (("service.num_cpus", "CPU", cfg.service.num_cpus),
                               ("service.num_gpus", "GPU", cfg.service.num_gpus),
                               ("workers.num_cpus", "CPU", cfg.workers.num_cpus),
                               ("workers.num_gpus", "GPU", cfg.workers.num_gpus)):
        if amount > total.get(res, 0.0):
            raise ConfigError(f"{field}: {amount:g} {res} requested, but the Ray cluster has "
                              f"{total.get(res, 0.0):g} {res} in total")


def _kill(actors: list) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass
    actors.clear()


def run_trial(cfg: TrialConfig) -> TrialResult:
    """Run one trial end to end and return its metrics and query ledger."""
    import torch

    from workloads import metrics as M
    from workloads import ownership
    from workloads.attacks import VictimInfo, steal
    from workloads.data import surrogate_pool
    from workloads.training import predict_proba
    from workloads.victims import load_or_train

    t_start = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    check_resources(cfg)
    victim = load_or_train(cfg.victim, cfg.cache_dir)
    data = victim.data
    owned: list = []           # every actor this trial created, killed in `finally`
    try:
        spec = VictimSpec(cfg.victim.arch, data.shape, data.num_classes, config=cfg.victim, seed=cfg.victim.seed)
        service = service_actor(spec, ray.put(victim.model.state_dict()), cfg.defense, cfg.service)
        owned.append(service)
        info = {"service": ray.get(service.ready.remote())}
        kinds = {}

        # utility: the benign client streams the test set through the defended API
        x_test = data.x_test.numpy()
        ray.get(service.register.remote("benign", len(x_test), "benign"))
        kinds["benign"] = ("benign", "benign")
        benign = BenignClient.options(num_cpus=cfg.workers.num_cpus, num_gpus=cfg.workers.num_gpus).remote(
            service, "benign", cfg.benign.batch)
        owned.append(benign)
        defended, latencies = ray.get(benign.run.remote(x_test))
        _kill([owned.pop()])
        defended = torch.from_numpy(np.array(defended, dtype=np.float32))
        clean = predict_proba(victim.model, data.x_test)
        metrics: dict[str, float] = {
            "victim_accuracy": M.accuracy(clean, data.y_test),
            "defended_accuracy": M.accuracy(defended, data.y_test),
            "perturbation_l1": M.perturbation_l1(defended, clean),
        }
        metrics |= ownership.victim_metrics(victim, cfg.ownership, cfg.cache_dir)
        info["benign_latency_ms_mean"] = float(np.mean(latencies)) if latencies else 0.0

        # the attacks, one after another, each through its own workers
        vinfo = VictimInfo(data.shape, data.num_classes, cfg.victim.arch)
        for attack in cfg.attacks:
            key = attack.key
            pool = surrogate_pool(attack.surrogate.kind, data, name=attack.surrogate.name,
                                  size=attack.surrogate.size, seed=attack.seed, data_root=cfg.victim.data_root)
            workers, ids, budgets = spawn_attackers(
                service, key, attack.workers, attack.budget, query_batch=attack.query_batch,
                num_cpus=cfg.workers.num_cpus, num_gpus=cfg.workers.num_gpus)
            owned.extend(workers)
            kinds.update({cid: ("attacker", key) for cid in ids})
            substitute = steal(attack, RayQueryClient(workers, budgets), pool, vinfo)
            _kill([owned.pop() for _ in workers])
            sub_probs = predict_proba(substitute, data.x_test)
            ledger = ray.get(service.ledger.remote())
            metrics[f"stolen_accuracy/{key}"] = M.accuracy(sub_probs, data.y_test)
            metrics[f"fidelity/{key}"] = M.fidelity(sub_probs, clean)
            metrics[f"queries/{key}"] = float(sum(ledger[cid]["images"] for cid in ids))
            metrics |= ownership.suspect_metrics(victim, substitute, key, cfg.ownership, cfg.cache_dir)

        keys = [a.key for a in cfg.attacks]
        metrics["stolen_accuracy"] = max(metrics[f"stolen_accuracy/{k}"] for k in keys)
        metrics["fidelity"] = max(metrics[f"fidelity/{k}"] for k in keys)
        metrics["relative_accuracy"] = M.relative_accuracy(metrics["stolen_accuracy"], metrics["victim_accuracy"])
        metrics |= ownership.summary(metrics)
        stats = ray.get(service.stats.remote())
        metrics["defense_latency_ms"] = stats["defense_ms_mean"]
        info["service_stats"] = stats
        rows = ray.get(service.request_log.remote())
    finally:
        _kill(owned)
    for row in rows:
        row["client_kind"], row["attack"] = kinds.get(row["client"], (row.get("kind", ""), ""))
    info["seconds"] = time.perf_counter() - t_start
    info["victim_from_cache"] = victim.from_cache
    return TrialResult({k: float(v) for k, v in metrics.items()}, rows, info)


# ---------------------------------------------------------------------------------------------- CLI
SWEEP_KEYS = ("search", "objectives", "reference_point", "tracking", "defenses", "storage", "trial_resources")


def trial_dict(raw) -> dict:
    """The trial config of a YAML document: a trial YAML as it is, or a sweep YAML's first point
    (its first defense, each hyperparameter at its first value or lower bound)."""
    from orchestrator.cli import UserError
    from orchestrator.sweep_config import from_dict

    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping at the top of the YAML, got {type(raw).__name__}")
    if not any(k in raw for k in SWEEP_KEYS):
        return dict(raw)
    sweep = from_dict(raw)
    first = sweep.spaces[0]
    return sweep.base_trial() | {"defense": {"name": first.name, "params": first.example()}}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML; list items by index
    (`attacks.0.budget=500`)."""
    import yaml

    from workloads.config import ConfigError

    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {where}: expected a list index below {len(node)}")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node[idx] = node[idx] if isinstance(node[idx], (dict, list)) else {}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping or list")


def _format_table(metrics: dict[str, float]) -> str:
    order = [k for k in METRIC_ORDER if k in metrics] + sorted(k for k in metrics if k not in METRIC_ORDER)
    width = max(len(k) for k in order)
    lines = []
    for k in order:
        v = metrics[k]
        text = f"{v:.0f}" if k.startswith("queries/") and float(v).is_integer() else f"{v:.4f}"
        lines.append(f"{k:<{width}}  {text:>10}")
    return "\n".join(lines)


def main(args) -> int:
    """`heist trial CONFIG [--set k=v ...] [--json out.json]`."""
    import yaml

    from orchestrator.cli import UserError

    path = Path(args.config)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    data = trial_dict(raw)
    for assignment in getattr(args, "set", None) or []:
        apply_override(data, assignment)
    if data.get("cache_dir"):        # Tune trials chdir: make paths absolute now
        data["cache_dir"] = str(Path(data["cache_dir"]).expanduser().resolve())
    cfg = trial_config(data)
    started = not ray.is_initialized()
    try:
        result = run_trial(cfg)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    print(_format_table(result.metrics))
    if getattr(args, "json", None):
        out = {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
        Path(args.json).write_text(json.dumps({"metrics": out}, indent=2) + "\n")
    return 0

"""The undefended reference of a sweep: its victim answering with no defense, attacked once.

A defense's stolen accuracy means nothing on its own: an attack that never learns scores near chance
against any defense and makes every defense look strong. So every sweep first runs one trial with the
`none` defense (same victim, attacks and repeats) and

- keeps it in the victim cache, `<cache_dir>/<victim key>/undefended/<hash>.json`, keyed by a content
  hash of what decides its numbers (victim, attacks, repeats, benign client), so later sweeps of the
  same victim and attacks reuse it;
- logs it on the sweep's parent run as metrics `undefended/<metric>` (the frontier plot marks it);
- gives each trial `<metric>_vs_undefended` (and per attack `<metric>_vs_undefended/<attack>`): the
  trial's value minus the undefended one, e.g. stolen_accuracy_vs_undefended = -0.30 means the defense
  took 30 points of test accuracy from the thief;
- warns, one line per attack, when even the undefended thief stays near chance: then the sweep cannot
  tell a defense from a failed attack.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import ray

from orchestrator.errors import UserError

PREFIX = "undefended/"
RELATIVE = ("stolen_accuracy", "fidelity")          # metrics that get `<metric>_vs_undefended`
NEAR_CHANCE = 0.1    # an undefended thief that recovers < 10% of the way from chance to the victim has failed
VERSION = 1          # bumped whenever the same config would measure a different reference


@dataclasses.dataclass(frozen=True)
class Reference:
    """The undefended trial's metrics, the victim's number of classes, and where it is cached."""

    metrics: dict[str, float]
    num_classes: int
    path: str
    from_cache: bool = False

    def failed_attacks(self) -> dict[str, float]:
        """Attack key -> undefended stolen accuracy, for attacks that stay near chance even undefended."""
        chance, victim = 1.0 / self.num_classes, self.metrics["victim_accuracy"]
        keys = [k.split("/", 1)[1] for k in self.metrics if k.startswith("stolen_accuracy/")]
        return {k: self.metrics[f"stolen_accuracy/{k}"] for k in keys
                if self.metrics[f"stolen_accuracy/{k}"] - chance < NEAR_CHANCE * (victim - chance)}

    def warnings(self) -> list[str]:
        chance = 1.0 / self.num_classes
        return [f"the attack does not steal even undefended ({key}: stolen accuracy {acc:.4f}, chance {chance:.4f}, "
                f"victim {self.metrics['victim_accuracy']:.4f}): raise its budget or training"
                for key, acc in self.failed_attacks().items()]


def key(base_trial: dict) -> str:
    """Content hash of what decides the undefended numbers (not resources, batching or the cache path)."""
    from workloads.config import parse
    from workloads.victims import VictimConfig

    spec = {"victim": parse(VictimConfig, base_trial["victim"]).key, "attacks": base_trial["attacks"],
            "repeats": base_trial["repeats"], "benign": base_trial["benign"], "version": VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(base_trial: dict) -> Path:
    from workloads.config import parse
    from workloads.victims import DEFAULT_CACHE, VictimConfig

    victim = parse(VictimConfig, base_trial["victim"]).key
    return Path(base_trial.get("cache_dir") or DEFAULT_CACHE) / victim / "undefended" / f"{key(base_trial)}.json"


@ray.remote
def _undefended_trial(base_trial: dict) -> tuple[dict, int]:
    from orchestrator.config import trial_config
    from orchestrator.trial import run_trial

    cfg = trial_config({**base_trial, "defense": {"name": "none", "params": {}}})
    result = run_trial(cfg)
    return result.metrics, cfg.victim.load_data().num_classes


def undefended(base_trial: dict, num_cpus: float = 1.0, num_gpus: float = 0.0) -> Reference:
    """The undefended reference of trials sharing `base_trial` (SweepConfig.base_trial()): from the cache, or
    measured now by one `none`-defense trial in a Ray task with the given resources, then cached."""
    path = cache_path(base_trial)
    if path.is_file():
        data = json.loads(path.read_text())
        return Reference(data["metrics"], data["num_classes"], str(path), from_cache=True)
    try:
        metrics, num_classes = ray.get(_undefended_trial.options(num_cpus=num_cpus, num_gpus=num_gpus)
                                       .remote(base_trial))
    except ray.exceptions.RayTaskError as e:
        raise UserError(f"the undefended reference trial failed: {e.cause}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump({"metrics": metrics, "num_classes": num_classes, "trial": base_trial | {"defense": "none"}}, f,
                  indent=2)
    os.replace(f.name, path)
    return Reference(metrics, num_classes, str(path))


def relative(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """`<metric>_vs_undefended[/<attack>]` = the trial's value minus the undefended one, for RELATIVE metrics."""
    out = {}
    for name, value in metrics.items():
        metric, _, attack = name.partition("/")
        if metric in RELATIVE and name in reference:
            out[f"{metric}_vs_undefended" + (f"/{attack}" if attack else "")] = value - reference[name]
    return out


def log(uri: str, run_id: str, reference: Reference) -> None:
    """The reference on the sweep's parent run: metrics `undefended/<metric>` and tag `heist.undefended`."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(uri)

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(PREFIX + k, float(v), now, 0) for k, v in reference.metrics.items()
                                      if not k.startswith("victim_training/")],
                     tags=[RunTag("heist.undefended", reference.path)])


def from_run(run) -> dict[str, float]:
    """The reference's metrics from a parent run (empty when the sweep has none)."""
    return {k[len(PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}


def summary(reference: Reference, metrics: list[str]) -> str:
    """One line: the undefended point in the sweep's objectives, and where it came from."""
    shown = ", ".join(f"{m}={reference.metrics[m]:.4f}" for m in metrics if m in reference.metrics)
    return f"undefended reference: {shown}" + (" (cached)" if reference.from_cache else "")

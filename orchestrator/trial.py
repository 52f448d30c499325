"""One trial: a (defended) victim served by a VictimService, a benign client, and the attacks.

`run_trial(cfg)` works from a plain driver (it starts Ray when needed) and inside a Ray Tune function
trial (its actors then land in the trial's placement group; `trial_bundles(cfg)` gives the bundles the
sweep layer should reserve). Its actors are a `TrialActors`: without one given, a fresh set killed when the
trial ends; a sweep's trial process keeps one from trial to trial (same results, no new processes).

`main(args)` is `heist trial X.yaml [--set key=value ...] [--json out.json]`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError

from orchestrator import ledger as request_logs
from orchestrator import pow_gate
from orchestrator.attackers import RayQueryClient, register_attackers, start_workers
from orchestrator.config import TrialConfig, WorkerResources, trial_config
from orchestrator.service import VictimSpec, service_actor
from orchestrator.trial_progress import TrialProgress
from orchestrator.waits import TimedOut, wait_for

METRIC_ORDER = ("victim_accuracy", "defended_accuracy", "perturbation_l1", "perturbation_l1_attacker",
                "defense_latency_us", "stolen_accuracy", "stolen_accuracy_std", "fidelity", "fidelity_std",
                "agreement", "relative_accuracy", "relative_accuracy_std")
# Measured per attack run and aggregated over repeats as `<name>/<attack>` (mean) and `<name>_std/<attack>`.
RUN_METRICS = ("stolen_accuracy", "fidelity", "agreement")


class TrialFailed(RuntimeError):
    """The trial could not finish: a remote step timed out or an actor it needs died; the message says which."""


@dataclasses.dataclass
class TrialResult:
    """A trial's metrics (names as in docs/DESIGN.md), its per-request query ledger, one row per attack run and the
    budget curves.

    Each ledger row is one answered request: client, kind, seq, images, l1, queue_ms, compute_ms,
    served_batch_images, batch, t, ts (from the service), plus `attack` (the attack key, or "benign"),
    `repeat` and `client_kind` ("attacker" / "benign"). When run_trial was given a `ledger_dir` the rows are
    the Parquet parts there (`ledger` reads them on demand); else they are held in `ledger_rows`. `runs` has
    one row per (attack, repeat): seed, queries, stolen_accuracy, fidelity, agreement, perturbation_l1 (on that
    run's queries). `curves` has one row per budget checkpoint of an attack run: attack, repeat, checkpoint,
    queries, stolen_accuracy, fidelity.
    """

    metrics: dict[str, float]
    ledger_rows: list[dict] | None = None
    info: dict = dataclasses.field(default_factory=dict)
    runs: list[dict] = dataclasses.field(default_factory=list)
    curves: list[dict] = dataclasses.field(default_factory=list)
    ledger_dir: str | None = None

    @property
    def ledger(self) -> list[dict]:
        return request_logs.read(self.ledger_dir) if self.ledger_rows is None else self.ledger_rows


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


def _failure(err: RayActorError, service, what: str) -> TrialFailed:
    """The one-line reason a trial step failed because an actor died: the victim service (whose ledger dies
    with it) or a client worker that died more often than Ray restarts it."""
    try:
        ray.get(service.ready.remote(), timeout=10)
        alive = True
    except Exception:   # dead, or not answering within 10 s
        alive = False
    cause = str(getattr(err, "cause", None) or err).strip().splitlines()[0]
    if not alive:
        return TrialFailed(f"{what}: the victim service died ({cause}); the trial stops (the ledger was in the "
                           f"service's memory)")
    return TrialFailed(f"{what}: a client worker died and could not be restarted ({cause})")


def _kill(actors: list) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass
    actors.clear()


class TrialActors:
    """What trials run on, kept from one trial to the next of a process (a sweep's trial process, which Tune
    reuses from trial to trial): the victim and its clean test-set posteriors (computed once per victim), one
    VictimService per victim — `reset` for each trial with the trial's defense, gate and request log, so it
    answers as a freshly started one — and attacker workers, each call bound to the client it streams as
    (the first one also streams the benign pass). A trial whose victim, service or worker settings differ
    replaces the service and workers. `close()` kills the actors; a failed trial closes them."""

    def __init__(self):
        self.victim = self.clean = self.victim_key = None
        self.service = self.owner = self.service_key = None
        self.workers: list = []

    def victim_for(self, cfg: TrialConfig):
        """(victim, clean test-set posteriors) of cfg.victim, loaded (or trained) once."""
        from workloads.training import predict_proba
        from workloads.victims import load_or_train

        key = (cfg.victim.key, cfg.victim.data_root, cfg.cache_dir)
        if key != self.victim_key:
            victim = load_or_train(cfg.victim, cfg.cache_dir)
            self.victim, self.clean, self.victim_key = victim, predict_proba(victim.model, victim.data.x_test), key
        return self.victim, self.clean

    def service_for(self, cfg: TrialConfig, victim, gate, log_dir: str) -> dict:
        """The trial's service, reset (same victim and settings) or started; returns its `ready()` interface."""
        key = (self.victim_key, cfg.service, cfg.workers, cfg.timeout_s)
        if key == self.service_key:
            return wait_for(self.service.reset.remote(self.owner, cfg.defense, gate, log_dir),
                            "the victim service to reset for this trial", cfg.timeout_s)
        self.close()
        data = victim.data
        spec = VictimSpec(cfg.victim.arch, data.shape, data.num_classes, config=cfg.victim, seed=cfg.victim.seed)
        self.service, self.owner = service_actor(spec, ray.put(victim.model.state_dict()), cfg.defense, cfg.service,
                                                 gate=gate, log_dir=log_dir)
        self.service_key = key
        return wait_for(self.service.ready.remote(), "the victim service to start (ready)", cfg.timeout_s)

    def workers_for(self, cfg: TrialConfig, clients: list[tuple]) -> list:
        """One worker per client binding: the running ones, plus new ones started with the rest."""
        if len(clients) > len(self.workers):
            self.workers += start_workers(self.service, clients[len(self.workers):], num_cpus=cfg.workers.num_cpus,
                                          num_gpus=cfg.workers.num_gpus, timeout_s=cfg.timeout_s)
        return self.workers[:len(clients)]

    def close(self) -> None:
        _kill(self.workers)
        _kill([a for a in (self.service,) if a is not None])
        self.service = self.owner = self.service_key = None


class Evaluation:
    """Scores substitutes on the victim's test set: against the labels, the clean victim and its defended answers."""

    def __init__(self, x_test, y_test, clean, defended):
        self.x_test, self.y_test, self.clean, self.defended = x_test, y_test, clean, defended

    def __call__(self, substitute) -> dict[str, float]:
        from workloads import metrics as M
        from workloads.training import predict_proba

        training = substitute.training
        probs = predict_proba(substitute, self.x_test)
        substitute.train(training)          # an online attack goes on training after a checkpoint
        return {"stolen_accuracy": M.accuracy(probs, self.y_test),
                "fidelity": M.fidelity(probs, self.clean),          # vs the clean victim
                "agreement": M.fidelity(probs, self.defended)}      # vs the defended answers (DCP's "agreement")


def _curve_recorder(checkpoints: list[int], evaluate: Evaluation, rows: list[dict], key: str, repeat: int):
    """The `checkpoint(queries, substitute)` callback of one attack run: evaluates the substitute the first time
    the queries reach each configured checkpoint (a no-op in between, so attacks may call it often)."""
    pending = list(checkpoints)

    def checkpoint(queries: int, substitute) -> None:
        reached = [c for c in pending if queries >= c]
        if not reached:
            return
        scores = evaluate(substitute)
        for c in reached:
            pending.remove(c)
            rows.append({"attack": key, "repeat": repeat, "checkpoint": c, "queries": int(queries),
                         "stolen_accuracy": scores["stolen_accuracy"], "fidelity": scores["fidelity"]})

    return checkpoint


def _check_pool(index: int, attack, pool_size: int) -> None:
    """The attack's pool-size checks, with the error naming `attacks[index].<field>`."""
    from workloads.attacks import check_pool
    from workloads.config import ConfigError

    try:
        check_pool(attack, pool_size)
    except ConfigError as e:
        raise ConfigError([f"attacks[{index}].{m}" for m in e.errors]) from None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def aggregate(runs: list[dict], keys: list[str], victim_accuracy: float) -> dict[str, float]:
    """Per-attack means (and sample sds over repeats) of every run metric; the trial's figures are those of the
    strongest attack (highest mean), with its sd beside them."""
    from workloads import metrics as M

    out: dict[str, float] = {}
    for key in keys:
        mine = [r for r in runs if r["attack"] == key]
        for name in [k for k in mine[0] if k not in ("attack", "repeat", "seed")]:   # + the ownership ones
            mean, std = _mean_std([r[name] for r in mine])
            out[f"{name}/{key}"] = mean
            if std is not None and name != "queries":
                out[f"{name}_std/{key}"] = std
    for name in RUN_METRICS:
        best = max(keys, key=lambda k: out[f"{name}/{k}"])
        out[name] = out[f"{name}/{best}"]
        if f"{name}_std/{best}" in out:
            out[f"{name}_std"] = out[f"{name}_std/{best}"]
    out["relative_accuracy"] = M.relative_accuracy(out["stolen_accuracy"], victim_accuracy)
    if "stolen_accuracy_std" in out:
        out["relative_accuracy_std"] = M.relative_accuracy(out["stolen_accuracy_std"], victim_accuracy)
    return out


def run_trial(cfg: TrialConfig, ledger_dir: str | Path | None = None, actors: TrialActors | None = None,
              progress: TrialProgress | None = None) -> TrialResult:
    """Run one trial end to end and return its metrics, query ledger, attack runs and budget curves.

    Each attack runs `cfg.repeats` times against the same service; repeat r uses attack seed `seed + r`,
    from which every random stream of that run (query sampling, substitute init and batch order) derives.
    The service streams the request log to `ledger_dir` as Parquet parts (a temporary directory, read back
    into `TrialResult.ledger_rows`, when None). Every remote step waits at most `cfg.timeout_s`; a step that
    times out or loses an actor raises TrialFailed naming the step. `progress` shows the phases as they run.

    `actors` (a TrialActors) are kept for the next trial when the trial succeeds (and closed when it fails);
    without them the trial starts its own and kills them at the end. The results are the same either way.
    """
    own = actors is None
    actors = actors or TrialActors()
    progress = progress or TrialProgress()
    try:
        if ledger_dir is not None:
            return _run_trial(cfg, Path(ledger_dir), actors, progress)
        with tempfile.TemporaryDirectory(prefix="heist-ledger-") as tmp:
            result = _run_trial(cfg, Path(tmp), actors, progress)
            result.ledger_rows, result.ledger_dir, result.info["ledger_dir"] = result.ledger, None, None
            return result
    except BaseException:
        actors.close()
        raise
    finally:
        if own:
            actors.close()


def _run_trial(cfg: TrialConfig, ledger_dir: Path, actors: TrialActors, progress: TrialProgress) -> TrialResult:
    import torch

    from workloads import metrics as M
    from workloads import ownership
    from workloads.attacks import VictimInfo, steal
    from workloads.data import labelled_surrogate_pool

    t_start = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    check_resources(cfg)
    with progress.phase("victim") as phase:
        victim, clean = actors.victim_for(cfg)
        phase.note = (f"{cfg.victim.dataset} {cfg.victim.arch}, "
                      + ("from the cache" if victim.from_cache else "trained and cached"))
    data = victim.data
    timeout = cfg.timeout_s

    def pool_of(run):
        s = run.surrogate
        return labelled_surrogate_pool(s.kind, data, name=s.name, size=s.size, seed=run.seed,
                                       data_root=cfg.victim.data_root)

    for i, attack in enumerate(cfg.attacks):      # pool sizes do not depend on the seed: check before any actor
        _check_pool(i, attack, len(pool_of(attack)[0]))
    runs: list[dict] = []
    curves: list[dict] = []
    gate, leakage = pow_gate.setup(cfg, victim)      # calibrated proof of work when the defense is `pow`
    client_stats: dict[str, dict] = {}
    pow_clients: dict[str, list[str]] = {"benign": ["benign"]}
    step, service = "starting the victim service", None
    try:
        served = actors.service_for(cfg, victim, gate, str(ledger_dir))
        service, owner = actors.service, actors.owner
        info = {"service": served, "victim_training": victim.training, "ledger_dir": str(ledger_dir)}
        attackers: list[str] = []

        # utility: the benign client streams the test set through the defended API
        step = "the benign pass"
        x_test = data.x_test.numpy()
        benign_key = wait_for(service.register.remote(owner, "benign", len(x_test), "benign",
                                                      {"client_kind": "benign", "attack": "benign", "repeat": 0}),
                              "the service to register the benign client", timeout)
        benign_client = ("benign", benign_key, cfg.benign.batch, 1)
        benign = actors.workers_for(cfg, [benign_client])[0]
        with progress.phase("benign pass") as phase:
            phase.note = f"{len(x_test):,} test images"
            defended, latencies = wait_for(benign.run.remote(x_test, 0, benign_client),
                                           "the benign client to stream the test set", timeout)
        client_stats["benign"] = ray.get(benign.stats.remote())
        defended = torch.from_numpy(np.array(defended, dtype=np.float32))
        metrics: dict[str, float] = {
            "victim_accuracy": M.accuracy(clean, data.y_test),
            "defended_accuracy": M.accuracy(defended, data.y_test),
            "perturbation_l1": M.perturbation_l1(defended, clean),
        }
        metrics.update({f"victim_training/{k}": float(v) for k, v in victim.training.items()})
        metrics |= ownership.victim_metrics(victim, cfg.ownership, cfg.cache_dir)
        info["benign_latency_ms_mean"] = float(np.mean(latencies)) if latencies else 0.0
        evaluate = Evaluation(data.x_test, data.y_test, clean, defended)

        # the attacks, one after another, each repeat through its own workers
        vinfo = VictimInfo(data.shape, data.num_classes, cfg.victim.arch, tuple(served["input_range"]),
                           leakage=leakage)
        for attack in cfg.attacks:
            key = attack.key
            for repeat in range(cfg.repeats):
                step = f"attack {key!r} repeat {repeat}"
                run = dataclasses.replace(attack, seed=attack.seed + repeat)
                pool, pool_labels = pool_of(run)
                clients, ids, budgets = register_attackers(
                    service, owner, f"{key}/r{repeat}", run.workers, run.budget, query_batch=run.query_batch,
                    max_in_flight=max(1, min(4, cfg.service.max_queued // run.query_batch)),
                    tags={"client_kind": "attacker", "attack": key, "repeat": repeat}, timeout_s=timeout)
                attackers.extend(ids)
                client = RayQueryClient(actors.workers_for(cfg, clients), budgets, timeout, clients)
                checkpoint = _curve_recorder(run.checkpoints, evaluate, curves, key, repeat) if run.checkpoints else None
                with progress.phase(f"attack {key} r{repeat}", client):
                    substitute = steal(run, client, pool, vinfo, checkpoint, pool_labels)
                client_stats |= dict(zip(ids, client.stats()))
                pow_clients.setdefault(key, []).extend(ids)
                ledger = wait_for(service.ledger.remote(owner), "the service's ledger", timeout)
                images = sum(ledger[cid]["images"] for cid in ids)
                runs.append({"attack": key, "repeat": repeat, "seed": run.seed, "queries": float(images),
                             "perturbation_l1": sum(ledger[cid]["l1"] for cid in ids) / max(images, 1),
                             **evaluate(substitute),
                             **ownership.suspect_metrics(victim, substitute, cfg.ownership, cfg.cache_dir)})

        step = "reading the service's ledger and stats"
        metrics.update(aggregate(runs, [a.key for a in cfg.attacks], metrics["victim_accuracy"]))
        metrics |= ownership.summary(metrics)
        ledger = wait_for(service.ledger.remote(owner), "the service's ledger", timeout)
        metrics["perturbation_l1_attacker"] = (sum(ledger[c]["l1"] for c in attackers)
                                               / max(1, sum(ledger[c]["images"] for c in attackers)))
        stats = wait_for(service.stats.remote(owner), "the service's stats", timeout)
        metrics["defense_latency_us"] = stats["defense_us_per_image"]
        info["service_stats"] = stats
        if gate is not None:
            metrics |= pow_gate.trial_metrics(gate.params.mode, ledger, client_stats, pow_clients)
            info["pow_log"] = {c: ledger[c]["pow_log"] for cs in pow_clients.values() for c in cs if c in ledger}
        wait_for(service.flush_log.remote(owner), "the service to write its request log", timeout)
    except RayActorError as e:
        raise _failure(e, service, step) from e
    except TimedOut as e:
        raise TrialFailed(f"{step}: {e}") from e
    info["seconds"] = time.perf_counter() - t_start
    info["victim_from_cache"] = victim.from_cache
    return TrialResult({k: float(v) for k, v in metrics.items()}, None, info, runs, curves, str(ledger_dir))


# ---------------------------------------------------------------------------------------------- CLI
SWEEP_KEYS = ("search", "objectives", "reference_point", "tracking", "defenses", "storage", "trial_resources")


def trial_dict(raw, defense: str | None = None) -> dict:
    """The trial config of a YAML document: a trial YAML as it is, or a sweep YAML's first point
    (its first defense, each hyperparameter at its first value or lower bound).

    `defense` (from `--set defense.name=X`) picks that defense instead: a sweep's point of it when the sweep
    searches it, else X with its own defaults — the file's hyperparameters belong to another defense."""
    from orchestrator.errors import UserError
    from orchestrator.sweep_config import from_dict

    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping at the top of the YAML, got {type(raw).__name__}")
    if not any(k in raw for k in SWEEP_KEYS):
        data = dict(raw)
        if defense is not None and (data.get("defense") or {}).get("name", "none") != defense:
            data["defense"] = {"name": defense, "params": {}}
        return data
    sweep = from_dict(raw)
    spaces = {sp.name: sp for sp in sweep.spaces}
    space = spaces.get(defense) if defense is not None else sweep.spaces[0]
    point = {"name": space.name, "params": space.example()} if space else {"name": defense, "params": {}}
    return sweep.base_trial() | {"defense": point}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML; list items by index
    (`attacks.0.budget=500`)."""
    from workloads.config import ConfigError, parse_yaml

    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    value = parse_yaml(text, f"--set {key.strip()}") if text.strip() else None
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
    """Metrics one per line; a metric with a `_std` companion is printed as mean ± sd."""
    def std_of(k: str) -> str:
        name, _, attack = k.partition("/")
        return f"{name}_std/{attack}" if attack else f"{name}_std"

    shown = [k for k in metrics if not k.split("/")[0].endswith("_std")]
    order = [k for k in METRIC_ORDER if k in shown] + sorted(k for k in shown if k not in METRIC_ORDER)
    width = max(len(k) for k in order)
    lines = []
    for k in order:
        v = metrics[k]
        text = f"{v:.0f}" if k.startswith("queries/") and float(v).is_integer() else f"{v:.4f}"
        if std_of(k) in metrics:
            text += f" ± {metrics[std_of(k)]:.4f}"
        lines.append(f"{k:<{width}}  {text:>10}")
    return "\n".join(lines)


def load_trial(path, overrides=()) -> TrialConfig:
    """The trial config of a trial or sweep YAML with `--set KEY=VALUE` overrides applied."""
    from workloads.config import load_yaml

    names = [a.partition("=")[2].strip() for a in overrides if a.partition("=")[0].strip() == "defense.name"]
    data = trial_dict(load_yaml(path) or {}, names[-1] if names else None)
    for assignment in overrides:
        apply_override(data, assignment)
    if data.get("cache_dir"):        # Tune trials chdir: make paths absolute now
        data["cache_dir"] = str(Path(data["cache_dir"]).expanduser().resolve())
    return trial_config(data)


def main(args) -> int:
    """`heist trial CONFIG [--set k=v ...] [--json out.json]`."""
    cfg = load_trial(args.config, getattr(args, "set", None) or [])
    started = not ray.is_initialized()
    try:
        result = run_trial(cfg, progress=TrialProgress(sys.stderr))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    print(_format_table(result.metrics))
    if cfg.repeats > 1:
        print(f"(mean ± sample sd over {cfg.repeats} attack seeds)")
    if getattr(args, "json", None):
        out = {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
        Path(args.json).write_text(json.dumps({"metrics": out, "runs": result.runs, "curves": result.curves,
                                               "victim_training": result.info["victim_training"]}, indent=2) + "\n")
    return 0

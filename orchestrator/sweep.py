"""A sweep: Ray Tune trials chosen by Optuna, logged to MLflow, summarised as a Pareto frontier.

`run(cfg)` checks the tracking store and the cluster's capacity, trains the victim once (into the
content-addressed cache every trial then loads), opens the MLflow parent run and runs a Tune `Tuner`:
each trial is `run_trial` on one defense point, in a placement group sized for its VictimService and
attacker workers; a driver-side callback logs each finished trial as a child run. `resume(target)`
continues an interrupted sweep with `Tuner.restore`. Both end by printing the frontier table.

A sweep's directory `<storage>/<sweep id>/` holds Tune's experiment state, `heist.json` (the resolved
config and the MLflow parent run), `optuna.db` (the Optuna study) and `ledgers/<trial id>.parquet`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS

from orchestrator import ledger
from orchestrator.errors import UserError
from orchestrator.config import trial_config
from orchestrator.sweep_config import DEFAULT_STORAGE, SearchSpace, SweepConfig, as_data, bundles, from_dict, plan
from orchestrator.tracking import Tracker, check_reachable, print_frontier
from workloads.config import ConfigError, to_dict

STATE_FILE = "heist.json"
# What Tune adds to every reported result; the rest of a result is the trial's metrics.
TUNE_KEYS = set(AUTO_RESULT_KEYS) | set(DEBUG_METRICS) | {"done", "training_iteration", "experiment_tag",
                                                          "should_checkpoint", "time_this_iter_s"}


# ---------------------------------------------------------------------------------------- the trials
def defense_trial(config: dict, base: dict, ledgers: str, sweep_id: str) -> None:
    """Tune function trainable: one trial on the defense point Optuna chose; reports its metrics."""
    from orchestrator.trial import run_trial

    result = run_trial(trial_config({**base, "defense": config["defense"]}))
    trial_id = tune.get_context().get_trial_id()
    ledger.write(result.ledger, Path(ledgers) / f"{trial_id}.parquet", sweep_id=sweep_id, trial_id=trial_id)
    for name, rows in (("runs", result.runs), ("curves", result.curves)):
        if rows:
            ledger.write(rows, Path(ledgers).parent / name / f"{trial_id}.parquet", sweep_id=sweep_id, trial_id=trial_id)
    tune.report(result.metrics)


def trainable(cfg: SweepConfig, sweep_dir: Path, sweep_id: str):
    fn = tune.with_parameters(defense_trial, base=cfg.base_trial(), ledgers=str(sweep_dir / "ledgers"),
                              sweep_id=sweep_id)
    return tune.with_resources(fn, tune.PlacementGroupFactory(bundles(cfg), strategy="PACK"))


class TrackingCallback(tune.Callback):
    """Logs each finished trial to MLflow from the driver (one writer for a sqlite store)."""

    def __init__(self, tracker: Tracker, sweep_dir: Path, label_keys: dict[str, list[str]]):
        self.tracker, self.sweep_dir, self.label_keys = tracker, sweep_dir, label_keys

    def _log(self, trial, failed: bool) -> None:
        metrics = {k: v for k, v in (trial.last_result or {}).items()
                   if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        defense = trial.config["defense"]
        files = {name: self.sweep_dir / name / f"{trial.trial_id}.parquet" for name in ("ledgers", "runs", "curves")}
        self.tracker.log_trial(trial.trial_id, defense, metrics, files, failed=failed,
                               label_keys=self.label_keys[defense["name"]])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._log(trial, failed=True)


def searcher(cfg: SweepConfig, sweep_dir: Path, sweep_id: str):
    """OptunaSearch over the sweep's define-by-run space, its study kept in <sweep dir>/optuna.db."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space, seed = SearchSpace(cfg), cfg.search.seed
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "grid": lambda: optuna.samplers.GridSampler(space.grid_space(), seed=seed)}[cfg.search.sampler]()
    multi = len(cfg.objectives) > 1
    return OptunaSearch(space=space, metric=cfg.metrics if multi else cfg.metrics[0],
                        mode=cfg.modes if multi else cfg.modes[0], points_to_evaluate=cfg.optuna_points() or None,
                        sampler=sampler, study_name=sweep_id,
                        storage=optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}"))


@ray.remote
def _train_victim(victim: dict, cache_dir: str) -> float:
    from workloads.config import parse
    from workloads.victims import VictimConfig, load_or_train

    return load_or_train(parse(VictimConfig, victim), cache_dir).accuracy


def _victim_accuracy(cfg: SweepConfig) -> float:
    """Train the victim into the cache once, before any trial (on a worker with a trial's resources)."""
    task = _train_victim.options(num_cpus=cfg.trial_resources.num_cpus, num_gpus=cfg.trial_resources.num_gpus)
    try:
        return ray.get(task.remote(to_dict(cfg.victim), cfg.cache_dir))
    except ray.exceptions.RayTaskError as e:      # e.g. a dataset that is not there
        raise UserError(f"training the victim failed: {e.cause}") from None


# ---------------------------------------------------------------------------------------- run/resume
def _start_ray(cfg: SweepConfig) -> tuple[SweepConfig, bool]:
    """Connect to Ray (RAY_ADDRESS / a running cluster / a new local one) and fit the sweep to it."""
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        cfg, warning = plan(cfg, ray.cluster_resources())
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    if warning:
        print(f"heist: warning: {warning}", file=sys.stderr)
    return cfg, started


def _finish(cfg: SweepConfig, tracker: Tracker, sweep_dir: Path) -> int:
    logged = len(tracker.trial_runs())
    if logged < cfg.num_samples:
        tracker.set_status("KILLED")
        print(f"\nsweep {tracker.sweep_id} interrupted after {logged} of {cfg.num_samples} trials; "
              f"continue it with:\n  heist resume {sweep_dir}")
        return 130
    report = tracker.report_frontier(cfg)
    tracker.set_status("FINISHED")
    print_frontier(cfg, tracker, report)
    return 0


def run(cfg: SweepConfig) -> int:
    """Run sweep `cfg` (already validated and resolved) to the end; returns the exit code."""
    check_reachable(cfg.tracking.uri)
    cfg, started = _start_ray(cfg)
    try:
        acc = _victim_accuracy(cfg)
        sweep_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        sweep_dir = Path(cfg.storage) / sweep_id
        sweep_dir.mkdir(parents=True)
        tracker = Tracker.start(cfg, sweep_id, sweep_dir)
        (sweep_dir / STATE_FILE).write_text(json.dumps(
            {"config": as_data(cfg), "tracker": dataclasses.asdict(tracker)}, indent=2))
        print(f"sweep {sweep_id}: {cfg.num_samples} trials ({cfg.search.sampler}), up to "
              f"{cfg.search.max_concurrent} at a time, each {bundles(cfg)}; victim accuracy {acc:.4f}\n"
              f"  directory {sweep_dir}\n  MLflow {cfg.tracking.uri} experiment {cfg.tracking.experiment!r} "
              f"run {tracker.parent_run_id}", flush=True)
        return _fit(cfg, tracker, sweep_dir, tune.Tuner(
            trainable(cfg, sweep_dir, sweep_id),
            tune_config=tune.TuneConfig(search_alg=searcher(cfg, sweep_dir, sweep_id), num_samples=cfg.num_samples,
                                        max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=sweep_id, storage_path=cfg.storage, failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[TrackingCallback(tracker, sweep_dir, {sp.name: list(sp.searched) for sp in cfg.spaces})])))
    finally:
        if started:
            ray.shutdown()


def _fit(cfg: SweepConfig, tracker: Tracker, sweep_dir: Path, tuner) -> int:
    try:
        tuner.fit()
    except KeyboardInterrupt:     # a second Ctrl-C: Tune kept its state, `heist resume` continues
        tracker.set_status("KILLED")
        raise
    except Exception:
        tracker.set_status("FAILED")
        raise
    return _finish(cfg, tracker, sweep_dir)


def locate(target: str) -> Path:
    """A sweep directory: `target` itself, or `<storage>/<target>`, or the latest `<storage>/<target>-*`."""
    storage = Path(os.environ.get("HEIST_STORAGE") or DEFAULT_STORAGE).resolve()
    named = [storage / target, *sorted(storage.glob(f"{target}-*"), reverse=True)] if "/" not in target else []
    for path in [Path(target), *named]:
        if (path / STATE_FILE).is_file():
            return path.resolve()
    raise UserError(f"no sweep {target!r} (looked for {STATE_FILE} in {target} and under {storage}); "
                    f"give the sweep directory `heist run` printed")


def resume(target: str) -> int:
    """Continue the interrupted sweep `target` (a directory or a sweep name/id); returns the exit code."""
    sweep_dir = locate(target)
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    cfg, tracker = from_dict(state["config"]), Tracker(**state["tracker"])
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise UserError(f"{sweep_dir} holds no Tune experiment state to resume")
    check_reachable(tracker.uri)
    cfg, started = _start_ray(cfg)
    try:
        print(f"resuming sweep {tracker.sweep_id}: {len(tracker.trial_runs())} of {cfg.num_samples} trials logged")
        tracker.set_status("RUNNING")
        return _fit(cfg, tracker, sweep_dir,
                    tune.Tuner.restore(str(sweep_dir), trainable(cfg, sweep_dir, tracker.sweep_id)))
    finally:
        if started:
            ray.shutdown()

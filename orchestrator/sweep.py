"""A sweep: Ray Tune trials chosen by Optuna, logged to MLflow, summarised as a Pareto frontier.

`run(cfg)` checks the tracking store, the cluster's capacity and that the sweep can write where it must,
trains the victim once (into the content-addressed cache every trial then loads), opens the MLflow parent
run and runs a Tune `Tuner`: each trial is `run_trial` on one defense point, in a placement group sized for
its VictimService and attacker workers; a driver-side callback logs each finished trial as a child run.
Both end by printing the frontier table.

A sweep's directory `<storage>/<sweep id>/` holds `heist.json` (the resolved config and the MLflow parent
run), `optuna.db` (the Optuna study), `results/<trial id>.json` (each finished trial's record: its defense
point, Optuna trial number, status, metrics or failure reason), `ledgers|runs|curves/<trial id>.parquet`
and Tune's own state under `tune/`. Every file is written atomically, and a trial's record last, after its
Parquet files: the records are the truth. MLflow is a copy of them, made by the driver as trials finish;
when the tracking store fails (a dead server), the driver warns once, goes on without it, and
`heist sync` (or `heist resume`) logs what is missing once the store is back, each trial exactly once.

`resume(target)` continues an interrupted sweep whatever the moment of the interruption (Ctrl-C, SIGTERM,
SIGKILL of the driver): it logs the records MLflow lacks, tells the Optuna study the results of trials it
lost track of and queues again the points of trials that were running with no record, then runs the
missing number of trials in a fresh Tune experiment over the same study.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ray
from ray import tune

from orchestrator import ledger, progress
from orchestrator import undefended as reference_trial
from orchestrator.errors import UserError
from orchestrator.config import trial_config
from orchestrator.sweep_config import (DEFAULT_STORAGE, HARDENING_PREFIX, SearchSpace, SweepConfig, as_data, bundles,
                                       from_dict, plan, trial_data)
from orchestrator.tracking import Tracker, check_reachable, print_frontier
from workloads.config import ConfigError, to_dict

STATE_FILE = "heist.json"
RESULTS = "results"
TRIAL_FILES = ("ledgers", "runs", "curves")
# MLflow's HTTP client retries a failing call 7 times over minutes by default, inside the Tune loop; a sweep
# driver gives up within seconds and keeps the trial for `heist sync` (a user's own settings win).
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Tune's console reporter prints every trial error's traceback; the sweep prints its own one-line reasons.
TUNE_QUIET = {"RAY_AIR_NEW_OUTPUT": "0"}
for _name, _value in (MLFLOW_HTTP | TUNE_QUIET).items():
    os.environ.setdefault(_name, _value)
TUNE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")   # trial tracebacks, Tuner.restore hints


# ------------------------------------------------------------------------------------- state files
def write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically: a kill leaves the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; UserError (one line) when it is unreadable or corrupt."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt {what} ({' '.join(str(e).split())}); it was not written by heist, "
                        f"or the disk failed") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: corrupt {what} (expected a JSON object, got {type(data).__name__})")
    return data


def records(sweep_dir: Path) -> list[dict]:
    """The records of every finished trial (done or failed), in the order they finished."""
    found = [read_json(p, "trial record") for p in (sweep_dir / RESULTS).glob("*.json")]
    return sorted(found, key=lambda r: r.get("ended", 0))


def failure_reason(error: BaseException) -> str:
    """One line: the innermost exception's type and first message line (Ray wraps a trial's exception)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")[:1000]


def _tune_error(trial) -> str:
    """Why Tune says a trial errored, when the trial could not write its own record (its process died)."""
    with contextlib.suppress(Exception):
        lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        return lines[-1][:1000]
    return "the trial's process ended without a result"


# ---------------------------------------------------------------------------------------- the trials
_ACTORS = None   # this trial process's TrialActors: Tune reuses the process from trial to trial (reuse_actors)


def defense_trial(config: dict, base: dict, sweep_dir: str, sweep_id: str) -> None:
    """Tune function trainable: one trial on the point Optuna chose (a defense, and a victim recipe when that is
    searched: its victim comes from the cache or is trained here); records and reports its metrics. The trial
    runs on the actors the previous trial of this process left (service reset, workers re-bound)."""
    global _ACTORS
    from orchestrator.trial import TrialActors, run_trial

    _ACTORS = _ACTORS or TrialActors()
    folder, trial_id = Path(sweep_dir), tune.get_context().get_trial_id()
    record = {"trial_id": trial_id, "study_trial": config.get("study_trial"), "defense": config["defense"],
              "hardening": config.get("hardening"), "started": time.time()}
    try:
        result = run_trial(trial_config(trial_data(base, config)), actors=_ACTORS)
    except Exception as e:
        write_json(folder / RESULTS / f"{trial_id}.json",
                   record | {"status": "FAILED", "error": failure_reason(e), "metrics": {}, "ended": time.time()})
        raise
    for name, rows in (("ledgers", result.ledger), ("runs", result.runs), ("curves", result.curves)):
        if rows or name == "ledgers":
            ledger.write(rows, folder / name / f"{trial_id}.parquet", sweep_id=sweep_id, trial_id=trial_id)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    write_json(folder / RESULTS / f"{trial_id}.json",
               record | {"status": "FINISHED", "error": None, "metrics": metrics, "ended": time.time()})
    tune.report(metrics)


def trainable(cfg: SweepConfig, sweep_dir: Path, sweep_id: str):
    fn = tune.with_parameters(defense_trial, base=cfg.base_trial(), sweep_dir=str(sweep_dir), sweep_id=sweep_id)
    return tune.with_resources(fn, tune.PlacementGroupFactory(bundles(cfg), strategy="PACK"))


class _Aborted(BaseException):
    """Ctrl-C or SIGTERM arrived during a tracking call (a BaseException: libraries must not swallow it)."""


@contextlib.contextmanager
def _abortable():
    """Ctrl-C and SIGTERM abort the tracking call in progress (a hung server would otherwise hold them for
    MLflow's timeouts) and are then delivered to the handlers they were meant for (Tune's: stop the sweep)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def abort(signum, frame):
        received.append(signum)
        raise _Aborted

    previous = {sig: signal.signal(sig, abort) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


class TrialLog:
    """Copies trial records to MLflow. When the store fails, warns once and stops trying for this run of the
    driver (no trial waits on a dead server); `sync` logs whatever is missing."""

    def __init__(self, cfg: SweepConfig, tracker: Tracker, sweep_dir: Path):
        self.tracker, self.sweep_dir, self.offline = tracker, sweep_dir, None
        self.label_keys = cfg.label_keys()
        state = sweep_dir / STATE_FILE
        self.undefended = read_json(state, "sweep state").get("undefended", {}) if state.exists() else {}

    def _fail(self, error: Exception) -> None:
        self.offline = failure_reason(error)
        print(f"heist: warning: MLflow {self.tracker.uri} failed ({self.offline}); every trial stays recorded in "
              f"{self.sweep_dir / RESULTS}: `heist sync {self.sweep_dir}` logs them once it is back",
              file=sys.stderr, flush=True)

    def log(self, record: dict) -> None:
        if self.offline:
            return
        trial_id = record["trial_id"]
        files = {name: self.sweep_dir / name / f"{trial_id}.parquet" for name in TRIAL_FILES}
        try:
            with _abortable():
                metrics = record["metrics"] | reference_trial.relative(record["metrics"], self.undefended)
                started, ended = record.get("started"), record.get("ended")
                defense, recipe = record["defense"], record.get("hardening")
                if recipe:            # the victim's recipe point, logged beside the defense's
                    defense = {"name": defense["name"], "params": defense["params"] | {
                        "victim.hardening": recipe["name"]} | {HARDENING_PREFIX + k: v for k, v in recipe["params"].items()}}
                self.tracker.log_trial(trial_id, defense, metrics, files,
                                       failed=record["status"] == "FAILED", error=record.get("error"),
                                       label_keys=self.label_keys[defense["name"]],
                                       start_ms=int(started * 1000) if started else None,
                                       end_ms=int(ended * 1000) if ended else None)
        except _Aborted:
            self.offline = "interrupted while logging"
        except Exception as e:       # an HTTP error after bounded retries, a locked or unwritable store, ...
            self._fail(e)

    def sync(self) -> int:
        """Log every record MLflow lacks (trying again even after a failure); returns how many are still missing."""
        self.offline = None
        try:
            with _abortable():
                logged = {r.data.tags["heist.trial_id"] for r in self.tracker.trial_runs()}
        except _Aborted:
            self.offline = "interrupted while logging"
            return len(records(self.sweep_dir))
        except Exception as e:
            self._fail(e)
            return len(records(self.sweep_dir))
        for record in records(self.sweep_dir):
            if record["trial_id"] not in logged:
                self.log(record)
                logged |= set() if self.offline else {record["trial_id"]}
        return sum(r["trial_id"] not in logged for r in records(self.sweep_dir))


class TrackingCallback(tune.Callback):
    """Logs each finished trial's record to MLflow from the driver (one writer for a sqlite store)."""

    def __init__(self, log: TrialLog):
        self.trial_log = log

    def _record(self, trial) -> dict | None:
        path = self.trial_log.sweep_dir / RESULTS / f"{trial.trial_id}.json"
        return read_json(path, "trial record") if path.exists() else None

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (record := self._record(trial)) is not None:     # no record: stopped by an interrupt, not finished
            self.trial_log.log(record)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._record(trial)
        if record is None:         # the trial's process died before it could write its own record
            record = {"trial_id": trial.trial_id, "study_trial": trial.config.get("study_trial"),
                      "defense": trial.config["defense"], "status": "FAILED", "error": _tune_error(trial),
                      "metrics": {}, "ended": time.time()}
            write_json(self.trial_log.sweep_dir / RESULTS / f"{trial.trial_id}.json", record)
        self.trial_log.log(record)


def _storage(sweep_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")


def searcher(cfg: SweepConfig, sweep_dir: Path, sweep_id: str, first_run: bool):
    """OptunaSearch over the sweep's define-by-run space, its study kept in <sweep dir>/optuna.db. The first
    run queues `points_to_evaluate` in the study; a resumed one finds those not yet tried still queued there."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space, seed = SearchSpace(cfg), cfg.search.seed
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "grid": lambda: optuna.samplers.GridSampler(space.grid_space(), seed=seed)}[cfg.search.sampler]()
    multi = len(cfg.objectives) > 1
    storage = _storage(sweep_dir)
    # created here (OptunaSearch loads it) so the study carries its objective names for optuna-dashboard
    study = optuna.create_study(storage=storage, study_name=sweep_id, load_if_exists=True,
                                directions=["maximize" if m == "max" else "minimize" for m in cfg.modes])
    with warnings.catch_warnings():          # "experimental" since Optuna 3.2, still in 5.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(cfg.metrics)
    return OptunaSearch(space=space, metric=cfg.metrics if multi else cfg.metrics[0],
                        mode=cfg.modes if multi else cfg.modes[0],
                        points_to_evaluate=(cfg.optuna_points() if first_run else None) or None,
                        sampler=sampler, study_name=sweep_id, storage=storage)


def reconcile_study(cfg: SweepConfig, sweep_dir: Path, sweep_id: str, done: list[dict]) -> int:
    """Make the Optuna study agree with the trial records after the driver died or was stopped: a trial the
    study still holds as running gets its recorded result; one with no record (it was running when the driver
    stopped) is failed and its point queued again, once. Returns how many points were queued again."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=sweep_id, storage=_storage(sweep_dir))
    by_number = {r["study_trial"]: r for r in done if r.get("study_trial") is not None}
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("heist.requeue_of") for t in trials}
    queued = 0
    for t in trials:
        record = by_number.get(t.number)
        if t.state == TrialState.RUNNING:
            values = [record["metrics"].get(m) for m in cfg.metrics] if record else []
            finished = record and record["status"] == "FINISHED" and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            study._storage.set_trial_state_values(t._trial_id, TrialState.COMPLETE if finished else TrialState.FAIL,
                                                  values if finished else None)
        if t.state != TrialState.COMPLETE and t.state != TrialState.WAITING and record is None \
                and t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"heist.requeue_of": t.number}, skip_if_exists=False)
            queued += 1
    return queued


@ray.remote
def _train_victim(victim: dict, cache_dir: str) -> float:
    from workloads.config import parse
    from workloads.victims import VictimConfig, load_or_train

    return load_or_train(parse(VictimConfig, victim), cache_dir).accuracy


def _victim_accuracy(cfg: SweepConfig) -> float:
    """Train the victim into the cache once, before any trial (on a worker with a trial's resources); with a
    searched recipe, the example point's victim (the others are trained by the trials that need them)."""
    task = _train_victim.options(num_cpus=cfg.trial_resources.num_cpus, num_gpus=cfg.trial_resources.num_gpus)
    try:
        return ray.get(task.remote(to_dict(cfg.victim.at()), cfg.cache_dir))
    except ray.exceptions.RayTaskError as e:      # e.g. a dataset that is not there
        raise UserError(f"training the victim failed: {e.cause}") from None


def _announce(cfg: SweepConfig, ref: reference_trial.Reference) -> None:
    """The undefended reference in one line, and a warning line per attack that fails even undefended."""
    print(f"  {reference_trial.summary(ref, cfg.metrics)}", flush=True)
    for warning in ref.warnings():
        print(f"heist: warning: {warning}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- run/resume
def check_writable(cfg: SweepConfig) -> None:
    """UserError naming the field unless the sweep can write its storage, victim cache and sqlite store (the
    nearest existing folder of each is probed with a temporary file; nothing is created)."""
    places = {"storage": cfg.storage, "cache_dir": cfg.cache_dir}
    if cfg.tracking.uri.startswith("sqlite:///"):
        places["tracking.uri"] = str(Path(cfg.tracking.uri[len("sqlite:///"):]).parent)
    for field, folder in places.items():
        path = Path(folder)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            if not path.is_dir():
                raise NotADirectoryError(f"{path} is not a directory")
            tempfile.TemporaryFile(dir=path).close()
        except OSError as e:
            raise UserError(f"{field}: cannot write {folder} ({e.strerror or e})") from None


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


def _finish(cfg: SweepConfig, tracker: Tracker, sweep_dir: Path, log: TrialLog, stopped: int | None = None) -> int:
    """The end of `run`, `resume` and `sync`: the frontier, or what is missing and the command that completes it."""
    done = records(sweep_dir)
    interrupted = len(done) < cfg.num_samples
    missing = len(done) if interrupted and log.offline else log.sync()   # no second wait on a dead store
    if interrupted:
        if not log.offline:
            with contextlib.suppress(Exception, _Aborted), _abortable():
                tracker.set_status("KILLED")
        print(f"\nsweep {tracker.sweep_id} interrupted after {len(done)} of {cfg.num_samples} trials; "
              f"continue it with:\n  heist resume {sweep_dir}", flush=True)
        return 128 + (stopped or signal.SIGINT)
    if missing:
        print(f"\nsweep {tracker.sweep_id}: all {len(done)} trials ran, {missing} of them are not in MLflow yet "
              f"({log.offline}); they are recorded in {sweep_dir / RESULTS}. Once the store is back:\n"
              f"  heist sync {sweep_dir}", flush=True)
        return 3
    failed = [r for r in done if r["status"] == "FAILED"]
    if len(failed) == len(done):
        tracker.set_status("FAILED")
        raise UserError(f"every trial of sweep {tracker.sweep_id} failed; the first: {failed[0]['error']} "
                        f"(trial {failed[0]['trial_id']}; each reason is its MLflow tag heist.error)")
    report = tracker.report_frontier(cfg)
    tracker.set_status("FINISHED")
    print_frontier(cfg, tracker, report)
    return 0


def _fit(cfg: SweepConfig, tracker: Tracker, sweep_dir: Path, trials: int, first_run: bool) -> int:
    """Run `trials` more trials in a new Tune experiment under <sweep dir>/tune, then `_finish`. SIGTERM stops
    it like Ctrl-C (Tune stops the running trials; `heist resume` runs them again); a second one force-quits."""
    log = TrialLog(cfg, tracker, sweep_dir)
    attempt = len(list((sweep_dir / "tune").glob("attempt-*")))
    label_keys = cfg.label_keys()
    with progress.quiet_tune(sweep_dir):     # Heist prints its own progress; Tune's goes to tune.log
        tuner = tune.Tuner(
            trainable(cfg, sweep_dir, tracker.sweep_id),
            tune_config=tune.TuneConfig(search_alg=searcher(cfg, sweep_dir, tracker.sweep_id, first_run),
                                        num_samples=trials, max_concurrent_trials=cfg.search.max_concurrent,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"attempt-{attempt}", storage_path=str(sweep_dir / "tune"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=[TrackingCallback(log),
                                                 progress.Progress(trials, cfg.metrics, label_keys)]))
    stopped: list[int] = []

    def on_sigterm(signum, frame):
        stopped.append(signum)
        signal.raise_signal(signal.SIGINT)      # Tune's handler: stop the trials and return; again: quit

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    for name in TUNE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with progress.quiet_tune(sweep_dir):
            tuner.fit()
    except BaseException:     # a second Ctrl-C or SIGTERM (KeyboardInterrupt), or Tune itself failed
        if not log.offline:
            with contextlib.suppress(Exception, _Aborted), _abortable():
                tracker.set_status("KILLED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _finish(cfg, tracker, sweep_dir, log, stopped[0] if stopped else None)


def run(cfg: SweepConfig) -> int:
    """Run sweep `cfg` (already validated and resolved) to the end; returns the exit code."""
    check_reachable(cfg.tracking.uri)
    check_writable(cfg)
    cfg, started = _start_ray(cfg)
    try:
        plain = cfg.base_trial()        # the reference has no defense at all: no output defense, no hardening
        plain["victim"] = plain["victim"] | {"hardening": {"name": "none", "params": {}}}
        # a cached reference of this very victim knows its accuracy: no process is started to load it
        known = reference_trial.cache_path(plain).is_file() and plain["victim"] == to_dict(cfg.victim.at())
        acc = None if known else _victim_accuracy(cfg)
        try:
            baseline = reference_trial.undefended(plain, cfg.trial_resources.num_cpus, cfg.trial_resources.num_gpus)
        except UserError as e:       # the trials will say why too; the sweep records each one's reason
            print(f"heist: warning: {e}; the sweep goes on without an undefended reference", file=sys.stderr)
            baseline = None
        acc = baseline.metrics["victim_accuracy"] if acc is None else acc
        sweep_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        sweep_dir = Path(cfg.storage) / sweep_id
        sweep_dir.mkdir(parents=True)
        tracker = Tracker.start(cfg, sweep_id, sweep_dir)
        if baseline:
            reference_trial.log(tracker.uri, tracker.parent_run_id, baseline)
        write_json(sweep_dir / STATE_FILE, {"config": as_data(cfg), "tracker": dataclasses.asdict(tracker),
                                            "undefended": baseline.metrics if baseline else {}})
        print(f"sweep {sweep_id}: {cfg.num_samples} trials ({cfg.search.sampler}), up to "
              f"{cfg.search.max_concurrent} at a time, each {bundles(cfg)}; victim accuracy {acc:.4f}"
              f"{' (first point of victim.hardening; each trial trains or loads its own)' if cfg.hardening_searched else ''}\n"
              f"  directory {sweep_dir} (Tune's log: tune.log)\n"
              f"  MLflow {cfg.tracking.uri} experiment {cfg.tracking.experiment!r} run {tracker.parent_run_id}",
              flush=True)
        if baseline:
            _announce(cfg, baseline)
        return _fit(cfg, tracker, sweep_dir, cfg.num_samples, first_run=True)
    finally:
        if started:
            ray.shutdown()


def locate(target: str) -> Path:
    """A sweep directory: `target` itself, or `<storage>/<target>`, or the latest `<storage>/<target>-*`."""
    storage = Path(os.environ.get("HEIST_STORAGE") or DEFAULT_STORAGE).resolve()
    named = [storage / target, *sorted(storage.glob(f"{target}-*"), reverse=True)] if "/" not in target else []
    for path in [Path(target), *named]:
        if (path / STATE_FILE).is_file():
            return path.resolve()
    raise UserError(f"no sweep {target!r} (looked for {STATE_FILE} in {target} and under {storage}); "
                    f"give the sweep directory `heist run` printed")


def _open(target: str) -> tuple[Path, SweepConfig, Tracker, TrialLog]:
    """An existing sweep, its MLflow store reachable and holding every recorded trial (UserError otherwise)."""
    sweep_dir = locate(target)
    state = read_json(sweep_dir / STATE_FILE, "sweep state")
    try:
        cfg, tracker = from_dict(state["config"]), Tracker(**state["tracker"])
    except (KeyError, TypeError, ConfigError) as e:
        raise UserError(f"{sweep_dir / STATE_FILE}: corrupt sweep state ({e})") from None
    check_reachable(tracker.uri)
    log = TrialLog(cfg, tracker, sweep_dir)
    if log.sync():
        raise UserError(f"MLflow {tracker.uri} failed ({log.offline}); nothing was changed")
    return sweep_dir, cfg, tracker, log


def sync(target: str) -> int:
    """Log to MLflow every trial of sweep `target` it lacks; a complete sweep then gets its frontier."""
    sweep_dir, cfg, tracker, log = _open(target)
    code = _finish(cfg, tracker, sweep_dir, log)
    return 0 if code == 128 + signal.SIGINT else code


def resume(target: str) -> int:
    """Continue the interrupted sweep `target` (a directory or a sweep name/id); returns the exit code."""
    sweep_dir, cfg, tracker, log = _open(target)
    import optuna

    done = records(sweep_dir)
    fresh = tracker.sweep_id not in optuna.get_all_study_names(_storage(sweep_dir))   # killed before Tune began
    queued = 0 if fresh else reconcile_study(cfg, sweep_dir, tracker.sweep_id, done)
    missing = cfg.num_samples - len(done)
    print(f"resuming sweep {tracker.sweep_id}: {len(done)} of {cfg.num_samples} trials done"
          + (f", {queued} interrupted trial(s) queued again" if queued else ""), flush=True)
    if missing <= 0:
        return _finish(cfg, tracker, sweep_dir, log)
    check_writable(cfg)
    cfg, started = _start_ray(cfg)
    try:
        tracker.set_status("RUNNING")
        return _fit(cfg, tracker, sweep_dir, missing, first_run=fresh)
    finally:
        if started:
            ray.shutdown()

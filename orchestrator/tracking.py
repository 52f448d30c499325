"""MLflow tracking for sweeps: one parent run per sweep, one child run per trial, the frontier on the parent.

Everything here runs in the sweep's driver process (child runs are written by a Tune callback), so a
sqlite store never sees concurrent writers; a remote `mlflow server` works the same way over HTTP.
A child run carries the Tune trial id as tag `heist.trial_id`; a trial already logged under the parent
is never logged again, which makes `heist resume` safe. The frontier is always computed from the
child runs in the store, so `heist run` and `heist pareto` print the same thing.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import yaml

from orchestrator import curves, pareto
from orchestrator.errors import UserError
from orchestrator.sweep_config import SweepConfig, dump, from_dict

TRIAL_TAG = "heist.trial_id"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "heist.kind"          # "sweep" on parent runs, "trial" on child runs
ARTIFACT_DIRS = {"ledgers": "ledger", "runs": "runs", "curves": "curves"}   # a trial's Parquet files on its run


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def check_reachable(uri: str) -> None:
    """Raise UserError (one line) unless the tracking store at `uri` answers; nothing is written.

    A local sqlite store needs no check: MLflow creates it (and its directory) on first use.
    """
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"MLflow tracking server {uri} is unreachable ({reason}); start it, or set "
                            f"tracking.uri in the YAML or MLFLOW_TRACKING_URI") from None
        return
    if uri.startswith("sqlite:"):
        return
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # any store error: bad path, bad URI scheme, locked or corrupt database
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"MLflow tracking store {uri} is not usable ({first})") from None


def browse_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The command (sqlite) or address (server) that shows the sweep in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        out = None
    return out.stdout.strip() if out and out.returncode == 0 else os.environ.get("HEIST_GIT_COMMIT")


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # a sqlite store keeps its artifacts beside the database, not under whatever directory we run in
    location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri() if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=location)


def _label(defense: dict, keys) -> str:
    return ", ".join(f"{k}={_short(defense['params'][k])}" for k in keys if k in defense["params"])


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass(frozen=True)
class Tracker:
    """A sweep's parent run: where it is, and how to add its trials (plain strings: Tune pickles it)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str

    @classmethod
    def start(cls, cfg: SweepConfig, sweep_id: str, sweep_dir: Path) -> Tracker:
        """Create the sweep's parent run: resolved YAML as artifact, git commit, tags, search settings."""
        from mlflow.entities import Param

        client = _client(cfg.tracking.uri)
        experiment_id = _experiment_id(client, cfg.tracking.experiment, cfg.tracking.uri)
        tags = {KIND_TAG: "sweep", "heist.sweep_id": sweep_id, "heist.sweep_dir": str(sweep_dir),
                "heist.defenses": ",".join(sp.name for sp in cfg.spaces),
                "heist.objectives": ",".join(f"{o.metric}:{o.mode}" for o in cfg.objectives)}
        if commit := _git_commit():
            tags["mlflow.source.git.commit"] = commit
        run = client.create_run(experiment_id, run_name=sweep_id, tags=tags)
        params = {"search.algorithm": cfg.search.algorithm, "search.sampler": cfg.search.sampler,
                  "search.num_samples": cfg.num_samples, "search.max_concurrent": cfg.search.max_concurrent,
                  "search.seed": cfg.search.seed, "victim.dataset": cfg.victim.dataset,
                  "victim.arch": cfg.victim.arch, "attacks": ",".join(a.key for a in cfg.attacks)}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_text(run.info.run_id, dump(cfg), "sweep.yaml")
        return cls(cfg.tracking.uri, experiment_id, run.info.run_id, sweep_id)

    def set_status(self, status: str) -> None:
        """RUNNING, FINISHED, KILLED (interrupted: `heist resume` continues it) or FAILED."""
        client = _client(self.uri)
        if status == "RUNNING":
            client.update_run(self.parent_run_id, status="RUNNING")
        else:
            client.set_terminated(self.parent_run_id, status)

    def _children(self, extra: str = "") -> list:
        client, runs, token = _client(self.uri), [], None
        while True:
            page = client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'{extra}",
                                      max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def trial_runs(self) -> list:
        """The child runs of logged trials, oldest first."""
        return [r for r in self._children() if TRIAL_TAG in r.data.tags]

    def log_trial(self, trial_id: str, defense: dict, metrics: dict[str, float], files: dict[str, Path] | None = None,
                  failed: bool = False, label_keys=()) -> str | None:
        """Log one finished trial as a child run; returns its run id, or None if it was logged before.

        `files` are the trial's Parquet files by kind: `ledgers` (the query ledger), `runs` (one row per attack
        run) and `curves` (budget checkpoints: logged as metric steps `curve/<metric>/<attack>`, step =
        queries, and drawn as curves.png)."""
        from mlflow.entities import Metric, Param, RunTag

        if self._children(f" and tags.`{TRIAL_TAG}` = '{trial_id}'"):
            return None
        client = _client(self.uri)
        name = f"{defense['name']} {_label(defense, label_keys)}".strip()
        run = client.create_run(self.experiment_id, run_name=name, tags={
            PARENT_TAG: self.parent_run_id, KIND_TAG: "trial", "heist.sweep_id": self.sweep_id})
        now = int(time.time() * 1000)
        files = {k: f for k, f in (files or {}).items() if f is not None and Path(f).exists()}
        params = [Param("defense", defense["name"])] + [Param(k, str(v)) for k, v in defense["params"].items()]
        steps = _curve_metrics(files["curves"], now) if "curves" in files else []
        # the trial tag comes in the same batch as the metrics: a run with the tag is a complete record
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()] + steps,
                         params=params, tags=[RunTag(TRIAL_TAG, trial_id)])
        for kind, path in files.items():
            client.log_artifact(run.info.run_id, str(path), ARTIFACT_DIRS.get(kind, kind))
        if "curves" in files:
            with tempfile.TemporaryDirectory() as tmp:
                curves.plot(curves.summarize(pd.read_parquet(files["curves"]).to_dict("records")),
                            Path(tmp) / "curves.png")
                client.log_artifact(run.info.run_id, str(Path(tmp) / "curves.png"))
        client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
        return run.info.run_id

    # ---------------------------------------------------------------------------------- the frontier
    def trials_table(self, cfg: SweepConfig) -> pd.DataFrame:
        """One row per logged trial: ids, defense, hyperparameters (label and columns), every metric."""
        searched = {sp.name: list(sp.searched) for sp in cfg.spaces}
        rows = []
        for run in self.trial_runs():
            params = {k: _number(v) for k, v in run.data.params.items() if k != "defense"}
            name = run.data.params.get("defense", "")
            rows.append({"trial_id": run.data.tags[TRIAL_TAG], "run_id": run.info.run_id, "status": run.info.status,
                         "defense": name,
                         "hyperparameters": _label({"params": params}, searched.get(name, sorted(params))),
                         **{f"param.{k}": v for k, v in params.items()}, **run.data.metrics})
        df = pd.DataFrame(rows) if rows else pd.DataFrame(
            columns=["trial_id", "run_id", "status", "defense", "hyperparameters"])
        for col in [c for c in df.columns if c.startswith("param.")]:   # one type per column, for Parquet
            if not all(isinstance(v, (int, float)) or pd.isna(v) for v in df[col]):
                df[col] = df[col].map(lambda v: None if pd.isna(v) else str(v))
        return df

    def report_frontier(self, cfg: SweepConfig) -> dict:
        """Compute the frontier from the child runs; log its artifacts, hypervolume and `pareto` tags."""
        client = _client(self.uri)
        trials = self.trials_table(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            out = pareto.write(trials, cfg.metrics, cfg.modes, cfg.reference_point, tmp)
            client.log_artifacts(self.parent_run_id, tmp, "pareto")
        client.log_metric(self.parent_run_id, "hypervolume", out["hypervolume"])
        for row in out["trials"].itertuples():
            client.set_tag(row.run_id, "pareto", "true" if row.pareto else "false")
        client.set_tag(self.parent_run_id, "heist.frontier_size", str(int(out["trials"]["pareto"].sum())))
        return out | {"files": [f"pareto/{f.name}" for f in out["files"]]}

    def sweep_config(self) -> SweepConfig:
        """The resolved sweep config kept as the parent run's sweep.yaml artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            path = _client(self.uri).download_artifacts(self.parent_run_id, "sweep.yaml", tmp)
            return from_dict(yaml.safe_load(Path(path).read_text()))


def _curve_metrics(path: Path, timestamp: int) -> list:
    """Budget-curve points (mean over repeats) as MLflow metric steps: `curve/<metric>/<attack>`, step = queries."""
    from mlflow.entities import Metric

    summary = curves.summarize(pd.read_parquet(path).to_dict("records"))
    return [Metric(f"curve/{m}/{row['attack']}", float(row[m]), timestamp, int(row["checkpoint"]))
            for row in summary.to_dict("records") for m in curves.CURVE_METRICS]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def find_sweep(uri: str, target: str) -> Tracker:
    """The parent run `target` (a run id), or the latest sweep in experiment `target` (a name)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        run = client.get_run(target)
    except MlflowException:
        exp = client.get_experiment_by_name(target)
        if exp is None:
            raise UserError(f"no MLflow experiment or run {target!r} in {uri}") from None
        runs = client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'", max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if not runs:
            raise UserError(f"experiment {target!r} in {uri} holds no heist sweep") from None
        run = runs[0]
    if run.data.tags.get(KIND_TAG) != "sweep":
        raise UserError(f"run {target} is not a heist sweep's parent run")
    return Tracker(uri, run.info.experiment_id, run.info.run_id, run.data.tags["heist.sweep_id"])


def print_frontier(cfg: SweepConfig, tracker: Tracker, report: dict) -> None:
    """The frontier table, hypervolume, where the artifacts are and how to browse them."""
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in cfg.objectives)
    reference = ", ".join(f"{k}={v:g}" for k, v in cfg.reference_point.items())
    print(f"\nPareto frontier of sweep {tracker.sweep_id} over {objectives}: {len(report['table'])} of "
          f"{len(report['trials'])} trials\n\n{pareto.markdown(report['table'])}\n\n"
          f"hypervolume {report['hypervolume']:.4f} (reference point {reference})\n"
          f"MLflow parent run {tracker.parent_run_id} (experiment {cfg.tracking.experiment!r}) holds "
          f"{', '.join(report['files'])}\n"
          f"browse it: {browse_hint(tracker.uri, tracker.experiment_id, tracker.parent_run_id)}")

"""MLflow tracking for sweeps: one parent run per sweep, one child run per trial, the frontier on the parent.

Everything here runs in the sweep's driver process (child runs are written by a Tune callback), so a
sqlite store never sees concurrent writers; a remote `mlflow server` works the same way over HTTP.
A child run carries the Tune trial id as tag `heist.trial_id` from its creation and is complete once it is
terminated (FINISHED or FAILED, the last call of `log_trial`): a trial with a complete run is never logged
again, and a run left RUNNING by a kill mid-logging is deleted and logged afresh, which makes `heist resume`
and `heist sync` safe at any moment. A failed trial's reason is its tag `heist.error`. The frontier is always
computed from the child runs in the store, so `heist run` and `heist pareto` print the same thing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from orchestrator import curves, pareto
from orchestrator.undefended import from_run as undefended_metrics
from orchestrator.errors import UserError
from orchestrator.sweep_config import SweepConfig, dump, from_dict
from workloads.config import load_yaml

TRIAL_TAG = "heist.trial_id"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "heist.kind"          # "sweep" on parent runs, "trial" on child runs
ERROR_TAG = "heist.error"        # why a trial failed (one line)
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


def mlflow_command() -> str:
    """`mlflow` when the shell finds it on PATH, else the path of the one beside this Python (the venv's)."""
    beside = Path(sys.executable).parent / "mlflow"
    on_path = shutil.which("mlflow")
    if on_path and (not beside.exists() or Path(on_path).resolve() == beside.resolve()):
        return "mlflow"
    return str(beside) if beside.exists() else "mlflow"


def check_store_exists(uri: str) -> None:
    """UserError when `uri` is a sqlite store whose file is not there (reading must never create one)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]} (give --tracking-uri or set MLFLOW_TRACKING_URI)")


def browse_hint(uri: str, experiment_id: str, run_id: str, sweep_id: str) -> str:
    """The command (sqlite) or address (server) that shows the sweep in the MLflow UI."""
    tracker = Tracker(uri, experiment_id, run_id, sweep_id)
    if uri.startswith("sqlite:"):
        return (f"{mlflow_command()} ui --backend-store-uri {uri}\n  then open "
                f"{runs_view_url('http://127.0.0.1:5000', tracker)}")
    return runs_view_url(uri, tracker)


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
    # MLflow 3 opens an experiment on its GenAI (traces) page unless the experiment says it holds model runs
    return client.create_experiment(name, artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def qualified(defense: str, param: str) -> str:
    """A hyperparameter's name in MLflow and in tables: `<defense>.<param>`, e.g. `dcp.beta`; the victim's recipe
    parameters keep their own `victim.hardening...` names."""
    return param if param.startswith("victim.") else f"{defense}.{param}"


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
                  "victim.arch": cfg.victim.arch, "victim.hardening": cfg.victim.hardening.name,
                  "attacks": ",".join(a.key for a in cfg.attacks)}
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
        """The complete child runs of logged trials, oldest first."""
        return [r for r in self._children() if TRIAL_TAG in r.data.tags and r.info.status != "RUNNING"]

    def log_trial(self, trial_id: str, defense: dict, metrics: dict[str, float], files: dict[str, Path] | None = None,
                  failed: bool = False, label_keys=(), error: str | None = None, start_ms: int | None = None,
                  end_ms: int | None = None) -> str | None:
        """Log one finished trial as a child run; returns its run id, or None if it was logged before.

        The run carries the trial's own start and end times (`start_ms`, `end_ms`; default: now), and each
        hyperparameter as param `<defense>.<name>` (DCP's `beta` and reverse sigmoid's are different knobs).

        `files` are the trial's Parquet files by kind: `ledgers` (the query ledger), `runs` (one row per attack
        run) and `curves` (budget checkpoints: logged as metric steps `curve/<metric>/<attack>`, step =
        queries, and drawn as curves.png). `error` is a failed trial's reason (tag `heist.error`)."""
        from mlflow.entities import Metric, Param

        client = _client(self.uri)
        for old in self._children(f" and tags.`{TRIAL_TAG}` = '{trial_id}'"):
            if old.info.status != "RUNNING":
                return None
            client.delete_run(old.info.run_id)        # half-logged when the driver died: log it again
        name = f"{defense['name']} {_label(defense, label_keys)}".strip()
        now = int(time.time() * 1000)
        tags = {PARENT_TAG: self.parent_run_id, KIND_TAG: "trial", "heist.sweep_id": self.sweep_id, TRIAL_TAG: trial_id}
        if error:
            tags[ERROR_TAG] = error[:5000]
        run = client.create_run(self.experiment_id, run_name=name, start_time=start_ms or now, tags=tags)
        now = end_ms or now
        files = {k: f for k, f in (files or {}).items() if f is not None and Path(f).exists()}
        params = [Param("defense", defense["name"])] + [Param(qualified(defense["name"], k), str(v))
                                                        for k, v in defense["params"].items()]
        steps = _curve_metrics(files["curves"], now) if "curves" in files else []
        client.log_batch(run.info.run_id, params=params, metrics=[
            Metric(k, float(v), now, 0) for k, v in metrics.items()] + steps)
        for kind, path in files.items():
            client.log_artifact(run.info.run_id, str(path), ARTIFACT_DIRS.get(kind, kind))
        if "curves" in files:
            with tempfile.TemporaryDirectory() as tmp:
                curves.plot(curves.summarize(pd.read_parquet(files["curves"]).to_dict("records")),
                            Path(tmp) / "curves.png")
                client.log_artifact(run.info.run_id, str(Path(tmp) / "curves.png"))
        client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED", end_time=now)   # last: complete
        return run.info.run_id

    # ---------------------------------------------------------------------------------- the frontier
    def trials_table(self, cfg: SweepConfig) -> pd.DataFrame:
        """One row per logged trial: ids, defense, hyperparameters (label and columns), every metric."""
        searched = cfg.label_keys()
        rows = []
        for run in self.trial_runs():
            name = run.data.params.get("defense", "")
            params = {k.removeprefix(f"{name}."): _number(v) for k, v in run.data.params.items() if k != "defense"}
            rows.append({"trial_id": run.data.tags[TRIAL_TAG], "run_id": run.info.run_id, "status": run.info.status,
                         "defense": name,
                         "hyperparameters": _label({"params": params}, searched.get(name, sorted(params))),
                         **{f"param.{qualified(name, k)}": v for k, v in params.items()}, **run.data.metrics})
        df = pd.DataFrame(rows) if rows else pd.DataFrame(
            columns=["trial_id", "run_id", "status", "defense", "hyperparameters"])
        for col in [c for c in df.columns if c.startswith("param.")]:   # one type per column, for Parquet
            if not all(isinstance(v, (int, float)) or pd.isna(v) for v in df[col]):
                df[col] = df[col].map(lambda v: None if pd.isna(v) else str(v))
        return df

    def frontier(self, cfg: SweepConfig, out_dir) -> dict:
        """Compute the frontier from the child runs and write its files to `out_dir`; the store is only read.

        The plot marks the sweep's undefended reference (`undefended/<metric>` on the parent run) when it has one."""
        trials = self.trials_table(cfg)
        undefended = undefended_metrics(_client(self.uri).get_run(self.parent_run_id))
        out = pareto.write(trials, cfg.metrics, cfg.modes, cfg.reference_point, out_dir, undefended=undefended or None)
        return out | {"undefended": undefended, "files": [f"pareto/{f.name}" for f in out["files"]]}

    def report_frontier(self, cfg: SweepConfig) -> dict:
        """Compute the frontier and log it on the parent run: artifacts under pareto/, the hypervolume, `pareto`
        tags on the child runs, and the frontier table as the run's description (MLflow's `mlflow.note.content`)."""
        client = _client(self.uri)
        with tempfile.TemporaryDirectory() as tmp:
            out = self.frontier(cfg, tmp)
            client.log_artifacts(self.parent_run_id, tmp, "pareto")
        client.log_metric(self.parent_run_id, "hypervolume", out["hypervolume"])
        for row in out["trials"].itertuples():
            client.set_tag(row.run_id, "pareto", "true" if row.pareto else "false")
        client.set_tag(self.parent_run_id, "heist.frontier_size", str(int(out["trials"]["pareto"].sum())))
        client.set_tag(self.parent_run_id, "mlflow.note.content", description(cfg, self.sweep_id, out))
        client.set_experiment_tag(self.experiment_id, VIEW_TAG + self.sweep_id,
                                  json.dumps(runs_view_state(cfg, self.sweep_id)))
        return out

    def sweep_config(self) -> SweepConfig:
        """The resolved sweep config kept as the parent run's sweep.yaml artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            path = _client(self.uri).download_artifacts(self.parent_run_id, "sweep.yaml", tmp)
            return from_dict(load_yaml(path))


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


def description(cfg: SweepConfig, sweep_id: str, report: dict) -> str:
    """The parent run's description (Markdown): the frontier table, hypervolume, the undefended reference."""
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in cfg.objectives)
    undefended = report.get("undefended") or {}
    lines = [f"**Pareto frontier** of sweep `{sweep_id}` over {objectives}: {len(report['table'])} of "
             f"{len(report['trials'])} trials (plot: Artifacts → `pareto/frontier.png`)", "",
             pareto.markdown(report["table"]), "", f"hypervolume **{report['hypervolume']:.4f}** "
             f"(reference point {', '.join(f'{k}={v:g}' for k, v in cfg.reference_point.items())})"]
    if undefended:
        lines.append("undefended reference (no defense, same attacks): "
                     + ", ".join(f"{m}={undefended[m]:.4f}" for m in cfg.metrics if m in undefended))
    return "\n".join(lines)


def print_frontier(cfg: SweepConfig, tracker: Tracker, report: dict, written: bool = True) -> None:
    """The frontier table, hypervolume, the undefended reference, where the artifacts are and how to browse them."""
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in cfg.objectives)
    corner = ", ".join(f"{k}={v:g}" for k, v in cfg.reference_point.items())
    undefended = report.get("undefended") or {}
    baseline = (f"undefended reference (no defense, same attacks): "
                + ", ".join(f"{m}={undefended[m]:.4f}" for m in cfg.metrics if m in undefended) + "\n"
                if undefended else "")
    where = (f"MLflow parent run {tracker.parent_run_id} (experiment {cfg.tracking.experiment!r}) holds "
             f"{', '.join(report['files'])}" if written else
             f"(recomputed from MLflow run {tracker.parent_run_id}; nothing was written: add --write to update its "
             f"pareto/ artifacts, hypervolume and tags)")
    print(f"\nPareto frontier of sweep {tracker.sweep_id} over {objectives}: {len(report['table'])} of "
          f"{len(report['trials'])} trials\n\n{pareto.markdown(report['table'])}\n\n"
          f"hypervolume {report['hypervolume']:.4f} (reference point {corner})\n{baseline}{where}\n"
          f"browse it: {browse_hint(tracker.uri, tracker.experiment_id, tracker.parent_run_id, tracker.sweep_id)}")


VIEW_TAG = "mlflow.sharedViewState."     # MLflow UI: an experiment tag holding a runs-view state (JSON)


def runs_view_state(cfg: SweepConfig, sweep_id: str) -> dict:
    """The runs view that shows a sweep's trials: objectives (with their sd), the robustness vs the undefended
    reference, the defense and its searched hyperparameters and the `pareto` tag as columns, best first."""
    spread = [f"{m}_std" for m in cfg.metrics if cfg.repeats > 1 and m.split("/")[0] in
              ("stolen_accuracy", "fidelity", "agreement", "relative_accuracy")]
    metrics = [*cfg.metrics, *spread, "stolen_accuracy_vs_undefended"]
    params = ["defense", *(qualified(sp.name, k) for sp, keys in zip(cfg.spaces, cfg.label_keys().values())
                           for k in keys)]
    return {"selectedColumns": [f"metrics.`{m}`" for m in dict.fromkeys(metrics)]
            + [f"params.`{p}`" for p in params] + ["tags.`pareto`"],
            "searchFilter": f"tags.`heist.sweep_id` = '{sweep_id}' and tags.`{KIND_TAG}` = 'trial'",
            "orderByKey": f"metrics.`{cfg.metrics[0]}`", "orderByAsc": cfg.modes[0] == "min"}


def runs_view_url(base: str, tracker: Tracker) -> str:
    """The experiment's runs view (model-training mode) in the MLflow UI at `base`, opened on the sweep's trials
    with the columns of `runs_view_state` (saved on the experiment by `report_frontier`)."""
    return (f"{base.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={tracker.sweep_id}")

"""`heist report`: defenses × attacks from several sweeps of the same victim, in one table, from MLflow.

Each row is one trial (a defense at one hyperparameter point) of one of the sweeps, plus the undefended
reference of each sweep that has one (rows with equal numbers are shown once); the columns are the defended
accuracy, the perturbation and, per attack key, the metric asked for (default `stolen_accuracy`) as
mean ± sd when the trial had repeats. Sweeps must share their victim's task — dataset, split, architecture,
training and seed: the content hash of the victim without its training-time defense — so a sweep of InI victims
(`victim.hardening`) sits beside output-defense sweeps of the same plain victim, and both share one undefended
reference; a table mixing tasks would compare nothing. Written as Markdown (printed) and, with `--out DIR`, as
`DIR/report.md` and `DIR/report.csv`, with the sweeps' joint Pareto frontier over defended accuracy (max) and
stolen accuracy (min) as `DIR/frontier.png`, `frontier.md`, `frontier.csv` (orchestrator.pareto).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from orchestrator import pareto
from orchestrator.errors import UserError
from orchestrator.sweep_config import HARDENING_PREFIX
from orchestrator.tracking import Tracker, find_sweep
from orchestrator.undefended import from_run

FIXED = ("defended_accuracy", "perturbation_l1")
OBJECTIVES = {"defended_accuracy": "max", "stolen_accuracy": "min"}   # the joint frontier of `--out`


def _cell(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None and not math.isnan(std) else "")


def _std(metrics: dict, name: str):
    metric, _, attack = name.partition("/")
    return metrics.get(f"{metric}_std/{attack}" if attack else f"{metric}_std")


def task_key(cfg) -> str:
    """The content hash of the sweep's victim with no training-time defense (what its undefended reference uses)."""
    from workloads.hardening import HardeningConfig

    return dataclasses.replace(cfg.victim.at(), hardening=HardeningConfig()).key


def _defense(trial: dict) -> str:
    """The trial's defense, with the victim's training-time recipe first when it has one: `ini`, `ini + dcp`."""
    recipe, defense = trial.get("param.victim.hardening"), trial["defense"]
    if not isinstance(recipe, str) or recipe == "none":
        return defense
    return recipe if defense == "none" else f"{recipe} + {defense}"


def gather(trackers: list[Tracker], metric: str = "stolen_accuracy") -> tuple[pd.DataFrame, list[str]]:
    """One row per trial (and per distinct undefended reference): sweep, defense, hyperparameters, FIXED metrics
    and `metric` per attack key, as numbers (`<col>` and `<col>_std`). Returns the rows and the attack keys."""
    from mlflow import MlflowClient

    victims = {}
    rows, attacks = [], []
    for tracker in trackers:
        cfg = tracker.sweep_config()
        victims.setdefault(task_key(cfg), tracker.sweep_id)
        if len(victims) > 1:
            first, other = list(victims.values())
            raise UserError(f"sweeps {first} and {other} attack different victims (dataset, split, architecture, "
                            f"training or seed); a report compares one victim and its training-time defenses")
        attacks += [a.key for a in cfg.attacks if a.key not in attacks]
        parent = MlflowClient(tracker.uri).get_run(tracker.parent_run_id)
        undefended = from_run(parent)
        table = tracker.trials_table(cfg)
        records = [("(none)", "undefended", "", undefended)] if undefended else []
        records += [(r["trial_id"], _defense(r), r["hyperparameters"].replace(HARDENING_PREFIX, ""), r)
                    for r in table.to_dict("records")]         # `ini` in the defense column: `gamma=1`, not the prefix
        for trial_id, defense, hyper, m in records:
            row = {"sweep": tracker.sweep_id, "trial_id": trial_id, "defense": defense, "hyperparameters": hyper}
            for name in dict.fromkeys([*FIXED, *OBJECTIVES, *(f"{metric}/{a}" for a in attacks)]):
                value = m.get(name)
                row[name] = value
                row[f"{name}_std"] = _std(m, name)
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df, attacks
    numbers = [c for c in df.columns if c not in ("sweep", "trial_id")]
    undefended = df["defense"] == "undefended"
    df = pd.concat([df[undefended].drop_duplicates(subset=numbers), df[~undefended]])
    values = [c for c in numbers if c not in ("defense", "hyperparameters")]
    df[values] = df[values].apply(pd.to_numeric, errors="coerce")      # None (no sd, no value) -> NaN
    return df.reset_index(drop=True), attacks


def markdown(df: pd.DataFrame, attacks: list[str], metric: str) -> str:
    cols = ["defense", "hyperparameters", *FIXED, *(f"{metric}/{a}" for a in attacks), "sweep"]
    head = ["defense", "hyperparameters", *FIXED, *attacks, "sweep"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in df.to_dict("records"):
        cells = [str(row["defense"]), str(row["hyperparameters"])]
        cells += [_cell(row.get(c), row.get(f"{c}_std")) for c in cols[2:-1]]
        lines.append("| " + " | ".join(cells + [row["sweep"]]) + " |")
    return "\n".join(lines)


def main(args) -> int:
    """`heist report SWEEP [SWEEP ...] [--metric M] [--out DIR] [--tracking-uri URI]`."""
    from orchestrator.sweep_config import resolve_tracking_uri
    from orchestrator.tracking import check_reachable, check_store_exists

    uri = resolve_tracking_uri(args.tracking_uri)
    check_store_exists(uri)
    check_reachable(uri)
    trackers = [find_sweep(uri, target) for target in args.sweeps]
    df, attacks = gather(trackers, args.metric)
    if df.empty:
        raise UserError("the sweeps hold no logged trials")
    text = (f"{args.metric} per attack (columns) for each defense point (rows), mean ± sd over repeats; "
            f"victim of sweep {trackers[0].sweep_id}\n\n{markdown(df, attacks, args.metric)}")
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text + "\n")
        df.to_csv(out / "report.csv", index=False)
        trials, plain = df[df["defense"] != "undefended"], df[df["defense"] == "undefended"]
        front = pareto.write(trials, list(OBJECTIVES), list(OBJECTIVES.values()),
                             {"defended_accuracy": 0.0, "stolen_accuracy": 1.0}, out,
                             undefended=plain.iloc[0].to_dict() if len(plain) else None)
        print(f"\njoint Pareto frontier of the sweeps over defended_accuracy (max), stolen_accuracy (min):\n\n"
              f"{pareto.markdown(front['table'])}\n\nwritten: {out / 'report.md'}, {out / 'report.csv'}, "
              f"{', '.join(str(f) for f in front['files'])}")
    return 0

"""The robustness–utility Pareto frontier of a sweep: non-dominated trials, hypervolume, plot and tables.

Works on a table of trials (one row each; objective columns named by metric), whatever chose them —
Optuna, a grid or random — so every sweep gets the same frontier. Objectives are (metric, mode) pairs;
a trial missing an objective (a failed trial) is never on the frontier.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def _as_min(values, modes) -> np.ndarray:
    """Objective values turned into a minimisation problem (max objectives negated)."""
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return np.asarray(values, dtype=float).reshape(-1, len(modes)) * signs


def non_dominated(values, modes) -> np.ndarray:
    """Boolean mask of rows no other row dominates (at least as good everywhere, better somewhere).

    Rows with a NaN are never on the frontier; equal rows are both kept.
    """
    v = _as_min(values, modes)
    ok = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    for i in np.flatnonzero(ok):
        others = v[ok]
        mask[i] = not ((others <= v[i]).all(axis=1) & (others < v[i]).any(axis=1)).any()
    return mask


def _hv_min(points: list[tuple], reference: tuple) -> float:
    """Hypervolume dominated by `points` (minimisation) up to `reference`, by slicing along the last axis.

    Sorted by the last coordinate, the slab between consecutive points' last coordinates is dominated
    exactly by the points up to it, projected onto the other axes: HV_d = Σ slab height × HV_{d-1}.
    In 2-D that is the usual sort-and-sweep; the cost grows as n^(d-1), fine for sweep-sized fronts.
    """
    points = sorted((p for p in points if all(a < r for a, r in zip(p, reference))), key=lambda p: p[-1])
    if not points:
        return 0.0
    if len(reference) == 1:
        return reference[0] - points[0][0]
    total = 0.0
    for i, p in enumerate(points):
        top = points[i + 1][-1] if i + 1 < len(points) else reference[-1]
        if top > p[-1]:
            total += (top - p[-1]) * _hv_min([q[:-1] for q in points[:i + 1]], reference[:-1])
    return total


def hypervolume(values, reference, modes) -> float:
    """Volume of objective space the rows dominate, bounded by `reference` (in the objectives' own units).

    Rows with a NaN, or not better than the reference in every objective, add nothing.
    """
    v = _as_min(values, modes)
    ref = tuple(_as_min([reference], modes)[0])
    return _hv_min([tuple(row) for row in v if not np.isnan(row).any()], ref)


def strongest_attack(trials: pd.DataFrame) -> pd.Series:
    """Per trial, the attack key with the highest mean stolen accuracy (its `stolen_accuracy/<attack>` column):
    the attack that decides a worst-case `stolen_accuracy` objective. Empty where no attack was scored."""
    cols = [c for c in trials.columns if c.startswith("stolen_accuracy/")]
    scores = trials[cols].apply(pd.to_numeric, errors="coerce") if cols else pd.DataFrame(index=trials.index)
    return pd.Series([row.idxmax().partition("/")[2] if row.notna().any() else "" for _, row in scores.iterrows()],
                     index=trials.index, dtype=object)


def frontier(trials: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """`trials` with a boolean `pareto` column (missing objective columns count as NaN) and `strongest_attack`."""
    values = trials.reindex(columns=metrics).to_numpy(dtype=float)
    return trials.assign(pareto=non_dominated(values, modes) if len(trials) else [],
                         strongest_attack=strongest_attack(trials))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `df`."""
    cols = list(df.columns)
    rows = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table(trials: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """The frontier's rows for people: trial, defense, hyperparameters, objectives and (where attacks were scored)
    the strongest attack, best first."""
    front = trials[trials["pareto"]]
    scored = "strongest_attack" in trials and (trials["strongest_attack"] != "").any()
    cols = ["trial_id", "defense", "hyperparameters", *metrics, *(["strongest_attack"] if scored else [])]
    return front.reindex(columns=cols).sort_values(metrics[0], ascending=modes[0] == "min").reset_index(drop=True)


def _labels(front: pd.DataFrame, x: str, y: str) -> list[tuple[float, float, str]]:
    """One label per distinct frontier point: trials that tie (same objectives to 4 decimals) share it."""
    groups: dict[tuple, list[str]] = {}
    for _, row in front.iterrows():
        strongest = f" [{row['strongest_attack']}]" if row.get("strongest_attack") else ""
        groups.setdefault((round(float(row[x]), 4), round(float(row[y]), 4)), []).append(
            f"{row['defense']} {row['hyperparameters']}".strip() + strongest)
    out = []
    for (px, py), names in groups.items():
        text = "\n".join(names[:3]) + (f"\n+{len(names) - 3} more" if len(names) > 3 else "")
        out.append((px, py, text))
    return out


def plot(trials: pd.DataFrame, metrics: list[str], modes: list[str], reference: dict, hv: float, path,
         undefended: dict | None = None) -> None:
    """PNG: every trial, the frontier highlighted, joined and labelled with its hyperparameters and, in brackets,
    the strongest attack at that point.

    Two objectives span the axes (the first two, when there are more); one objective is drawn against
    the trial's position in the sweep. Trials with `<metric>_std` columns (repeats) get error bars of ± 1 sd;
    trials that tie share one label; `undefended` (the no-defense reference's metrics) is drawn as a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(metrics) == 1:
        trials = trials.assign(trial=np.arange(len(trials)))
        x, y = "trial", metrics[0]
    else:
        x, y = metrics[:2]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    xerr, yerr = (trials[f"{m}_std"] if f"{m}_std" in trials else None for m in (x, y))
    if xerr is not None or yerr is not None:
        ax.errorbar(trials[x], trials[y], xerr=xerr, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=0.8,
                    capsize=2, zorder=1, label="± 1 sd over repeats")
    rest, front = trials[~trials["pareto"]], trials[trials["pareto"]].sort_values(x)
    for name, group in rest.groupby("defense"):
        ax.scatter(group[x], group[y], s=28, alpha=0.6, label=f"{name} trials", zorder=2)
    # the staircase bounding what the frontier dominates: its corners are the worse of two neighbours
    steps = "default" if len(metrics) == 1 else "steps-pre" if modes[0] == "max" else "steps-post"
    ax.plot(front[x], front[y], "o-", c="tab:red", ms=7, drawstyle=steps, label="Pareto frontier", zorder=3)
    for i, (px, py, text) in enumerate(_labels(front, x, y)):
        ax.annotate(text, (px, py), fontsize=7, xytext=(6, 6 if i % 2 == 0 else -12), textcoords="offset points",
                    va="bottom" if i % 2 == 0 else "top",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.7})
    if undefended and y in undefended and (x in undefended or len(metrics) == 1):
        if len(metrics) == 1:
            ax.axhline(undefended[y], c="black", ls="--", lw=1, label="undefended (no defense)")
        else:
            ax.scatter([undefended[x]], [undefended[y]], marker="*", s=180, c="black", zorder=4,
                       label="undefended (no defense)")
            ax.annotate("undefended", (undefended[x], undefended[y]), fontsize=7, xytext=(6, -10),
                        textcoords="offset points")
    better = {"max": "higher is better", "min": "lower is better"}
    ax.set_xlabel(x if len(metrics) == 1 else f"{x} ({better[modes[0]]})")
    ax.set_ylabel(f"{y} ({better[modes[-1] if len(metrics) == 1 else modes[1]]})")
    ref = ", ".join(f"{k}={v:g}" for k, v in reference.items())
    ax.set_title(f"hypervolume {hv:.4f} (reference {ref})" + (" — first two objectives shown"
                                                                 if len(metrics) > 2 else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(trials: pd.DataFrame, metrics: list[str], modes: list[str], reference: dict, out_dir,
          undefended: dict | None = None) -> dict:
    """Compute the frontier of `trials` and write frontier.png, frontier.md, frontier.csv, trials.parquet.

    Returns {"trials": trials with `pareto`, "table": the frontier table, "hypervolume": float, "files": [...]}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = frontier(trials, metrics, modes)
    front = trials[trials["pareto"]]
    hv = hypervolume(front.reindex(columns=metrics).to_numpy(dtype=float), [reference[m] for m in metrics], modes)
    tab = table(trials, metrics, modes)
    files = [out / "frontier.png", out / "frontier.md", out / "frontier.csv", out / "trials.parquet"]
    plot(trials, metrics, modes, reference, hv, files[0], undefended)
    files[1].write_text(markdown(tab) + "\n")
    tab.to_csv(files[2], index=False)
    trials.to_parquet(files[3], index=False)
    return {"trials": trials, "table": tab, "hypervolume": hv, "files": files}

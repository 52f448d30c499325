"""Budget curves: stolen accuracy and fidelity against queries, aggregated over an attack's repeats.

Rows are `TrialResult.curves` (attack, repeat, checkpoint, queries, stolen_accuracy, fidelity); a curve
point is the mean over repeats at one checkpoint, with the sample standard deviation beside it.
"""
from __future__ import annotations

import pandas as pd

CURVE_METRICS = ("stolen_accuracy", "fidelity")


def summarize(rows: list[dict]) -> pd.DataFrame:
    """One row per (attack, checkpoint): n repeats, and the mean and sd of each curve metric."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["attack", "checkpoint", "n",
                                     *[f"{m}{s}" for m in CURVE_METRICS for s in ("", "_std")]])
    grouped = df.groupby(["attack", "checkpoint"])
    out = grouped.size().rename("n").to_frame()
    for m in CURVE_METRICS:
        out[m] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
    return out.reset_index()


def plot(summary: pd.DataFrame, path) -> None:
    """PNG: stolen accuracy (solid) and fidelity (dashed) vs queries per attack, error bars = sd over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for attack, group in summary.groupby("attack"):
        line = ax.errorbar(group["checkpoint"], group["stolen_accuracy"], yerr=group["stolen_accuracy_std"].fillna(0),
                           marker="o", capsize=3, label=f"{attack}: stolen accuracy")
        ax.errorbar(group["checkpoint"], group["fidelity"], yerr=group["fidelity_std"].fillna(0), marker="s",
                    ls="--", capsize=3, color=line[0].get_color(), alpha=0.7, label=f"{attack}: fidelity")
    ax.set_xlabel("queries (images sent to the victim)")
    ax.set_ylabel("on the victim's test set")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""The Pareto frontier: non-dominated trials, hypervolume in 2-D and N-D, and the files a sweep ends with."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from orchestrator.pareto import hypervolume, markdown, non_dominated, write

MAX_MIN = ["max", "min"]


def test_a_trial_is_on_the_frontier_unless_another_is_at_least_as_good_everywhere_and_better_somewhere():
    # (defended_accuracy ↑, stolen_accuracy ↓)
    points = [(0.9, 0.8), (0.8, 0.5), (0.8, 0.6), (0.7, 0.5), (0.9, 0.8), (0.5, 0.2), (np.nan, 0.0)]
    assert non_dominated(points, MAX_MIN).tolist() == [True, True, False, False, True, True, False]


def test_modes_decide_the_direction():
    points = [(1.0, 1.0), (2.0, 2.0)]
    assert non_dominated(points, ["max", "max"]).tolist() == [False, True]
    assert non_dominated(points, ["min", "min"]).tolist() == [True, False]
    assert non_dominated(points, ["max", "min"]).tolist() == [True, True]


def test_2d_hypervolume_is_the_dominated_area_up_to_the_reference():
    # staircase of (0.9, 0.8) and (0.8, 0.5) against (0, 1): 0.9×0.2 + 0.8×0.3
    assert hypervolume([(0.9, 0.8), (0.8, 0.5)], [0.0, 1.0], MAX_MIN) == pytest.approx(0.18 + 0.24)
    assert hypervolume([(0.9, 0.8), (0.8, 0.5), (0.7, 0.6)], [0.0, 1.0], MAX_MIN) == pytest.approx(0.42)
    assert hypervolume([(0.5, 0.5)], [0.6, 1.0], MAX_MIN) == 0.0        # worse than the reference: nothing
    assert hypervolume([], [0.0, 1.0], MAX_MIN) == 0.0


def union_of_boxes(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact dominated volume (minimisation) by inclusion–exclusion over every subset of boxes."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = np.max(subset, axis=0)
            total += (-1) ** (k + 1) * np.prod(np.clip(ref - corner, 0, None))
    return total


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_nd_hypervolume_matches_inclusion_exclusion(dims):
    rng = np.random.default_rng(dims)
    for _ in range(5):
        points = rng.random((7, dims))
        reference = np.ones(dims)
        assert hypervolume(points, reference, ["min"] * dims) == pytest.approx(union_of_boxes(points, reference))


def trials() -> pd.DataFrame:
    return pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "defense": ["dcp", "dcp", "reverse_sigmoid", "reverse_sigmoid"],
        "hyperparameters": ["beta=0.5", "beta=0.9", "beta=0.1", "beta=0.4"],
        "defended_accuracy": [0.95, 0.93, 0.95, np.nan], "stolen_accuracy": [0.80, 0.60, 0.85, 0.1]})


def test_a_sweep_ends_with_a_plot_tables_and_a_parquet_of_all_trials(tmp_path):
    out = write(trials(), ["defended_accuracy", "stolen_accuracy"], MAX_MIN,
                {"defended_accuracy": 0.0, "stolen_accuracy": 1.0}, tmp_path)
    assert out["trials"]["pareto"].tolist() == [True, True, False, False]
    assert out["table"]["trial_id"].tolist() == ["a", "b"]                 # best first objective first
    assert out["hypervolume"] == pytest.approx(0.95 * 0.2 + 0.93 * 0.2)
    assert [f.name for f in out["files"]] == ["frontier.png", "frontier.md", "frontier.csv", "trials.parquet"]
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "frontier.csv")["trial_id"].tolist() == ["a", "b"]
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 4
    assert (tmp_path / "frontier.md").read_text().splitlines()[2] == "| a | dcp | beta=0.5 | 0.9500 | 0.8000 |"


def test_one_objective_has_a_frontier_of_the_best_trials(tmp_path):
    out = write(trials(), ["stolen_accuracy"], ["min"], {"stolen_accuracy": 1.0}, tmp_path)
    assert out["table"]["trial_id"].tolist() == ["d"] and out["hypervolume"] == pytest.approx(0.9)


def test_markdown_tables_render_numbers_with_four_decimals():
    assert markdown(pd.DataFrame({"x": ["a"], "y": [0.123456]})) == "| x | y |\n|---|---|\n| a | 0.1235 |"


def test_the_frontier_names_the_attack_that_won_at_each_defense_point(tmp_path):
    """A worst-case objective (`stolen_accuracy` = max over attacks) shows which attack decided each point."""
    df = trials().assign(**{"stolen_accuracy/jbda": [0.80, 0.30, 0.85, 0.05],
                            "stolen_accuracy/knockoff_soft_split": [0.70, 0.60, 0.10, 0.10],
                            "stolen_accuracy_std/jbda": [0.9, 0.9, 0.9, 0.9]})     # an sd never wins
    out = write(df, ["defended_accuracy", "stolen_accuracy"], MAX_MIN,
                {"defended_accuracy": 0.0, "stolen_accuracy": 1.0}, tmp_path)
    assert out["trials"]["strongest_attack"].tolist() == ["jbda", "knockoff_soft_split", "jbda", "knockoff_soft_split"]
    assert out["table"]["strongest_attack"].tolist() == ["jbda", "knockoff_soft_split"]
    assert (tmp_path / "frontier.md").read_text().splitlines()[2].endswith("| 0.8000 | jbda |")
    assert pd.read_parquet(tmp_path / "trials.parquet")["strongest_attack"].tolist()[1] == "knockoff_soft_split"


def test_tied_frontier_points_share_one_label():
    from orchestrator.pareto import _labels

    front = pd.DataFrame({"defense": ["dcp", "dcp", "reverse_sigmoid"], "hyperparameters": ["beta=0.5", "beta=0.6", "beta=1"],
                          "defended_accuracy": [0.9, 0.9, 0.8], "stolen_accuracy": [0.5, 0.5, 0.3]})
    labels = _labels(front, "defended_accuracy", "stolen_accuracy")
    assert sorted(labels) == [(0.8, 0.3, "reverse_sigmoid beta=1"), (0.9, 0.5, "dcp beta=0.5\ndcp beta=0.6")]


def test_the_plot_draws_error_bars_and_the_undefended_reference(tmp_path, monkeypatch):
    import matplotlib.axes

    from orchestrator.pareto import frontier, plot

    calls = {}
    for name in ("errorbar", "scatter"):
        real = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(matplotlib.axes.Axes, name,
                            lambda self, *a, _real=real, _name=name, **k: calls.setdefault(_name, []).append(k)
                            or _real(self, *a, **k))
    trials = frontier(pd.DataFrame({"defense": ["dcp", "dcp"], "hyperparameters": ["beta=0.5", "beta=0.9"],
                                    "defended_accuracy": [0.9, 0.8], "stolen_accuracy": [0.5, 0.6],
                                    "stolen_accuracy_std": [0.02, 0.03]}), ["defended_accuracy", "stolen_accuracy"],
                      ["max", "min"])
    plot(trials, ["defended_accuracy", "stolen_accuracy"], ["max", "min"], {"defended_accuracy": 0, "stolen_accuracy": 1},
         0.5, tmp_path / "f.png", undefended={"defended_accuracy": 0.9, "stolen_accuracy": 0.7})
    assert list(calls["errorbar"][0]["yerr"]) == [0.02, 0.03] and calls["errorbar"][0]["xerr"] is None
    assert any(k.get("label") == "undefended (no defense)" for k in calls["scatter"])
    assert (tmp_path / "f.png").stat().st_size > 0

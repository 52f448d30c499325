"""The undefended reference and what a person reads from a sweep: one real 2-trial digits sweep whose thief
cannot learn (50 queries, 1 epoch at lr 1e-6), on real Ray, Optuna and an MLflow sqlite store."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator import undefended as reference
from orchestrator.cli import main
from orchestrator.sweep_config import load

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FAILING_THIEF = {"name": "knockoff", "budget": 50, "query_batch": 50, "train": {"epochs": 1, "lr": 1.0e-6}}


@pytest.fixture(scope="module")
def chance_sweep(ray_session, victim_cache, tmp_path_factory):
    """`heist run` of a 2-point grid whose attack stays at chance: (exit code, stdout, stderr, config, folder)."""
    folder = tmp_path_factory.mktemp("chance")
    data = {"name": "chance", "victim": {"dataset": "digits", "train": {"epochs": 5}},
            "defense": {"name": "reverse_sigmoid", "params": {"beta": [0.1, 1.0]}},
            "attacks": [FAILING_THIEF], "service": {"num_cpus": 0.25}, "workers": {"num_cpus": 0.25},
            "trial_resources": {"num_cpus": 0.5}, "search": {"algorithm": "grid"},
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"}, "storage": str(folder / "runs"),
            "cache_dir": victim_cache}
    path = folder / "chance.yaml"
    path.write_text(yaml.safe_dump(data))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(path)])
    return code, out.getvalue(), err.getvalue(), load(path), folder


def runs(cfg):
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("chance").experiment_id
    parent, = client.search_runs([exp], "tags.`heist.kind` = 'sweep'")
    return client, parent, client.search_runs([exp], "tags.`heist.kind` = 'trial'")


def test_a_sweep_whose_undefended_attack_is_at_chance_warns(chance_sweep):
    code, _, err, cfg, _ = chance_sweep
    assert code == 0
    lines = [line for line in err.splitlines() if "does not steal even undefended" in line]
    assert len(lines) == 1 and lines[0].startswith("heist: warning: the attack does not steal even undefended "
                                                   "(knockoff_soft_split: stolen accuracy 0.")
    assert lines[0].endswith("raise its budget or training")


def test_the_reference_is_cached_logged_on_the_parent_and_subtracted_from_each_trial(chance_sweep):
    _, out, _, cfg, _ = chance_sweep
    cached = reference.undefended(cfg.base_trial())          # no Ray task: it comes from the cache
    assert cached.from_cache and Path(cached.path).parent.parent.name == cfg.victim.key
    assert json.loads(Path(cached.path).read_text())["metrics"] == cached.metrics
    _, parent, children = runs(cfg)
    assert reference.from_run(parent)["stolen_accuracy"] == pytest.approx(cached.metrics["stolen_accuracy"])
    assert len(children) == 2
    for run in children:
        m = run.data.metrics
        assert m["stolen_accuracy_vs_undefended"] == pytest.approx(
            m["stolen_accuracy"] - cached.metrics["stolen_accuracy"])
        assert m["stolen_accuracy_vs_undefended/knockoff_soft_split"] == pytest.approx(
            m["stolen_accuracy/knockoff_soft_split"] - cached.metrics["stolen_accuracy/knockoff_soft_split"])
    assert "undefended reference: defended_accuracy=" in out


def test_the_reference_key_follows_what_decides_its_numbers(chance_sweep):
    _, _, _, cfg, _ = chance_sweep
    base = cfg.base_trial()
    more_queries = base | {"attacks": [base["attacks"][0] | {"budget": 60}]}
    other_resources = base | {"cache_dir": "/elsewhere"}
    assert reference.key(more_queries) != reference.key(base) == reference.key(other_resources)


def test_child_runs_carry_qualified_params_real_times_and_the_parent_the_frontier(chance_sweep):
    _, _, _, cfg, folder = chance_sweep
    _, parent, children = runs(cfg)
    recorded = {r["trial_id"]: r for p in (folder / "runs").glob("*/results/*.json") for r in [json.loads(p.read_text())]}
    for run in children:
        assert set(run.data.params) == {"defense", "reverse_sigmoid.beta", "reverse_sigmoid.gamma"}
        record = recorded[run.data.tags["heist.trial_id"]]              # the trial's own times, not the logging's
        assert (run.info.start_time, run.info.end_time) == (int(record["started"] * 1000), int(record["ended"] * 1000))
        assert run.info.end_time > run.info.start_time >= parent.info.start_time
    note = parent.data.tags["mlflow.note.content"]
    assert "**Pareto frontier**" in note and "| trial_id | defense | hyperparameters |" in note
    assert "undefended reference (no defense, same attacks): defended_accuracy=" in note


def test_progress_replaces_tunes_table(chance_sweep):
    _, out, err, cfg, folder = chance_sweep
    finished = [line for line in out.splitlines() if line.startswith("[")]
    assert [line[:5] for line in finished] == ["[1/2]", "[2/2]"]
    assert all("reverse_sigmoid beta=" in line and "defended_accuracy 0." in line and "stolen_accuracy 0." in line
               for line in finished)
    assert "ETA" in finished[0] and finished[1].endswith("done")
    assert "Trial status" not in out + err and "TERMINATED" not in out + err
    (sweep_dir,) = (folder / "runs").glob("chance-*")
    assert (sweep_dir / "tune.log").stat().st_size > 0


def snapshot(folder: Path) -> dict:
    """Every file of the store (database and artifacts) with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".yaml" and "runs" not in p.parts}


def test_pareto_prints_without_touching_the_store_unless_asked(chance_sweep, capsys):
    _, _, _, cfg, folder = chance_sweep
    client, parent, _ = runs(cfg)
    before = snapshot(folder)
    capsys.readouterr()
    assert main(["pareto", "chance", "--tracking-uri", cfg.tracking.uri]) == 0
    assert snapshot(folder) == before                           # not a byte of the database or artifacts changed
    out = capsys.readouterr().out
    assert "Pareto frontier of sweep chance-" in out and "nothing was written" in out
    assert main(["pareto", "chance", "--tracking-uri", cfg.tracking.uri, "--write"]) == 0
    assert len(client.get_metric_history(parent.info.run_id, "hypervolume")) == 2


def test_pareto_never_creates_a_store(tmp_path, capsys):
    missing = tmp_path / "nowhere.db"
    assert main(["pareto", "chance", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not missing.exists()


def test_near_chance_is_judged_against_the_gap_from_chance_to_the_victim():
    ok = reference.Reference({"victim_accuracy": 0.9, "stolen_accuracy/a": 0.5, "stolen_accuracy/b": 0.17}, 10, "")
    assert ok.failed_attacks() == {"b": 0.17} and len(ok.warnings()) == 1


def test_the_optuna_study_carries_the_objective_names(chance_sweep):
    import optuna

    _, _, _, cfg, folder = chance_sweep
    (sweep_dir,) = (folder / "runs").glob("chance-*")
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert study.metric_names == ["defended_accuracy", "stolen_accuracy"]

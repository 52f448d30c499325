"""Every sweep YAML under sweeps/ validates, says how to launch it, and holds what its name promises."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.sweep_config import load

SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_validates_and_its_header_has_the_launch_commands(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert f"name: {path.stem}" in capsys.readouterr().out
    header = path.read_text().split("\n\n")[0]
    assert f"heist run sweeps/{path.name}" in header
    submit = "ray job submit --address http://HEAD:8265 --working-dir . -- python -m orchestrator run"
    assert f"{submit} sweeps/{path.name}" in header


def test_the_quickstart_is_dcp_and_reverse_sigmoid_against_knockoff_soft_and_hard_on_digits():
    cfg = load(SWEEPS[0].parent / "quickstart.yaml")
    assert cfg.victim.dataset == "digits"
    assert [sp.name for sp in cfg.spaces] == ["dcp", "reverse_sigmoid"]
    assert [(a.name, a.labels) for a in cfg.attacks] == [("knockoff", "soft"), ("knockoff", "hard")]


def test_the_fashion_mnist_sweep_covers_four_defenses_two_attacks_and_16_trials_or_more():
    cfg = load(SWEEPS[0].parent / "fashion_mnist_perturbation.yaml")
    assert cfg.victim.dataset == "fashion_mnist"
    assert {sp.name for sp in cfg.spaces} == {"dcp", "reverse_sigmoid", "mad", "adaptive_misinformation"}
    assert {a.name for a in cfg.attacks} == {"knockoff", "copycat"}
    assert cfg.num_samples >= 16

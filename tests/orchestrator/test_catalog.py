"""The knob reference comes from the registries: `heist list`, `heist describe`, docs/reference.md."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator import catalog
from orchestrator.cli import main

DOC = Path(__file__).parents[2] / "docs" / "reference.md"

TOY_ATTACK = '''
"""Toy attack: the substitute is trained on one batch of the pool (a test module, not a method)."""
import dataclasses

from workloads.attacks import register
from workloads.attacks.transfer import query_and_train, sample_queries
from workloads.config import knob, positive


@dataclasses.dataclass(frozen=True)
class ToyParams:
    fraction: float = knob(0.5, "share of the budget actually spent", "(0, 1]")

    def __post_init__(self):
        positive("fraction", self.fraction, 1e-9)


@register("toy_attack", ToyParams, labels="hard")
def steal(cfg, params, client, pool, victim, checkpoint=None):
    n = max(1, int(cfg.budget * params.fraction))
    return query_and_train(cfg, client, sample_queries(pool, n, cfg.seed), victim, checkpoint)
'''


def test_docs_reference_is_in_step_with_the_registries():
    assert DOC.read_text() == catalog.markdown(), \
        "docs/reference.md is out of step with the registries: run `heist list --markdown > docs/reference.md`"


def test_every_existing_defense_parameter_has_a_meaning_and_a_range():
    for entry in catalog.entries("defenses"):
        for knob in entry.knobs:
            assert knob.help and knob.valid, f"{entry.name}.{knob.name}"


def test_every_attack_and_hardening_parameter_has_a_meaning():
    for kind in ("attacks", "hardening"):
        for entry in catalog.entries(kind):
            for knob in entry.knobs:
                assert knob.help, f"{kind}: {entry.name}.{knob.name} has no meaning (declare it with knob())"


def test_a_preset_that_only_changes_defaults_keeps_its_parents_meanings():
    maze = {k.name: k for k in next(e for e in catalog.entries("attacks") if e.name == "maze").knobs}
    dfme = {k.name: k for k in next(e for e in catalog.entries("attacks") if e.name == "dfme").knobs}
    assert maze["loss"].default == "'kl'" and dfme["loss"].default == "'l1'"
    assert maze["loss"].help == dfme["loss"].help != ""


def test_describe_shows_default_range_and_meaning(capsys):
    assert main(["describe", "dcp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dcp (defense)\n  DCP: Khaled")
    assert "    beta: float = 0.5, >= 0 — confidence threshold and perturbation size" in out
    assert main(["describe", "none"]) == 0
    assert "none (defense)" in capsys.readouterr().out
    assert main(["describe", "dpc"]) == 2
    assert "did you mean 'dcp'" in capsys.readouterr().err


def test_list_by_kind(capsys):
    assert main(["list", "defenses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "defenses:" and any(line.split()[:2] == ["reverse_sigmoid", "beta=1.0,"] for line in lines)
    assert main(["list", "modelz"]) == 2


@pytest.fixture
def toy_attack_module(tmp_path):
    """A new attack module dropped into the attacks package (a second package directory stands in for the
    source tree); removed again afterwards."""
    import workloads.attacks as attacks

    (tmp_path / "toy_attack.py").write_text(textwrap.dedent(TOY_ATTACK))
    attacks.__path__.append(str(tmp_path))
    yield
    attacks.__path__.remove(str(tmp_path))
    attacks.REGISTRY.pop("toy_attack", None)
    sys.modules.pop("workloads.attacks.toy_attack", None)


def test_adding_an_attack_module_needs_no_other_edit(toy_attack_module, digits_victim, capsys):
    from orchestrator.config import trial_config
    from workloads.attacks import LocalQueryClient, VictimInfo, steal
    from workloads.metrics import accuracy
    from workloads.training import predict_proba

    cfg = trial_config({"attacks": [{"name": "toy_attack", "budget": 800, "params": {"fraction": 0.5},
                                     "train": {"epochs": 15}}]}).attacks[0]
    assert cfg.labels == "hard" and cfg.key == "toy_attack_hard_split"
    client = LocalQueryClient(lambda x: predict_proba(digits_victim.model, x), cfg.budget)
    data = digits_victim.data
    substitute = steal(cfg, client, data.x_pool, VictimInfo(data.shape, data.num_classes, "lenet5"))
    assert client.used == 400
    assert accuracy(predict_proba(substitute, data.x_test), data.y_test) > 1.5 / data.num_classes
    assert main(["describe", "toy_attack"]) == 0
    assert "fraction: float = 0.5, (0, 1] — share of the budget actually spent" in capsys.readouterr().out
    assert "### `toy_attack`" in catalog.markdown() and "### `toy_attack`" not in DOC.read_text()
    with pytest.raises(Exception, match="fraction"):
        trial_config({"attacks": [{"name": "toy_attack", "params": {"fraction": 0}}]})

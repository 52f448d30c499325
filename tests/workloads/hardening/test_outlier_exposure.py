"""Outlier Exposure (Hendrycks et al., ICLR 2019): the uniform cross-entropy term by hand, and a victim trained
with it that is unsure on OOD inputs where the plainly trained one is confident."""
from __future__ import annotations

import math

import pytest
import torch

from workloads.config import ConfigError, parse
from workloads.hardening import HardeningConfig
from workloads.hardening.outlier_exposure import uniform_cross_entropy
from workloads.training import predict_proba
from workloads.victims import VictimConfig, load_or_train


def test_uniform_cross_entropy_by_hand():
    # −mean_k log softmax_k: ln 2 for equal logits; for (ln 3, 0): −½(ln ¾ + ln ¼)
    assert uniform_cross_entropy(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(math.log(2))
    assert uniform_cross_entropy(torch.tensor([[math.log(3), 0.0]])).item() == pytest.approx(
        -0.5 * (math.log(0.75) + math.log(0.25)))


def test_an_oe_victim_is_unsure_on_ood_inputs_and_keeps_its_accuracy(digits_victim, victim_cache):
    plain = digits_victim       # the same data, architecture and training settings, without OE
    oe = load_or_train(VictimConfig(hardening=HardeningConfig("outlier_exposure", {"ood": {"kind": "noise"}})),
                       victim_cache)
    assert set(oe.training) == {"train_seconds", "loss_ce", "loss_oe", "epochs"}
    probe = torch.rand((500, *plain.data.shape), generator=torch.Generator().manual_seed(123))
    confidence = lambda v: predict_proba(v.model, probe).max(1).values.mean().item()
    assert confidence(oe) < 0.3 < confidence(plain)
    assert oe.accuracy > plain.accuracy - 0.05


def test_a_negative_weight_is_named():
    with pytest.raises(ConfigError) as e:
        parse(VictimConfig, {"hardening": {"name": "outlier_exposure", "params": {"lam": -1}}}, "victim")
    assert e.value.errors == ["victim.hardening.params.lam: expected >= 0, got -1.0"]

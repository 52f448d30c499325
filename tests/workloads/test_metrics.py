"""The metrics every trial reports, on small hand-made inputs."""
import pytest
import torch

from workloads import metrics as M

P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])


def test_accuracy_counts_argmax_hits():
    assert M.accuracy(P, torch.tensor([0, 2, 2])) == pytest.approx(2 / 3)


def test_fidelity_is_argmax_agreement_with_the_reference_given():
    victim = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [0.0, 0.0, 1.0]])
    defended = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [1.0, 0.0, 0.0]])
    assert M.fidelity(P, victim) == pytest.approx(2 / 3)       # vs the clean victim
    assert M.fidelity(P, defended) == pytest.approx(2 / 3)     # agreement: vs what the defense answered
    assert M.fidelity(P[:2], defended[:2]) == pytest.approx(1.0)
    assert M.fidelity(P[:2], victim[:2]) == pytest.approx(0.5)


def test_perturbation_l1_is_the_mean_row_l1_distance():
    q = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.5, 0.4], [1.0, 0.0, 0.0]])
    assert M.perturbation_l1(q, P) == pytest.approx((0.4 + 0.0 + 1.4) / 3)


def test_relative_accuracy_and_its_zero_victim_guard():
    assert M.relative_accuracy(0.45, 0.9) == pytest.approx(0.5)
    assert M.relative_accuracy(0.3, 0.0) == 0.0

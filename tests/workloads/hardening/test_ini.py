"""InI (Guo et al., ACM MM'23): each loss term by hand, the isolation term's double backprop, PCGrad, the
training record, the victim cache, and every bad input with the field it names."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from workloads.config import ConfigError, parse
from workloads.hardening import HardeningConfig, HardeningContext
from workloads.hardening.ini import IniParams, distillation_kl, loss_terms, output_distance, pcgrad, step
from workloads.hardening.ood import OodSource
from workloads.training import TrainConfig
from workloads.victims import VictimConfig, load_or_train

TINY = TrainConfig(epochs=1, batch_size=64)
NOISE = {"kind": "noise", "size": 256}


def ini_victim(**params) -> VictimConfig:
    return VictimConfig(train=TINY, hardening=HardeningConfig("ini", {"epochs": 1, "ood": NOISE} | params))


def errors(**params) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(VictimConfig, {"hardening": {"name": "ini", "params": params}}, "victim")
    return e.value.errors


# ------------------------------------------------------------------------------ each term by hand
def linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_output_distance_and_distillation_kl_by_hand():
    ln3 = math.log(3)
    # V uniform: centred log-probs are 0, so d is the mean |S logit|
    assert output_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -2.0]])).item() == pytest.approx(1.5)
    # V = (3/4, 1/4): centred log-probs ±ln3/2
    assert output_distance(torch.tensor([[ln3, 0.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(ln3 / 2)
    # KL((1/2, 1/2) ‖ (3/4, 1/4)) = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3); the argument order matters
    assert distillation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[ln3, 0.0]])).item() == pytest.approx(
        0.5 * math.log(4 / 3))
    assert distillation_kl(torch.tensor([[ln3, 0.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def _closed_form_grads(s: nn.Linear, v: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    """∇ of KL(S‖V) and of CE(S, y) w.r.t. a linear S's (weight, bias), written out: dKL/dz = p(log p − log q − KL)."""
    with torch.no_grad():
        zs, zv = x @ s.weight.T + s.bias, x @ v.weight.T + v.bias
        p, q = zs.softmax(1), zv.softmax(1)
        kl = (p * (p.log() - q.log())).sum(1, keepdim=True)
        dz_kl = p * (p.log() - q.log() - kl) / len(x)
        dz_ce = (p - torch.eye(2)[y]) / len(x)
        flat = lambda dz: torch.cat([(dz.T @ x).flatten(), dz.sum(0)])
        return flat(dz_kl), flat(dz_ce)


def test_each_loss_term_matches_a_hand_computation_on_a_tiny_model():
    v, s = linear([[1.0, -1.0], [0.5, 2.0]], [0.1, -0.2]), linear([[-0.3, 0.8], [1.2, 0.4]], [0.0, 0.3])
    x, y = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]]), torch.tensor([0, 1, 1])
    x_ood = torch.tensor([[2.0, -1.0], [0.0, 1.5]])
    terms = loss_terms(v, s, x, y, x_ood, {"ce", "id", "ood", "gid", "good"})

    with torch.no_grad():
        zv, zs = x @ v.weight.T + v.bias, x @ s.weight.T + s.bias
        zv_ood, zs_ood = x_ood @ v.weight.T + v.bias, x_ood @ s.weight.T + s.bias
        logp = zv - zv.logsumexp(1, keepdim=True)
        logp_ood = zv_ood - zv_ood.logsumexp(1, keepdim=True)
        centred = lambda lp: lp - lp.mean(1, keepdim=True)
        assert terms["ce"].item() == pytest.approx(-logp[torch.arange(3), y].mean().item(), rel=1e-5)
        assert terms["id"].item() == pytest.approx(-(zs - centred(logp)).abs().mean().item(), rel=1e-5)
        assert terms["ood"].item() == pytest.approx((zs_ood - centred(logp_ood)).abs().mean().item(), rel=1e-5)
    g_adv, g_exp = _closed_form_grads(s, v, x, y)
    assert terms["gid"].item() == pytest.approx((g_adv @ g_exp / (g_adv.norm() * g_exp.norm())).item(), rel=1e-4)
    g_ood, _ = _closed_form_grads(s, v, x_ood, torch.tensor([0, 0]))
    assert terms["good"].item() == pytest.approx(g_ood.abs().mean().item(), rel=1e-4)

    entropy = loss_terms(v, s, x, y, x_ood, {"ce", "ood"}, use_ie=True)["ood"]
    assert entropy.item() == pytest.approx((logp_ood.exp() * logp_ood).sum(1).mean().item(), rel=1e-5)


# ------------------------------------------------------------------- the isolation term's gradient
def test_the_isolation_terms_reach_the_victim_and_leave_the_frozen_surrogate_alone():
    torch.manual_seed(0)
    v, s = linear([[1.0, -1.0], [0.5, 2.0]], [0.1, -0.2]), linear([[-0.3, 0.8], [1.2, 0.4]], [0.0, 0.3])
    x, y, x_ood = torch.randn(8, 2), torch.randint(0, 2, (8,)), torch.randn(8, 2)
    terms = loss_terms(v, s, x, y, x_ood, {"ce", "gid", "good"})
    for name in ("gid", "good"):   # double backprop: differentiable w.r.t. V through ∇_θS
        grads = torch.autograd.grad(terms[name], list(v.parameters()), retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads), name

    s_before = [p.detach().clone() for p in s.parameters()]
    v_before = [p.detach().clone() for p in v.parameters()]
    params = IniParams(gamma=0.0, delta=1.0, epsilon=1000.0, pcgrad=False)
    step(v, s, torch.optim.SGD(v.parameters(), lr=0.1), x, y, x_ood, params, torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in s.parameters())
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), s_before))
    assert not any(torch.equal(a, b) for a, b in zip(v.parameters(), v_before))


# -------------------------------------------------------------------------------------------- PCGrad
def test_pcgrad_projects_two_conflicting_gradients_and_averages():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])      # g1·g2 = −1 < 0
    # g1 − (g1·g2)/|g2|² g2 = (½, ½); g2 − (g2·g1)/|g1|² g1 = (0, 1); mean over the two tasks
    (merged,) = pcgrad([[g1], [g2]], torch.Generator().manual_seed(0))
    assert torch.allclose(merged, torch.tensor([0.25, 0.75]))
    (agreeing,) = pcgrad([[g1], [torch.tensor([1.0, 1.0])]], torch.Generator().manual_seed(0))
    assert torch.allclose(agreeing, torch.tensor([1.0, 0.5]))         # no conflict: the plain mean


def test_pcgrad_sums_parameters_only_some_tasks_reach():
    shared, only_second = pcgrad([[torch.tensor([2.0]), None], [torch.tensor([4.0]), torch.tensor([3.0])]],
                                 torch.Generator().manual_seed(0))
    assert shared.item() == pytest.approx(3.0) and only_second.item() == pytest.approx(3.0)


# ---------------------------------------------------------------------- training record and cache
def test_training_records_every_active_term_and_the_cache_hits_the_same_config(tmp_path):
    first = load_or_train(ini_victim(), tmp_path)
    assert not first.from_cache
    assert set(first.training) == {"train_seconds", "loss_ce", "loss_ood", "loss_gid", "loss_good", "epochs",
                                   "epoch_seconds"}
    assert first.training["epochs"] == 1 and -1 <= first.training["loss_gid"] <= 1
    again = load_or_train(ini_victim(), tmp_path)
    assert again.from_cache and again.training == first.training
    assert all(torch.equal(a, b) for a, b in zip(again.model.parameters(), first.model.parameters()))


def test_every_ini_parameter_is_part_of_the_victim_key(tmp_path):
    state = tmp_path / "s.pt"
    torch.save({}, state)
    changed = {"beta": 0.1, "gamma": 0.5, "delta": 2.0, "epsilon": 10.0, "pcgrad": False, "use_ie": True,
               "ood": {"kind": "dataset", "name": "mnist"}, "surrogate_path": str(state), "epochs": 2, "lr": 0.05,
               "momentum": 0.9, "weight_decay": 0.0, "lr_step": 5, "lr_gamma": 0.5, "max_grad_norm": 1.0}
    assert set(changed) == {f.name for f in dataclasses.fields(IniParams)}
    base = ini_victim().key
    keys = {name: ini_victim(**{name: value}).key for name, value in changed.items()}
    assert base not in keys.values() and len(set(keys.values())) == len(keys)
    assert ini_victim(gamma=0.3).key == base                                    # an explicit default is no change


# ------------------------------------------------------------------------------------------ bad input
def test_negative_weights_are_named():
    assert errors(gamma=-0.1) == ["victim.hardening.params.gamma: expected >= 0, got -0.1"]
    assert errors(epsilon=-1) == ["victim.hardening.params.epsilon: expected >= 0, got -1.0"]


def test_pcgrad_needs_two_active_terms():
    (message,) = errors(gamma=0, delta=0, epsilon=0)
    assert message.startswith("victim.hardening.params.pcgrad: needs at least two active loss terms")
    assert IniParams(gamma=0, delta=0, epsilon=0, pcgrad=False).weights() == {"ce": 1.0}


def test_ood_sources_are_checked(tmp_path):
    assert errors(ood={"kind": "dataset", "name": "mnsit"})[0].startswith(
        "victim.hardening.params.ood.name: unknown value 'mnsit' (did you mean 'mnist'?)")
    # a partial `ood` mapping keeps the documented default name (digits); naming none is an error
    assert errors(ood={"kind": "dataset", "name": None}) == [
        "victim.hardening.params.ood.name: required when kind is 'dataset'"]
    assert errors(surrogate_path=str(tmp_path / "none.pt")) == [
        f"victim.hardening.params.surrogate_path: no such file {str(tmp_path / 'none.pt')!r}"]


def test_ood_images_that_cannot_take_the_victims_shape_fail_before_training(tmp_path):
    digits_ood = {"ood": {"kind": "dataset", "name": "digits"}}
    with pytest.raises(ConfigError, match=r"^victim\.hardening\.params\.ood\.name: 'digits' is the victim's own"):
        load_or_train(ini_victim(**digits_ood), tmp_path)
    from workloads.data import load_dataset
    from workloads.hardening.ini import train

    fmnist_like = load_dataset("digits")
    fmnist_like = dataclasses.replace(fmnist_like, name="other", x_train=torch.zeros(4, 1, 28, 28))
    ctx = HardeningContext(nn.Linear(1, 1), fmnist_like, TINY, "lenet5", 0)
    with pytest.raises(ConfigError) as e:
        train(IniParams(ood=OodSource("dataset", "digits", resize=False)), ctx)
    assert str(e.value) == ("victim.hardening.params.ood.resize: 'digits' images are 8x8, the victim's 28x28; "
                            "set resize: true or pick a 28x28 source")
    two_channels = dataclasses.replace(fmnist_like, x_train=torch.zeros(4, 2, 8, 8))
    with pytest.raises(ConfigError, match=r"^victim\.hardening\.params\.ood\.name: 'digits' images have 1 channels"):
        train(IniParams(ood=OodSource("dataset", "digits")), dataclasses.replace(ctx, data=two_channels))


def test_a_surrogate_checkpoint_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "s.pt"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ConfigError, match=r"^victim\.hardening\.params\.surrogate_path: .* is not a lenet5 state dict"):
        load_or_train(ini_victim(surrogate_path=str(path)), tmp_path)

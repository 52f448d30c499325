"""Budget curves both ways: fresh substitutes on the first c answers (retrain) or the attack's own (online)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.attacks import AttackConfig, LocalQueryClient, VictimInfo
from workloads.attacks.curve import CurveClient
from workloads.attacks.transfer import train_on_answers
from workloads.training import TrainConfig

INFO = VictimInfo((1, 8, 8), 10, "lenet5")


def test_the_retrain_track_uses_the_first_c_answers_and_a_requeried_point_once_with_its_latest_answer():
    cfg = AttackConfig(name="jbda", budget=20, params={"seed_size": 3}, checkpoints=[6, 8])
    answers = iter([np.eye(10, dtype=np.float32)[[0, 1, 2]], np.eye(10, dtype=np.float32)[[5, 6, 7, 8, 9]]])
    client = CurveClient(LocalQueryClient(lambda x: torch.from_numpy(next(answers)), 20), cfg, INFO, lambda q, s: None)
    x = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 1, 8, 8)
    client.query(x[:3], ids=np.arange(3))
    client.query(x, ids=np.arange(5))                       # re-labels 0..2, adds 3 and 4
    first6, y6 = client._first(6)
    assert first6[:, 0, 0, 0].tolist() == [0, 1, 2] and y6.argmax(1).tolist() == [5, 6, 7]
    first8, y8 = client._first(8)
    assert first8[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4] and y8.argmax(1).tolist() == [5, 6, 7, 8, 9]


def test_knockoff_retrain_points_are_fresh_substitutes_on_the_first_answers(run_attack, digits_victim, same_weights):
    points = {}
    sub, client = run_attack(name="knockoff", budget=120, checkpoints=[50, 120],
                             checkpoint=lambda q, s: points.setdefault(q, s))
    assert list(points) == [50, 120] and len(client.queries) == 1 and points[120] is sub
    x = torch.from_numpy(client.queries[0][:50])
    y = digits_victim.model.eval()(x).softmax(1).detach().numpy()
    cfg = AttackConfig(name="knockoff", budget=120)
    fresh = train_on_answers(x, y, "soft", "lenet5", INFO, TrainConfig(epochs=2, batch_size=32, lr=0.003), cfg.seed)
    assert same_weights(points[50], fresh)


def test_knockoff_online_queries_in_segments_and_keeps_training_one_substitute(run_attack, same_weights):
    seen = []
    sub, client = run_attack(name="knockoff", budget=120, checkpoints=[50, 80], curve="online",
                             checkpoint=lambda q, s: seen.append((q, s)))
    assert [len(q) for q in client.queries] == [50, 30, 40] and [q for q, _ in seen] == [50, 80, 120, 120]
    assert all(s is sub for _, s in seen)                  # the same module, trained on as answers arrive
    retrained, _ = run_attack(name="knockoff", budget=120, checkpoints=[50, 80])
    assert not same_weights(sub, retrained)


@pytest.mark.parametrize("name,params", [("activethief", {"seed_size": 20, "rounds": 2}),
                                         ("jbda", {"seed_size": 20, "rounds": 3})])
def test_online_points_are_the_attacks_own_substitute_after_each_round(run_attack, name, params):
    seen = []
    sub, _ = run_attack(name=name, budget=80, params=params, checkpoints=[20, 80], curve="online",
                        checkpoint=lambda q, s: seen.append((q, s)))      # references: ids stay unique
    assert [q for q, _ in seen][:3] == ([20, 50, 80] if name == "activethief" else [20, 40, 80])
    assert len({id(s) for _, s in seen}) >= 3 and seen[-1][0] == 80 and seen[-1][1] is sub


@pytest.mark.parametrize("name", ["dfme", "maze", "megex"])
def test_data_free_attacks_measure_their_curve_online_and_refuse_retrain(name):
    assert AttackConfig(name=name, budget=4000).curve == "online"       # the student, trained as queries arrive
    assert AttackConfig(name="knockoff", budget=4000).curve == "retrain"
    with pytest.raises(Exception, match=rf"curve: {name} measures its budget curve only as online, got 'retrain'"):
        AttackConfig(name=name, budget=4000, curve="retrain")

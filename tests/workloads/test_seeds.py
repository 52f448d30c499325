"""Seed streams: every role draws from its own stream, so a thief never starts from the victim's weights."""
import pytest
import torch

from workloads.attacks import AttackConfig, VictimInfo
from workloads.attacks.transfer import new_substitute
from workloads.seeds import ROLES, derive_seed
from workloads.victims import VictimConfig, initial_model


def test_roles_get_distinct_seeds_from_the_same_integer():
    seeds = [derive_seed(role, 0) for role in ROLES]
    assert len(set(seeds)) == len(ROLES)
    assert derive_seed("victim/init", 0) == derive_seed("victim/init", 0) != derive_seed("victim/init", 1)


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="victim/inti"):
        derive_seed("victim/inti", 0)


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_substitute_never_starts_from_the_victims_weights_under_default_configs():
    victim_cfg, attack = VictimConfig(), AttackConfig()
    data = victim_cfg.load_data()
    victim = initial_model(victim_cfg, data)
    substitute = new_substitute(victim_cfg.arch, VictimInfo(data.shape, data.num_classes, "lenet5"), attack.seed)
    assert victim_cfg.seed == attack.seed == 0      # the defaults every shipped YAML relies on
    assert not _same_weights(victim, substitute)
    assert not any(torch.equal(p, q) for p, q in zip(victim.parameters(), substitute.parameters()))


def test_defense_surrogates_are_independent_of_victim_and_thief():
    from workloads.models import build_model

    data = VictimConfig().load_data()
    info = VictimInfo(data.shape, data.num_classes, "lenet5")
    mad_surrogate = build_model("lenet5", data.shape, 10, seed=derive_seed("defense/surrogate", 0))
    assert not _same_weights(mad_surrogate, new_substitute("lenet5", info, 0))
    assert not _same_weights(mad_surrogate, initial_model(VictimConfig(), data))

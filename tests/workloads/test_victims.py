"""Victim cache: the same config is trained once and then loaded; another config trains another victim."""
import dataclasses

import torch

from workloads.training import TrainConfig
from workloads.victims import VictimConfig, load_or_train


def test_digits_victim_is_accurate(digits_victim):
    assert digits_victim.accuracy >= 0.9


def test_cached_victim_is_loaded_not_retrained(digits_victim, victim_cache):
    again = load_or_train(VictimConfig(), victim_cache)
    assert again.from_cache and again.accuracy == digits_victim.accuracy
    assert all(torch.equal(p, q) for p, q in zip(again.model.parameters(), digits_victim.model.parameters()))


def test_cache_key_is_a_content_hash_of_the_config():
    base = VictimConfig()
    assert base.key == VictimConfig().key
    assert base.key != dataclasses.replace(base, seed=1).key
    assert base.key != dataclasses.replace(base, train=TrainConfig(epochs=2)).key
    assert base.key == dataclasses.replace(base, data_root="/elsewhere").key

"""Victim cache: the same config is trained once and then loaded; another config trains another victim."""
import dataclasses

import pytest
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


def test_checkpoint_victim_serves_its_own_weights_keyed_by_their_bytes(digits_victim, tmp_path):
    from workloads.config import ConfigError, parse
    from workloads.models import build_model

    path = tmp_path / "mine.pt"
    torch.save(digits_victim.model.state_dict(), path)
    cfg = VictimConfig(checkpoint=str(path))
    loaded = load_or_train(cfg)
    assert loaded.accuracy == digits_victim.accuracy
    assert all(torch.equal(p, q) for p, q in zip(loaded.model.parameters(), digits_victim.model.parameters()))
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(path.read_bytes())
    assert cfg.key == VictimConfig(checkpoint=str(copy)).key != VictimConfig().key    # bytes, not the path
    other = build_model("lenet5", digits_victim.data.shape, 10, seed=5)
    torch.save(other.state_dict(), copy)
    assert VictimConfig(checkpoint=str(copy)).key != cfg.key
    wrong = tmp_path / "cifar_shaped.pt"
    torch.save(build_model("lenet5", (3, 32, 32), 10).state_dict(), wrong)
    with pytest.raises(ConfigError) as e:
        load_or_train(parse(VictimConfig, {"checkpoint": str(wrong)}))
    (line,) = e.value.errors
    assert line.startswith(f"victim.checkpoint: {wrong}: does not fit arch 'lenet5'") and "\n" not in line
    assert "of another shape (first" in line

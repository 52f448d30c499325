"""Typed configs: every invalid field is reported with its path, before any work starts."""
import dataclasses

import pytest

from orchestrator.config import trial_config
from workloads.config import ConfigError, parse
from workloads.training import TrainConfig


def errors_of(data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        trial_config(data)
    return e.value.errors


def test_defaults_build_a_complete_trial():
    cfg = trial_config({})
    assert cfg.victim.dataset == "digits" and cfg.attacks[0].name == "knockoff"


def test_unknown_key_suggests_the_closest_one():
    assert errors_of({"servce": {}}) == ["servce: unknown key (did you mean 'service'?)"]


def test_every_error_is_reported_with_its_path():
    errs = errors_of({"victim": {"dataset": "digitz", "train": {"epochs": "ten"}},
                      "attacks": [{"name": "knockof"}, {"budget": 0}]})
    assert any(e.startswith("victim.train.epochs: expected an integer, got 'ten'") for e in errs)
    assert any(e.startswith("attacks[0].name: unknown value 'knockof' (did you mean 'knockoff'?)") for e in errs)
    assert "attacks[1].budget: expected >= 1, got 0" in errs


def test_unknown_names_are_one_line_errors_naming_the_value():
    (err,) = errors_of({"victim": {"dataset": "imagenet"}})
    assert err.startswith("victim.dataset: unknown value 'imagenet'") and "\n" not in err
    (err,) = errors_of({"defense": {"name": "laplace"}})
    assert err.startswith("defense.name: unknown value 'laplace'")


def test_literal_and_number_types_are_checked():
    assert errors_of({"attacks": [{"labels": "sof"}]}) == [
        "attacks[0].labels: expected one of ['soft', 'hard'], got 'sof' (did you mean 'soft'?)"]
    assert errors_of({"service": {"max_wait_ms": float("nan")}}) == [
        "service.max_wait_ms: expected a number, got nan"]


def test_integers_are_accepted_where_numbers_are_expected():
    assert parse(TrainConfig, {"lr": 1}).lr == 1.0


def test_attack_keys_must_be_unique():
    (err,) = errors_of({"attacks": [{"name": "knockoff"}, {"name": "knockoff"}]})
    assert "share the key 'knockoff_soft_split'" in err


def test_label_mode_defaults_follow_each_paper():
    cfg = trial_config({"attacks": [{"name": "knockoff"}, {"name": "copycat"}]})
    assert [a.labels for a in cfg.attacks] == ["soft", "hard"]
    assert dataclasses.replace(cfg.attacks[0], labels="hard").labels == "hard"


def test_a_client_batch_larger_than_the_service_accepts_is_rejected_up_front():
    (err,) = errors_of({"service": {"max_request": 100}, "attacks": [{"query_batch": 256}]})
    assert err == "attacks[0].query_batch: 256 images per request exceeds service.max_request (100)"


def test_a_partial_block_overrides_only_the_keys_it_names():
    """`train: {epochs: 5}` keeps the documented defaults of its siblings (the field's default instance),
    not the class defaults of TrainConfig (batch 128, lr 1e-3)."""
    cfg = trial_config({"victim": {"train": {"epochs": 5}}, "attacks": [{"train": {"batch_size": 32}}],
                        "service": {"max_batch": 64}})
    assert cfg.victim.train == dataclasses.replace(trial_config({}).victim.train, epochs=5)
    assert (cfg.victim.train.batch_size, cfg.victim.train.lr) == (64, 2e-3)
    assert (cfg.attacks[0].train.epochs, cfg.attacks[0].train.batch_size, cfg.attacks[0].train.lr) == (30, 32, 1e-3)
    assert cfg.service.max_request == 4096 and cfg.service.max_batch == 64


def test_a_partial_block_still_reports_bad_values_with_their_path():
    assert errors_of({"victim": {"train": {"epochs": 0, "batch": 3}}}) == [
        "victim.train.batch: unknown key (did you mean 'batch_size'?)"]
    assert errors_of({"victim": {"train": {"epochs": 0}}}) == ["victim.train.epochs: expected >= 1, got 0"]


def test_a_partial_block_keeps_fields_derived_from_the_keys_it_names():
    """`search: {algorithm: grid}` derives its sampler from the algorithm; the default block's derived 'tpe' is
    not carried over."""
    from orchestrator.sweep_config import from_dict

    cfg = from_dict({"defense": {"name": "dcp", "params": {"beta": [0.5, 0.9]}}, "search": {"algorithm": "grid"}}, "x")
    assert cfg.search.sampler == "grid" and cfg.search.num_samples == 2

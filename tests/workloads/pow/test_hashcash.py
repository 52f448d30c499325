"""Hashcash stamps: minting, verifying, parsing; and the PoW knobs' one-line errors."""
import hashlib

import pytest

from workloads.config import ConfigError, parse
from workloads.pow import PowParams, hashcash
from workloads.pow.calibration import Calibration, bits_for, extra_seconds


def test_a_minted_stamp_verifies_and_counts_its_hashes():
    challenge = hashcash.challenge(12, "client/ticket")
    stamp, hashes = hashcash.mint(challenge, 12)
    assert stamp.startswith(challenge) and hashcash.stamp_zero_bits(stamp) >= 12
    assert hashes == int(hashcash.parse(stamp).counter, 16) + 1
    assert hashcash.parse(stamp).challenge == challenge
    digest = hashlib.sha1(stamp.encode()).digest()
    assert int.from_bytes(digest, "big") >> (160 - 12) == 0


def test_challenges_carry_version_bits_date_resource_and_a_fresh_salt():
    a, b = hashcash.challenge(7, "c/t", now=0), hashcash.challenge(7, "c/t", now=0)
    fields = a.split(":")
    assert fields[:5] == ["1", "7", "700101000000", "c/t", ""] and len(fields[5]) == 16 and fields[6] == ""
    assert a != b                                           # random salt
    with pytest.raises(ValueError):
        hashcash.challenge(7, "a:b")


@pytest.mark.parametrize("stamp", [None, 42, "", "1:2:3", "1:x:260101000000:r::s:0", "1:3:2601:r::s:0",
                                   "1:3:260101000000:r::s:zz", "1:3:260101000000:r::s:", "x" * 2000])
def test_malformed_stamps_are_rejected(stamp):
    with pytest.raises(hashcash.MalformedStamp):
        hashcash.parse(stamp)


def test_difficulty_follows_the_distance_from_the_benign_curve():
    curve = Calibration(slope=0.5, intercept=0.0, queries=[], costs=[])
    # at n=100 the benign cost is 50; a cost of 60 is 10 away: 2^10 s, clipped to t_max
    assert extra_seconds(60.0, 100, curve, base=2.0, t_min=0.1, t_max=5000) == pytest.approx(1024.0)
    assert extra_seconds(60.0, 100, curve, base=2.0, t_min=0.1, t_max=30.0) == 30.0
    assert extra_seconds(50.0, 100, curve, base=2.0, t_min=0.1, t_max=30.0) == 1.0
    assert extra_seconds(50.0, 100, curve, base=2.0, t_min=0.1, t_max=30.0, offset=1.0) == 0.1
    assert extra_seconds(1e9, 100, curve, base=1.5, t_min=0.1, t_max=30.0) == 30.0     # no overflow
    assert bits_for(1.0, 2 ** 20) == 20 and bits_for(1.5, 2 ** 20) == 21 and bits_for(1e-9, 1e6) == 0


@pytest.mark.parametrize("params, field", [({"t_min": 5.0, "t_max": 1.0}, "defense.params.t_min"),
                                           ({"base": 1.0}, "defense.params.base"),
                                           ({"base": 0.5}, "defense.params.base"),
                                           ({"estimator": "pate"}, "defense.params.estimator"),
                                           ({"mode": "fake"}, "defense.params.mode")])
def test_bad_knobs_are_one_line_errors_naming_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        parse(PowParams, params, "defense.params")
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(field + ":")
    assert "\n" not in e.value.errors[0]


def test_k_larger_than_the_victims_training_set_is_rejected_by_the_trial_config():
    from orchestrator.config import trial_config

    with pytest.raises(ConfigError) as e:
        trial_config({"defense": {"name": "pow", "params": {"k": 720}}})
    assert e.value.errors == ["defense.params.k: 720 neighbours exceed the victim's 719 training points (digits)"]
    assert trial_config({"defense": {"name": "pow", "params": {"k": 719}}}).defense.params == {"k": 719}

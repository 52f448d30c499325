import hashlib
import math

import numpy as np
import pytest
import torch

from workloads.defenses import ConfigError, DefenseConfig, build_defense
from workloads.defenses.gaussian import gaussian_noise_on_simplex, input_keyed_normals, project_onto_simplex

UINT64 = 2**64 - 1


def noise_by_hand(row_bytes: bytes, seed: int, k: int) -> list[float]:
    """blake2b key, then SplitMix64 at counters 1..2k, then Box–Muller — in plain Python integers."""
    key = int.from_bytes(hashlib.blake2b(row_bytes, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
                         .digest(), "little")
    uniforms = []
    for counter in range(1, 2 * k + 1):
        z = (key + counter * 0x9E3779B97F4A7C15) & UINT64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & UINT64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & UINT64
        z ^= z >> 31
        uniforms.append(((z >> 11) + 0.5) / 2**53)
    return [math.sqrt(-2 * math.log(uniforms[i])) * math.cos(2 * math.pi * uniforms[k + i]) for i in range(k)]


def projection_by_bisection(v: np.ndarray) -> np.ndarray:
    """The simplex projection max(v − θ, 0) with Σ = 1, θ found by bisection (not by sorting)."""
    low, high = v.min() - 1, v.max()
    for _ in range(200):
        theta = (low + high) / 2
        low, high = (theta, high) if np.maximum(v - theta, 0).sum() > 1 else (low, theta)
    return np.maximum(v - (low + high) / 2, 0)


def test_projection_matches_values_computed_by_hand():
    # sorted [0.8, 0.5, -0.1]: 0.8 − (0.8 − 1)/1 > 0, 0.5 − (1.3 − 1)/2 > 0, −0.1 − (1.2 − 1)/3 < 0 → ρ = 2, θ = 0.15.
    out = project_onto_simplex(torch.tensor([[0.5, 0.8, -0.1]], dtype=torch.float64))
    assert out[0].tolist() == pytest.approx([0.35, 0.65, 0.0], abs=1e-12)


def test_projection_matches_bisection_on_random_points():
    v = np.random.default_rng(0).normal(0, 1, size=(50, 7))
    out = project_onto_simplex(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(out, np.stack([projection_by_bisection(row) for row in v]), atol=1e-9)


def test_noise_is_the_documented_hash_and_counter_construction():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = input_keyed_normals(x, seed=7, num=10)
    for i in range(3):
        assert noise[i].tolist() == pytest.approx(noise_by_hand(x[i].numpy().tobytes(), 7, 10), abs=1e-12)


def test_noise_is_standard_normal_and_depends_on_input_and_seed():
    x = torch.rand(4000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = input_keyed_normals(x, seed=0, num=10)
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    assert (noise.abs() < 1).double().mean().item() == pytest.approx(0.6827, abs=0.01)
    assert not torch.equal(noise[:1], input_keyed_normals(x[:1], seed=1, num=10))
    assert not torch.equal(noise[0], noise[1])


def test_sigma_zero_releases_the_clean_posteriors():
    y = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), 1)
    y[0] = torch.nn.functional.one_hot(torch.tensor(3), 10)
    torch.testing.assert_close(gaussian_noise_on_simplex(y, torch.randn(6, 10), sigma=0.0), y)


def test_repeating_a_query_returns_the_same_noisy_answer(digits_context):
    defense = build_defense(DefenseConfig(name="gaussian", params={"sigma": 0.3}), digits_context)
    x = digits_context.dataset.x_test[:1]
    y = torch.softmax(torch.randn(1, 10, generator=torch.Generator().manual_seed(0)), 1)
    first = defense(y, x)
    averaged = torch.stack([defense(y, x) for _ in range(20)]).mean(0)
    assert (first - y).abs().sum() > 0.1
    torch.testing.assert_close(averaged, first)


def test_bad_sigma_names_the_field_and_value():
    with pytest.raises(ConfigError, match=r"sigma: .*got -0.1"):
        DefenseConfig(name="gaussian", params={"sigma": -0.1})

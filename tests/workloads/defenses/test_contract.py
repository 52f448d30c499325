"""Every registered defense, at its defaults and at stressful settings, keeps the Defense contract:
answers on the simplex and finite, batch-invariant (alone, in a batch, in a permuted batch), deterministic."""
import pytest
import torch

from workloads.defenses import REGISTRY, DefenseConfig, build_defense, ensure_loaded
from workloads.training import predict_proba

ensure_loaded()

STRESS = [("reverse_sigmoid", {"beta": 3.0, "gamma": 1.0}), ("dcp", {"beta": 1.5}), ("rounding", {"decimals": 0}),
          ("top_k", {"k": 3}), ("gaussian", {"sigma": 1.0}), ("adaptive_misinformation", {"tau": 1.0}),
          ("mad", {"epsilon": 2.0})]
CASES = [(name, {}) for name in sorted(REGISTRY)] + [(name, params) for name, params in STRESS if name in REGISTRY]
BATCH_SIZES = [1, 7, 300]
# Defenses that run a model (adaptive_misinformation, mad) see float32 round-off of ~1e-6 between a
# batched and a single-row forward pass; the others are exact.
ROUND_OFF = 1e-5


def test_every_family_is_registered():
    assert {"none", "reverse_sigmoid", "dcp", "rounding", "top_k", "gaussian", "adaptive_misinformation",
            "mad"} <= set(REGISTRY)


@pytest.fixture(scope="module")
def queries(digits_context):
    """300 test images and the victim's posteriors, the first rows replaced by edge cases."""
    x = digits_context.dataset.x_test[:300]
    probs = predict_proba(digits_context.victim, x).clone()
    k = probs.shape[1]
    probs[0] = torch.nn.functional.one_hot(torch.tensor(4), k)
    probs[1] = torch.full((k,), 1.0 / k)
    probs[2] = torch.tensor([0.5, 0.5] + [0.0] * (k - 2))
    probs[3] = torch.tensor([1.0 - 1e-6] + [1e-6 / (k - 1)] * (k - 1))
    return probs, x


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}{case[1] or ''}")
def defense(request, digits_context):
    name, params = request.param
    return build_defense(DefenseConfig(name=name, params=params), digits_context)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_answers_are_finite_probability_vectors(defense, queries, batch_size):
    probs, x = queries[0][:batch_size], queries[1][:batch_size]
    out = defense(probs, x)
    assert out.shape == probs.shape and out.dtype == probs.dtype
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones(batch_size), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_a_row_answered_alone_gets_its_answer_in_the_batch(defense, queries, batch_size):
    probs, x = queries[0][:batch_size], queries[1][:batch_size]
    alone = torch.cat([defense(probs[i:i + 1], x[i:i + 1]) for i in range(batch_size)])
    torch.testing.assert_close(defense(probs, x), alone, atol=ROUND_OFF, rtol=0)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_permuting_the_batch_permutes_the_answers(defense, queries, batch_size):
    probs, x = queries[0][:batch_size], queries[1][:batch_size]
    perm = torch.randperm(batch_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(defense(probs[perm], x[perm]), defense(probs, x)[perm], atol=ROUND_OFF, rtol=0)


def test_the_same_query_gets_the_same_answer(defense, queries):
    probs, x = queries
    assert torch.equal(defense(probs, x), defense(probs, x))


def test_a_non_finite_row_neither_raises_nor_touches_the_other_rows(defense, queries):
    """NaN-safe: a row whose posteriors are NaN (a victim whose logits overflowed) is the only row it can change."""
    probs, x = queries[0][:7].clone(), queries[1][:7].clone()
    expected = defense(probs, x)
    probs[3], x[3] = float("nan"), 3e38
    out = defense(probs, x)
    others = [0, 1, 2, 4, 5, 6]
    torch.testing.assert_close(out[others], expected[others], atol=ROUND_OFF, rtol=0)

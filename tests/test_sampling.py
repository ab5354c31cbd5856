"""Tests for lmforge.runtime.sampling: greedy, top-k, top-p, repetition penalty, seeding, distribution, validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmforge.runtime.sampling import SamplingParams, sample_next


def _logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (batch, vocab)).astype(np.float32)


def test_greedy_equals_argmax_and_draws_nothing():
    logits = _logits()
    rng = np.random.default_rng(0)
    out = sample_next(logits, SamplingParams(temperature=0), rng)
    assert out.dtype == np.int64 and out.shape == (4,)
    np.testing.assert_array_equal(out, logits.argmax(-1))
    assert rng.random() == np.random.default_rng(0).random()


def test_greedy_ties_pick_lowest_id():
    out = sample_next(np.array([[1.0, 3.0, 3.0, 0.0]]), SamplingParams(temperature=0), np.random.default_rng())
    assert out.tolist() == [1]


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0, 100.0])
def test_top_k_1_equals_greedy(temperature):
    logits = _logits()
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = sample_next(logits, SamplingParams(temperature=temperature, top_k=1), rng)
        np.testing.assert_array_equal(out, logits.argmax(-1))


def test_top_k_only_returns_k_largest():
    logits, k = _logits(batch=8, vocab=100), 5
    allowed = np.argsort(-logits, axis=-1)[:, :k]
    rng = np.random.default_rng(2)
    params = SamplingParams(temperature=10.0, top_k=k)  # high temperature: the tail would be hit often
    draws = np.stack([sample_next(logits, params, rng) for _ in range(300)], axis=1)  # [batch, draws]
    for row in range(8):
        assert set(draws[row]) <= set(allowed[row])
    assert all(len(set(draws[row])) == k for row in range(8))  # and all k are reachable


def test_tiny_top_p_returns_argmax():
    logits = _logits()
    rng = np.random.default_rng(3)
    for top_k in (0, 10):
        params = SamplingParams(temperature=5.0, top_p=1e-6, top_k=top_k)
        for _ in range(20):
            np.testing.assert_array_equal(sample_next(logits, params, rng), logits.argmax(-1))


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    rng = np.random.default_rng(4)
    draws = {int(sample_next(np.log(probs), SamplingParams(top_p=0.7), rng)[0]) for _ in range(500)}
    assert draws == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3


def test_repetition_penalty_flips_greedy():
    logits = np.array([[2.0, 1.5, -1.0], [-0.5, -1.0, -3.0]], dtype=np.float32)
    seen = np.array([[True, False, False], [True, False, False]])
    rng = np.random.default_rng()
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    # row 0: 2.0 / 2 = 1.0 < 1.5; row 1: -0.5 * 2 = -1.0 ties with id 1, so the lowest id (0) still wins
    assert sample_next(logits, params, rng, seen).tolist() == [1, 0]
    params = SamplingParams(temperature=0, repetition_penalty=3.0)
    assert sample_next(logits, params, rng, seen).tolist() == [1, 1]
    assert sample_next(logits, SamplingParams(temperature=0), rng, seen).tolist() == [0, 0]
    np.testing.assert_array_equal(logits, [[2.0, 1.5, -1.0], [-0.5, -1.0, -3.0]])  # input untouched


def test_repetition_penalty_lowers_sampled_frequency():
    n = 4000  # rows of one 2-token case: n draws per call
    logits = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (n, 1))
    seen = np.tile([[True, False]], (n, 1))

    def freq0(params: SamplingParams) -> float:
        return np.mean(sample_next(logits, params, np.random.default_rng(5), seen) == 0)

    assert freq0(SamplingParams(repetition_penalty=4.0)) < freq0(SamplingParams()) - 0.1


def test_same_seed_same_draws_different_seed_different():
    logits = _logits(batch=1, vocab=1000)
    params = SamplingParams(temperature=1.5, top_k=200, top_p=0.95)

    def draws(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(sample_next(logits, params, rng)[0]) for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_distribution_matches_softmax(dtype):
    logits = np.array([[1.0, 0.0, -1.0, 2.0, 0.5]], dtype=dtype)
    expected = np.exp(logits[0].astype(np.float64))
    expected /= expected.sum()
    n = 20_000
    # a batch of n identical rows gives n independent draws in one vectorised call
    out = sample_next(np.repeat(logits, n, axis=0), SamplingParams(), np.random.default_rng(6))
    observed = np.bincount(out, minlength=5) / n
    assert np.abs(observed - expected).max() < 0.015  # ~4.5 standard errors at p ~= 0.5


def test_distribution_across_blocks_of_a_large_vocab():
    vocab, where = 5000, [3, 700, 2047, 2048, 4999]  # spread over blocks, incl. the last, partial one
    logits = np.full((1000, vocab), -np.inf, dtype=np.float32)
    logits[:, where] = [0.5, -1.0, 1.0, 0.0, 0.2]
    expected = np.exp(logits[0, where].astype(np.float64))
    expected /= expected.sum()
    rng = np.random.default_rng(9)
    out = np.concatenate([sample_next(logits, SamplingParams(), rng) for _ in range(10)])
    assert set(out.tolist()) <= set(where)
    observed = np.array([np.mean(out == i) for i in where])
    assert np.abs(observed - expected).max() < 0.02


@pytest.mark.parametrize("scale", [5.0, 2.0, 0.3])  # nucleus of 14, 703, 2513 of 3000 tokens
def test_top_p_on_a_large_vocab_matches_a_full_sort(scale):
    vocab, top_p = 3000, 0.9
    logits = np.random.default_rng(10).normal(0, scale, (1, vocab)).astype(np.float32)
    probs = np.exp(logits[0].astype(np.float64) - logits.max())
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order]) / probs.sum()
    nucleus = set(order[: np.searchsorted(cum, top_p) + 1].tolist())
    out = sample_next(np.repeat(logits, 2000, axis=0), SamplingParams(top_p=top_p), np.random.default_rng(11))
    assert set(out.tolist()) <= nucleus
    if len(nucleus) < 20:
        assert set(out.tolist()) == nucleus


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -2.0}, "repetition_penalty"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"repetition_penalty": 1e-50}, "repetition_penalty"),  # > 0, but 0 in float32: would divide by zero
    ({"temperature": "hot"}, "temperature"),
])
def test_invalid_params_raise(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        SamplingParams(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="logits"):
        sample_next(np.zeros(5), SamplingParams(), np.random.default_rng())
    with pytest.raises(ValueError, match="seen"):
        sample_next(np.zeros((2, 5)), SamplingParams(repetition_penalty=1.2), np.random.default_rng(),
                    seen=np.zeros((2, 4), dtype=bool))


@st.composite
def _case(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    batch, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 64) | st.integers(65, 1500))
    finite = st.floats(-60, 60, width=16 if dtype == np.float16 else 32)
    value = finite | st.just(-np.inf)
    logits = draw(hnp.arrays(dtype, (batch, vocab), elements=value, fill=value))
    logits[np.isneginf(logits).all(axis=-1), 0] = 0  # every row keeps at least one finite logit
    seen = draw(hnp.arrays(np.bool_, (batch, vocab)))
    params = SamplingParams(
        temperature=draw(st.sampled_from([0.0]) | st.floats(1e-3, 100)),
        top_k=draw(st.integers(0, vocab + 2)),
        top_p=draw(st.floats(1e-6, 1.0)),
        repetition_penalty=draw(st.floats(0.1, 10)),
    )
    return logits, seen, params, draw(st.integers(0, 2**32))


@settings(max_examples=300, deadline=None)
@given(_case())
def test_property_valid_ids_never_neg_inf(case):
    logits, seen, params, seed = case
    out = sample_next(logits, params, np.random.default_rng(seed), seen)
    assert out.dtype == np.int64 and out.shape == (logits.shape[0],)
    assert ((0 <= out) & (out < logits.shape[1])).all()
    assert np.isfinite(logits[np.arange(len(out)), out]).all()

"""Samplers on plain arrays: each filter against its definition; seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.core.errors import ConfigError
from edgegen.decoding.sampling import Sampler, SamplingParams

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))


def probs(**kw):
    return Sampler(SamplingParams(temperature=1.0, **kw)).probs(LOGITS)


def test_greedy_is_argmax():
    assert Sampler()(LOGITS) == 0
    assert probs().round(6).tolist() == [0.5, 0.2, 0.15, 0.1, 0.05]


def test_top_k_keeps_k_most_likely():
    np.testing.assert_allclose(probs(top_k=2), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])


def test_top_p_keeps_smallest_prefix_reaching_p():
    np.testing.assert_allclose(probs(top_p=0.7), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    np.testing.assert_allclose(probs(top_p=0.71), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])


def test_min_p_drops_tokens_below_fraction_of_best():
    np.testing.assert_allclose(probs(min_p=0.3), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])


def test_temperature_sharpens():
    p = Sampler(SamplingParams(temperature=0.5)).probs(LOGITS)
    expected = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(p, expected / expected.sum())


def test_repetition_penalty_matches_transformers_rule():
    logits = np.array([2.0, -1.0, 0.5])
    out = Sampler(SamplingParams(repetition_penalty=2.0)).process(logits, [0, 1])
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5])


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    draws = lambda seed: [Sampler(SamplingParams(temperature=1.0, seed=seed))(LOGITS) for _ in range(1)]  # noqa: E731
    a = Sampler(SamplingParams(temperature=1.0, seed=7))
    b = Sampler(SamplingParams(temperature=1.0, seed=7))
    seq_a, seq_b = [a(LOGITS) for _ in range(4000)], [b(LOGITS) for _ in range(4000)]
    assert seq_a == seq_b and draws(1) == draws(1)
    freq = np.bincount(seq_a, minlength=5) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.03)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=1.0),
                                 dict(repetition_penalty=0)])
def test_bad_parameters_are_user_errors(bad):
    with pytest.raises(ConfigError):
        SamplingParams(**bad)

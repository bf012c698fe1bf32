"""Commit rules on plain arrays: each against its definition, and the shared invariants."""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.core.errors import ConfigError
from edgegen.decoding.commit_rules import RULES, RuleSettings, Step, _quota, choose, propose
from edgegen.decoding.sampling import Sampler


def probs_with(conf: list[float], vocab: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Candidates whose top token is token 0 with probability `conf[i]` (rest spread evenly)."""
    p = np.array([[c] + [(1 - c) / (vocab - 1)] * (vocab - 1) for c in conf])
    return np.zeros(len(conf), dtype=int), p


def pick(rule: str, conf: list[float], index: int = 0, masked: int = 4, **settings) -> list[int]:
    tokens, p = probs_with(conf)
    step = Step(np.log(p), index, masked)
    return sorted(int(i) for i in choose(RuleSettings(rule, **settings), step, tokens, p, np.random.default_rng(0)))


def test_threshold_keeps_the_confident_and_always_the_top():
    assert pick("threshold", [0.95, 0.5, 0.91, 0.2], threshold=0.9) == [0, 2]
    assert pick("threshold", [0.3, 0.5, 0.4], threshold=0.9) == [1]


def test_fixed_follows_llada_schedule_and_is_clamped():
    # 10 masks over 4 steps: 3, 3, 2, 2 (the remainder to the first steps)
    assert [_quota(Step(None, i, 10), 4, 99) for i in range(4)] == [3, 3, 2, 2]
    assert _quota(Step(None, 0, 10), 4, 2) == 2  # never more than the candidates present
    assert pick("fixed", [0.1, 0.9, 0.5, 0.7], index=0, masked=8, steps=4) == [1, 3]


def test_dynamic_takes_all_confident_when_they_fill_the_quota():
    assert pick("dynamic", [0.95, 0.96, 0.1, 0.2], masked=4, steps=4, threshold=0.9) == [0, 1]
    assert pick("dynamic", [0.5, 0.6, 0.1, 0.2], masked=8, steps=4, threshold=0.9) == [0, 1]


def test_factor_rule():
    # sorted 0.99, 0.8, 0.7: c1 ≥ 1 − 1/2, c2 ≥ 1 − 1/3, c3 = 0.7 < 1 − 1/4 → two
    assert pick("factor", [0.7, 0.99, 0.8], factor=1.0) == [1, 2]


def test_entropy_bounded_keeps_the_low_entropy_prefix():
    chosen = pick("entropy_bounded", [0.999, 0.2, 0.99], entropy_bound=0.2)
    assert chosen == [0, 2]


def test_dream_counts_follow_the_timestep_schedule():
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    # steps 4, eps 1e-3: t, s = 1, 0.75025 at the first step → int(8 · 0.24975) = 1, as Dream computes it
    assert pick("maskgit_plus", conf, index=0, steps=4) == [0]
    assert pick("maskgit_plus", conf, index=1, steps=4) == [0, 1]  # t, s = 0.75025, 0.5005 → int(8 · 0.333) = 2
    assert len(pick("topk_margin", conf, index=3, steps=4)) == 8  # the last step reveals all


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_commits_at_least_one_candidate_and_only_candidates(rule):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 9))
        logits = rng.normal(size=(n, 7)) * 2
        tokens, p = propose(logits, Sampler(), [])
        chosen = choose(RuleSettings(rule, steps=4), Step(logits, int(rng.integers(0, 4)), n), tokens, p, rng)
        assert 1 <= len(chosen) <= n and len(set(chosen.tolist())) == len(chosen)
        assert all(0 <= i < n for i in chosen)


def test_unknown_rule_is_a_user_error():
    with pytest.raises(ConfigError):
        RuleSettings("sometimes")

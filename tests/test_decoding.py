"""The autoregressive loop and the session on a fake model (no backend)."""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.core.errors import ContextOverflow
from edgegen.core.protocols import KVCache, LanguageModel
from edgegen.decoding.autoregressive import GenerationStats, Session, generate
from edgegen.decoding.sampling import Sampler, SamplingParams
from fakes import FakeModel


def greedy_reference(model: FakeModel, prompt: list[int], n: int) -> list[int]:
    out, last = [], prompt[-1]
    for _ in range(n):
        last = int(np.argmax(model.table[last]))
        out.append(last)
    return out


def test_fake_model_satisfies_the_protocols():
    model = FakeModel()
    assert isinstance(model, LanguageModel) and isinstance(model.new_cache(), KVCache)


def test_greedy_generation_follows_the_argmax_chain():
    model = FakeModel()
    tokens = list(generate(Session(model), [1, 2, 3], Sampler(), max_tokens=10))
    assert tokens == greedy_reference(model, [1, 2, 3], 10)


def test_stop_id_ends_generation_and_is_not_yielded():
    model = FakeModel()
    chain = greedy_reference(model, [4], 10)
    stats = GenerationStats()
    tokens = list(generate(Session(model), [4], Sampler(), max_tokens=10, stop_ids=[chain[3]], stats=stats))
    assert tokens == chain[: chain.index(chain[3])] and stats.finish_reason == "stop"


def test_session_reuses_the_shared_prefix():
    model = FakeModel()
    session = Session(model)
    list(generate(session, [1, 2, 3, 4], Sampler(), max_tokens=3))
    model.calls.clear()
    stats = GenerationStats()
    list(generate(session, [1, 2, 3, 4, 9, 9], Sampler(), max_tokens=1, stats=stats))
    # the cache held 1 2 3 4 + 2 generated tokens; only the divergent suffix is run again
    assert model.calls[0] == [9, 9] and stats.prompt_tokens == 2


def test_identical_prompt_runs_its_last_token_again():
    model = FakeModel()
    session = Session(model)
    list(generate(session, [1, 2, 3], Sampler(), max_tokens=1))
    model.calls.clear()
    list(generate(session, [1, 2, 3], Sampler(), max_tokens=1))
    assert model.calls == [[3]]


def test_max_tokens_is_capped_by_the_context():
    model = FakeModel(context_length=8)
    stats = GenerationStats()
    tokens = list(generate(Session(model), [1, 2, 3, 4, 5], Sampler(), max_tokens=100, stats=stats))
    assert len(tokens) == 3 and stats.finish_reason == "length"


def test_prompt_that_fills_the_context_is_a_user_error():
    with pytest.raises(ContextOverflow):
        list(generate(Session(FakeModel(context_length=4)), [1, 2, 3, 4], Sampler(), max_tokens=1))


def test_seeded_generation_is_reproducible():
    model = FakeModel(sharpness=0.5)
    run = lambda: list(generate(Session(model), [1], Sampler(SamplingParams(temperature=1.0, seed=3)),  # noqa: E731
                                max_tokens=20))
    assert run() == run()


def test_stats_count_prefill_and_decode():
    stats = GenerationStats()
    list(generate(Session(FakeModel()), [1, 2, 3], Sampler(), max_tokens=5, stats=stats))
    assert (stats.prompt_tokens, stats.generated_tokens) == (3, 5)
    assert stats.prefill_seconds > 0 and stats.decode_tokens_per_s > 0


def test_long_prompts_are_prefilled_in_chunks_that_shrink_as_the_cache_grows():
    """Attention scores per chunk grow with chunk x (cached + chunk): the chunks shrink so that
    this stays within the budget (down to a floor), and every prompt token is fed once, in order."""
    from edgegen.decoding.autoregressive import PREFILL_BUDGET, PREFILL_CHUNK, PREFILL_MIN_CHUNK

    model = FakeModel(context_length=20000)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 32, size=10000)]
    logits, ran = Session(model).prefill(prompt)
    assert ran == len(prompt) and sum(model.calls, []) == prompt
    np.testing.assert_array_equal(logits, model.table[prompt[-1]])
    cached = 0
    for call in model.calls:
        assert len(call) == PREFILL_MIN_CHUNK or len(call) * (cached + len(call)) <= PREFILL_BUDGET
        cached += len(call)
    lengths = [len(c) for c in model.calls]
    assert lengths[0] == PREFILL_CHUNK and min(lengths[:-1]) == PREFILL_MIN_CHUNK
    assert lengths[:-1] == sorted(lengths[:-1], reverse=True)


def test_common_prefix_agrees_with_a_plain_scan():
    import random

    from edgegen.decoding.autoregressive import _common_prefix

    rng = random.Random(0)
    for _ in range(3000):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 6))]
        plain = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert _common_prefix(a, b) == plain == _common_prefix(b, a)

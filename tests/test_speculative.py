"""Speculative decoding: greedy output equals plain greedy output token for token, for every draft
kind and draft length, on fakes and on both runtimes; sampled output follows the target's exact
distribution (and deliberately broken rules are caught by the same test)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.core.errors import CapabilityError
from edgegen.core.options import SamplingParams
from edgegen.core.protocols import Capability
from edgegen.core.stats import GenerationStats
from edgegen.decoding import speculative
from edgegen.decoding.autoregressive import Session, generate
from edgegen.decoding.draft_length import DraftLength
from edgegen.decoding.drafters import ModelDrafter, PromptLookupDrafter, lookup
from edgegen.decoding.sampling import Sampler
from fakes import FakeModel

GAMMAS = (1, 2, 4, 8)


def drafters(target: FakeModel):
    wider = FakeModel(vocab_size=target.vocab_size + 4, seed=1)  # a padded vocabulary over the same tokens
    return {"model": ModelDrafter(wider, "fake-draft"), "self": ModelDrafter(target, "self"),
            "lookup": PromptLookupDrafter()}


def plain(model, prompt, n, stop_ids=(), should_stop=None, params=SamplingParams()):
    return list(generate(Session(model), prompt, Sampler(params), max_tokens=n, stop_ids=stop_ids,
                         should_stop=should_stop))


def spec(model, drafter, prompt, n, gamma, stop_ids=(), should_stop=None, params=SamplingParams(), stats=None):
    return list(speculative.generate(Session(model), drafter, prompt, Sampler(params), max_tokens=n,
                                     draft_length=DraftLength(gamma), stop_ids=stop_ids, stats=stats,
                                     should_stop=should_stop))


@pytest.mark.parametrize("gamma", GAMMAS + (None,))
@pytest.mark.parametrize("kind", ["model", "self", "lookup"])
def test_greedy_speculation_equals_greedy(kind, gamma):
    target = FakeModel(vocab_size=16, sharpness=1.0)
    prompt = [1, 2, 3, 1, 2, 3, 4]
    for n in (1, 5, 13, 30):  # 13 and 30 end in the middle of a draft for most γ
        assert spec(target, drafters(target)[kind], prompt, n, gamma) == plain(target, prompt, n)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("kind", ["model", "lookup"])
def test_generation_ends_at_eos_and_at_a_stop_string_mid_draft(kind, gamma):
    target = FakeModel(vocab_size=16, sharpness=1.0)
    prompt = [5, 6, 7, 5, 6]
    chain = plain(target, prompt, 30)
    eos = chain[6]
    assert spec(target, drafters(target)[kind], prompt, 30, gamma, stop_ids=[eos]) == \
        plain(target, prompt, 30, stop_ids=[eos])
    stop_after = lambda generated: len(generated) >= 9  # noqa: E731 (a stop string seen after 9 tokens)
    assert spec(target, drafters(target)[kind], prompt, 30, gamma, should_stop=stop_after) == chain[:9]


def test_a_draft_equal_to_the_target_accepts_everything_when_sampling():
    target = FakeModel(vocab_size=12, sharpness=1.0)
    stats = GenerationStats()
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=3)
    spec(target, ModelDrafter(target, "self"), [1, 2], 40, 4, params=params, stats=stats)
    assert stats.drafted > 0 and stats.accepted == stats.drafted


def test_prompt_lookup_proposes_what_followed_the_last_match():
    history = np.array([7, 8, 9, 1, 2, 7, 8])
    assert lookup(history, 3, 3, 1) == [9, 1, 2]
    assert lookup(np.array([1, 2, 3]), 4, 3, 1) == []


def naive_lookup(history: list[int], n: int, max_ngram: int, min_ngram: int) -> list[int]:
    for k in range(min(max_ngram, len(history) - 1), min_ngram - 1, -1):
        for start in range(len(history) - k - 1, -1, -1):  # the latest match first
            if history[start:start + k] == history[-k:]:
                return history[start + k:start + k + n]
    return []


def test_prompt_lookup_agrees_with_a_plain_search():
    rng = np.random.default_rng(0)
    for _ in range(400):
        history = rng.integers(0, 4, size=int(rng.integers(0, 30))).tolist()
        for max_ngram, min_ngram in ((3, 1), (4, 2), (1, 1)):
            assert lookup(np.asarray(history, dtype=np.int64), 5, max_ngram, min_ngram) == naive_lookup(history, 5, max_ngram, min_ngram)


def test_missing_capabilities_are_refused_when_built():
    class NoRollback(FakeModel):
        capabilities = Capability.LOGITS

    with pytest.raises(CapabilityError, match="rollback"):
        spec(NoRollback(), PromptLookupDrafter(), [1, 2], 4, 2)


# ------------------------------------------------------------------ the sampled distribution

V = 6
PARAMS = SamplingParams(temperature=0.8, top_k=5, top_p=0.85, min_p=0.02, repetition_penalty=1.3, seed=11)


def exact_two_token_distribution(model: FakeModel, prompt: list[int], params: SamplingParams) -> np.ndarray:
    """P(t1, t2) of plain sampling, computed exactly from the bigram table."""
    sampler = Sampler(params)
    joint = np.zeros((V, V))
    p1 = sampler.probs(model.table[prompt[-1]], prompt)
    for a in range(V):
        joint[a] = p1[a] * sampler.probs(model.table[a], prompt + [a])
    return joint


def sampled_two_token_distribution(target: FakeModel, drafter, prompt: list[int], runs: int,
                                   sampler_class=Sampler) -> np.ndarray:
    counts = np.zeros((V, V))
    sampler = sampler_class(PARAMS)  # one seeded stream for all runs
    for _ in range(runs):
        tokens = list(speculative.generate(Session(target), drafter, prompt, sampler, max_tokens=3,
                                           draft_length=DraftLength(3)))
        counts[tokens[0], tokens[1]] += 1
    return counts / runs


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


@pytest.fixture(scope="module")
def pair():
    return FakeModel(vocab_size=V, seed=4, sharpness=1.5), FakeModel(vocab_size=V, seed=9, sharpness=1.5)


RUNS = 6000
# With 6000 runs over ≤ 36 outcomes the sampling noise in TV is ≈ 0.02; the broken variants below
# move the distribution by 0.08 or more. (Measured: correct ≈ 0.015, broken ≥ 0.08.)
TV_BOUND = 0.04


def test_sampled_tokens_follow_the_targets_exact_distribution(pair):
    target, draft = pair
    exact = exact_two_token_distribution(target, [2, 3], PARAMS)
    sampled = sampled_two_token_distribution(target, ModelDrafter(draft, "draft"), [2, 3], RUNS)
    assert total_variation(sampled, exact) < TV_BOUND


def test_prompt_lookup_sampling_follows_the_exact_distribution(pair):
    target, _ = pair
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 5, 1, 2, 3]
    exact = exact_two_token_distribution(target, prompt, PARAMS)
    sampled = sampled_two_token_distribution(target, PromptLookupDrafter(), prompt, RUNS)
    assert total_variation(sampled, exact) < TV_BOUND


def test_a_wrong_residual_rule_is_caught(pair, monkeypatch):
    target, draft = pair
    monkeypatch.setattr(speculative, "_residual", lambda p, q, x: p)  # forgets to subtract q
    exact = exact_two_token_distribution(target, [2, 3], PARAMS)
    sampled = sampled_two_token_distribution(target, ModelDrafter(draft, "draft"), [2, 3], RUNS)
    assert total_variation(sampled, exact) > TV_BOUND


def test_top_p_applied_to_one_side_only_is_caught(pair):
    target, draft = pair

    class TargetWithoutTopP(Sampler):  # verifies against the target without its top-p
        def probs(self, logits, history=()):
            import dataclasses

            return Sampler(dataclasses.replace(self.params, top_p=1.0)).probs(logits, history)

    exact = exact_two_token_distribution(target, [2, 3], PARAMS)
    sampled = sampled_two_token_distribution(target, ModelDrafter(draft, "draft"), [2, 3], RUNS, TargetWithoutTopP)
    assert total_variation(sampled, exact) > TV_BOUND


# ------------------------------------------------------------------ both runtimes

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_greedy_speculation_on_both_runtimes(runtime, converted):
    target = edgegen.load(converted("qwen2", runtime))
    prompt = target.tokenizer.encode("The number 12 follows 11 and comes before 13. The number")
    expected = target.generate(prompt, max_tokens=21, ignore_eos=True).token_ids
    for draft, gamma in itertools.product([str(converted("llama", runtime)), "q4", "prompt-lookup"], GAMMAS):
        target.reset()
        result = target.generate(prompt, max_tokens=21, ignore_eos=True, draft=draft, num_draft=gamma)
        assert result.token_ids == expected, (draft, gamma)
        assert result.stats.forwards < 21 + 1 or draft == str(converted("llama", runtime))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_quantized_self_draft_accepts_most_proposals(runtime, converted):
    target = edgegen.load(converted("qwen2", runtime))
    result = target.generate("The number 7", max_tokens=24, ignore_eos=True, draft="q8", num_draft=4)
    assert result.stats.acceptance_rate > 0.5 and result.stats.tokens_per_forward > 1.5


def test_chat_keeps_the_drafts_cache_across_turns(converted):
    model = edgegen.load(converted("qwen2", "onnx"))
    messages = [{"role": "user", "content": "The number 3"}]
    first = model.chat(messages, max_tokens=6, draft="q8", num_draft=2)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "and 4"}]
    model.chat(messages, max_tokens=6, draft="q8", num_draft=2)
    drafter = next(iter(model._drafts.cache.values()))
    conversation = model.tokenizer.encode_chat(messages)
    assert drafter.session.tokens[: len(conversation)] == conversation


def test_a_draft_with_another_tokenizer_is_one_line(converted):
    result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "hi", "-m", "3",
                                       "--draft", "tiny-draft"])
    assert result.exit_code == 2 and "another tokenizer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_draft_whose_embedding_misses_tokenizer_ids_is_one_line(checkpoints, converted, tmp_path):
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    from checkpoints import VOCAB

    src, _ = checkpoints("llama")  # the tokenizer the qwen2 target has
    draft = tmp_path / "draft"
    shutil.copytree(src, draft)
    weights = {k: (v[: VOCAB - 8] if v.shape[0] == VOCAB else v) for k, v in load_file(draft / "model.safetensors").items()}
    save_file(weights, draft / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((draft / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB - 8}))
    result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "hi", "-m", "3",
                                       "--draft", str(draft)])
    assert result.exit_code == 2 and f"embeds {VOCAB - 8} token ids" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_diffusion_llm_as_draft_is_one_line(converted, tmp_path):
    folder = tmp_path / "bd"
    assert CliRunner().invoke(main, ["convert", "tiny-chat-bd", "-o", str(folder), "--runtime", "onnx"]).exit_code == 0
    for draft in ("tiny-chat-bd", str(folder)):  # a checkpoint, and a converted folder
        result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "hi", "-m", "3",
                                           "--draft", draft])
        assert result.exit_code == 2 and "is a diffusion LLM" in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_generate_json_reports_speculation(converted):
    import json

    result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "The number 5", "-m", "8",
                                       "--draft", "prompt-lookup", "--num-draft", "3", "--json"])
    assert result.exit_code == 0, result.output
    timing = json.loads(result.stdout)["timing"]
    assert {"acceptance_rate", "tokens_per_forward", "draft_length", "forwards"} <= set(timing)


def simulate(policy: DraftLength, alpha: float, cost, steps: int, seed: int = 0) -> list[int]:
    """Drive the policy with a synthetic pair: per-position acceptance `alpha`, iteration cost(γ)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(steps):
        gamma = policy.next()
        accepted = 0
        while accepted < gamma and rng.random() < alpha:
            accepted += 1
        policy.observe(gamma, accepted, cost(gamma))
        chosen.append(gamma)
    return chosen


def test_draft_length_falls_back_to_plain_decoding_when_drafts_cannot_pay():
    # a draft forward costs as much as the target's (tiny models: all overhead), α = 0.6
    chosen = simulate(DraftLength(None, maximum=8), 0.6, lambda g: 1.0 + 1.0 * g, 300)
    assert chosen[-200:].count(0) >= 196  # plain decoding, with a rare one-token probe


def decode_time(policy: DraftLength, alpha: float, cost, catch_up: float, tokens: int, seed: int = 0) -> float:
    """Seconds to decode `tokens` under the policy with a synthetic pair whose draft must catch up
    on skipped tokens at `catch_up` seconds each (plain decoding: 1 second per token)."""
    rng = np.random.default_rng(seed)
    done, seconds, skipped = 0, 0.0, 0
    while done < tokens:
        gamma = policy.next(catch_up * skipped)
        accepted = 0
        while accepted < gamma and rng.random() < alpha:
            accepted += 1
        overhead = catch_up * skipped if gamma else 0.0
        policy.observe(gamma, accepted, cost(gamma), overhead)
        seconds += cost(gamma) + overhead
        done += accepted + 1
        skipped = 0 if gamma else skipped + 1
    return seconds / done


@pytest.mark.parametrize("tokens", [128, 1000])
@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_draft_length_costs_under_5_percent_where_a_draft_model_cannot_pay(tokens, alpha):
    # MLX on a CPU: every forward costs as much per token fed as a step, so a γ-token draft and its
    # verification cost 1 + 2γ steps and catching the draft up costs a step per skipped token
    assert decode_time(DraftLength(None, maximum=8), alpha, lambda g: 1.0 + 2.0 * g, 1.0, tokens) <= 1.05


def test_draft_length_drafts_long_when_drafts_are_cheap_and_accepted():
    chosen = simulate(DraftLength(None, maximum=8), 0.9, lambda g: 1.0 + 0.05 * g, 100)
    assert np.median(chosen[-50:]) >= 5


def test_draft_length_drafts_long_when_acceptance_comes_in_runs():
    # prompt lookup: a match is right for the whole draft (35%) or wrong from its first token; one α
    # for all positions (≈ 0.35 per token) would call any γ > 1 a loss at this verification cost
    rng, policy, chosen = np.random.default_rng(0), DraftLength(None, maximum=8), []
    for _ in range(300):
        gamma = policy.next()
        accepted = gamma if rng.random() < 0.35 else 0
        policy.observe(gamma, accepted, 1.0 + 0.15 * gamma)
        chosen.append(gamma)
    assert np.median(chosen[-100:]) >= 6


def test_one_early_rejection_does_not_end_drafting_on_a_pair_that_pays():
    rng, policy, chosen = np.random.default_rng(0), DraftLength(None, maximum=8), []
    for i in range(100):
        gamma = policy.next()
        accepted = 0
        while accepted < gamma and i > 0 and rng.random() < 0.85:  # the very first draft is rejected
            accepted += 1
        policy.observe(gamma, accepted, 1.0 + 0.45 * gamma)  # one rejection alone would say γ = 1 loses
        chosen.append(gamma)
    assert np.median(chosen[-50:]) >= 2


class PlainOnly(DraftLength):
    """`auto` that never drafts: what it learns can only come from shadow drafts."""

    def next(self, catch_up: float = 0.0) -> int:
        return 0


def test_shadow_drafts_are_judged_against_the_tokens_plain_decoding_chose():
    policy = DraftLength(None, maximum=8)
    shadow = speculative.Shadow([5, 6, 7], start=2)
    assert shadow.judge([0, 1, 5], policy) is shadow  # 5 matched; 6 not yet decided: nothing counted
    assert policy.reached[1] == 0
    assert shadow.judge([0, 1, 5, 6, 9], policy) is None  # 7 ≠ 9: two accepted, the third rejected
    assert (policy.reached[1:4], policy.passed[1:4]) == ([1, 1, 1], [1, 1, 0])


@pytest.mark.parametrize("kind", ["lookup", "model"])
def test_free_drafters_keep_the_acceptance_rate_current_during_plain_decoding(kind):
    # a greedy bigram model's output turns periodic: prompt lookup's shadow drafts match it
    target = FakeModel(vocab_size=16, sharpness=1.0)
    policy = PlainOnly(None, maximum=4)
    tokens = list(speculative.generate(Session(target), drafters(target)[kind], [1, 2, 3], Sampler(SamplingParams()),
                                       max_tokens=40, draft_length=policy))
    forwards = len(target.calls)
    assert tokens == plain(target, [1, 2, 3], 40)
    if kind == "lookup":
        assert policy.reached[1] > 3 and policy.alpha > 0.8
    else:  # a draft model costs a forward to consult: never asked while decoding plainly
        assert policy.reached[1] == 0 and forwards == 40  # the prefill and 39 steps


def test_the_cost_line_runs_through_draft_lengths_only():
    # ONNX on a tiny model: any draft costs a fixed extra (a multi-row verify pass), each more
    # drafted token little; a line through the plain step and γ = 1 would price γ = 4 at 2.6
    cost = {0: 1.0, 1: 1.4, 4: 1.7}
    policy, chosen = DraftLength(None, maximum=8), []
    for _ in range(2):  # the warm-up: γ = 1, then a plain step
        chosen.append(policy.next())
        policy.observe(chosen[-1], chosen[-1], cost[chosen[-1]])
    assert chosen == [1, 0] and policy._costs()[4] == pytest.approx(2.6)  # the cautious guess, until ...
    chosen.append(policy.next())
    assert chosen[-1] == 4  # ... a second draft length, 3 away, is measured (all accepted so far: drafting wins)
    policy.observe(4, 4, cost[4])
    assert policy._costs()[2] == pytest.approx(1.5) and policy._costs()[8] == pytest.approx(2.1)


@pytest.mark.parametrize("maximum, first, second", [(8, 1, 4), (8, 8, 5), (2, 1, 2), (3, 2, 3), (3, 1, 3),
                                                    (4, 2, 4), (5, 3, 5)])
def test_the_second_measured_length_lies_apart_from_the_first(maximum, first, second):
    policy = DraftLength(None, maximum=maximum)
    policy.observe(first, first, 1.0)
    assert policy._second_point(first) == second and policy._second_point(second) == second


def test_an_unlucky_start_does_not_leave_drafting_for_good():
    # α 0.8, but the first three drafts are rejected at once: with few judgements behind it the
    # acceptance estimate is uncertain, and plain decoding must beat its upper bound to take over
    rng, policy, chosen = np.random.default_rng(0), DraftLength(None, maximum=8), []
    for _ in range(60):
        gamma = policy.next()
        accepted = 0
        while accepted < gamma and sum(g > 0 for g in chosen) >= 3 and rng.random() < 0.8:
            accepted += 1
        policy.observe(gamma, accepted, 1.0 + (0.3 + 0.25 * gamma if gamma else 0.0))
        chosen.append(gamma)
    assert np.mean(np.array(chosen) > 0) > 0.8  # 0.48 when plain decoding need only beat the estimate itself


def test_draft_length_finds_a_middle_length():
    # c = 0.2, verification +5% per token, α = 0.7: the best γ by the formula is 3 or 4
    chosen = simulate(DraftLength(None, maximum=8), 0.7, lambda g: 1.0 + 0.25 * g, 300)
    assert 2 <= np.median(chosen[-100:]) <= 5


def test_a_wider_draft_vocabulary_keeps_the_exact_distribution(pair):
    """A draft over the same tokenizer with a padded vocabulary may put mass on ids the target
    lacks: such a proposal is always rejected and the next token comes from the residual."""
    target, _ = pair
    wide = FakeModel(vocab_size=V + 3, seed=9, sharpness=1.5)
    wide.table[:V, :V] = 3 * target.table  # a sharper copy of the target over its ids, so that the
    wide.table[:V, V:] = 3 * target.table.max(1, keepdims=True) - 1  # residual differs from p; padding ids likely
    exact = exact_two_token_distribution(target, [2, 3], PARAMS)
    sampled = sampled_two_token_distribution(target, ModelDrafter(wide, "wide"), [2, 3], RUNS)
    assert total_variation(sampled, exact) < TV_BOUND


def test_later_speculative_positions_follow_the_exact_distribution(pair):
    """The token after two drafted ones (its marginal): accepted drafts, residuals and bonus tokens
    past the first speculative position."""
    target, draft = pair
    prompt, sampler = [2, 3], Sampler(PARAMS)
    joint = exact_two_token_distribution(target, prompt, PARAMS)  # (t1, t2)
    third = np.zeros(V)
    for a in range(V):
        for b in range(V):
            third += joint[a, b] * sampler.probs(target.table[b], prompt + [a, b])
    counts, drafter = np.zeros(V), ModelDrafter(draft, "draft")  # one drafter: its random stream goes on
    for _ in range(RUNS):
        tokens = list(speculative.generate(Session(target), drafter, prompt, sampler,
                                           max_tokens=4, draft_length=DraftLength(2)))
        counts[tokens[2]] += 1
    assert total_variation(counts / RUNS, third) < TV_BOUND


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_speculation_stops_at_a_stop_string_where_plain_decoding_does(runtime, converted):
    target = edgegen.load(converted("qwen2", runtime))
    prompt = target.tokenizer.encode("The number 12 follows 11 and comes before 13. The number")
    plain = target.generate(prompt, max_tokens=24, ignore_eos=True)
    stop = target.tokenizer.decode(plain.token_ids[9:11])  # text from the middle of the reply
    expected = target.generate(prompt, max_tokens=24, ignore_eos=True, stop=[stop])
    assert expected.stats.finish_reason == "stop" and len(expected.token_ids) < 24
    for draft, gamma in itertools.product(["q8", "prompt-lookup"], ["auto", 4]):
        target.reset()
        result = target.generate(prompt, max_tokens=24, ignore_eos=True, stop=[stop], draft=draft, num_draft=gamma)
        assert (result.text, result.stats.finish_reason) == (expected.text, "stop"), (draft, gamma)


def test_generate_prints_the_speculation_figures(converted):
    result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "The number 5", "-m", "8",
                                       "--draft", "prompt-lookup", "--num-draft", "3"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stderr.splitlines() if line.startswith("speculative:"))
    assert "tokens per forward" in line and "acceptance" in line and "mean draft length" in line


def test_while_plain_decoding_wins_the_choice_is_remade_only_every_few_steps(monkeypatch):
    """The full choice (costs, rates for every length) is ~50 µs of Python, a few percent of a
    tiny model's step: while plain decoding wins it is re-made every RECHECK steps, and at once
    after an acceptance was observed (a probe's or a shadow draft's)."""
    from edgegen.decoding import draft_length as dl

    policy = DraftLength(None, maximum=8)
    simulate(policy, 0.6, lambda g: 1.0 + 1.0 * g, 300)  # plain decoding wins (the test above)
    calls = []
    real = dl.DraftLength._costs
    monkeypatch.setattr(dl.DraftLength, "_costs", lambda self: calls.append(1) or real(self))
    chosen = []
    for _ in range(64):
        chosen.append(policy.next())
        policy.observe(chosen[-1], 0, 1.0 + chosen[-1])
    assert chosen.count(0) >= 63 and len(calls) <= 64 // dl.RECHECK + 2
    policy.observe_acceptance(2, 2)  # e.g. a shadow draft judged: decide afresh at the next step
    calls.clear()
    policy.next()
    assert calls


def test_a_fixed_draft_length_above_the_auto_bound_is_drafted_in_full():
    target = FakeModel(vocab_size=16, sharpness=1.0)
    prompt = [1, 2, 3, 1, 2, 3, 4]
    stats = GenerationStats()
    out = list(speculative.generate(Session(target), ModelDrafter(target, "self"), prompt, Sampler(), max_tokens=40,
                                    draft_length=DraftLength(12, maximum=8), stats=stats))
    assert out == plain(target, prompt, 40)
    assert stats.accepted == stats.drafted and stats.draft_length == 12  # every draft of 12 accepted


def test_seeded_sampling_with_auto_draft_lengths_repeats_itself(converted, monkeypatch):
    """`auto` chooses from wall times; a seeded run must not depend on them (here: jittered clocks)."""
    import random
    import time as real_time

    model = edgegen.load(converted("qwen2", "onnx"))
    outputs = []
    for run in range(3):
        jitter = random.Random(run)
        clock = iter(itertools.accumulate(jitter.choice((1e-4, 1e-1)) for _ in range(10**5)))
        monkeypatch.setattr(speculative.time, "perf_counter", lambda: next(clock))
        model.reset()
        result = model.generate("The number 7", max_tokens=40, ignore_eos=True, draft="q8", temperature=1.0, seed=5)
        outputs.append(result.token_ids)
    monkeypatch.setattr(speculative.time, "perf_counter", real_time.perf_counter)
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("kind", ["model", "lookup"])
def test_forwards_are_counted_as_plain_decoding_counts_them_at_eos(kind):
    target = FakeModel(vocab_size=16, sharpness=1.0)
    prompt = [5, 6, 7, 5, 6]
    chain = plain(target, prompt, 30)
    for eos in (chain[0], chain[6]):  # the prefill's token, and one decided by a later forward
        expected, stats = GenerationStats(), GenerationStats()
        list(generate(Session(target), prompt, Sampler(), max_tokens=30, stop_ids=[eos], stats=expected))
        spec(target, drafters(target)[kind], prompt, 30, 0, stop_ids=[eos], stats=stats)
        assert stats.forwards == expected.forwards and stats.generated_tokens == expected.generated_tokens


def test_auto_keeps_what_it_learned_across_calls(converted):
    model = edgegen.load(converted("qwen2", "onnx"))
    for _ in range(2):
        model.generate("The number 7", max_tokens=12, ignore_eos=True, draft="q8")
    (policy,) = model._drafts.policies.values()
    assert not policy._warmup and policy.samples  # the second call started warm
    model.generate("The number 7", max_tokens=4, ignore_eos=True, draft="q8", kv_bits=8)
    model.generate("The number 7", max_tokens=4, ignore_eos=True, draft="q8", num_draft=2)
    model.generate("The number 7", max_tokens=4, ignore_eos=True, draft="q8", temperature=0.8)
    model.generate("The number 7", max_tokens=4, ignore_eos=True, draft="q8", temperature=0.8, seed=1)
    # another cache precision, and sampling, learn for themselves; a fixed γ and seeded sampling keep nothing
    assert len(model._drafts.policies) == 3


def test_a_draft_with_a_shorter_context_stops_drafting_where_it_ends():
    target = FakeModel(vocab_size=16, sharpness=1.0, context_length=64)
    draft = FakeModel(vocab_size=16, sharpness=1.0, context_length=16, seed=1)
    for prompt in ([1, 2, 3, 1, 2, 3, 4], list(range(1, 15)) + [1, 2, 3, 4, 5, 6]):  # shorter and longer than 16
        for gamma in (4, None):
            assert spec(target, ModelDrafter(draft, "short"), prompt, 30, gamma) == plain(target, prompt, 30)
